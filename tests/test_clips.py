import numpy as np
import pytest

from tal_keras.clips import FeatureTiming, resample_to_clips

HACS = FeatureTiming()
UNIT = FeatureTiming(fps=1.0, stride=1, window=1)  # step t centred at t + 0.5 s


def reference_clips(features, duration, num_clips, timing):
    """docs/design.md section 2 with plain loops, one clip and one step at a time."""
    num_steps = len(features)
    step = timing.stride / timing.fps
    centers = [
        (t * timing.stride + timing.window / 2) / timing.fps for t in range(num_steps)
    ]
    edges = [n * (duration / num_clips) for n in range(num_clips + 1)]
    members = [[] for _ in range(num_clips)]
    for t, center in enumerate(centers):
        for n in range(num_clips):
            if edges[n] <= center < edges[n + 1]:
                members[n].append(t)
        if edges[-1] <= center < edges[-1] + step:
            members[-1].append(t)
    clips = []
    for n in range(num_clips):
        if members[n]:
            clips.append(np.mean([features[t] for t in members[n]], axis=0))
            continue
        middle = (edges[n] + edges[n + 1]) / 2
        if middle <= centers[0]:
            clips.append(features[0])
        elif middle >= centers[-1]:
            clips.append(features[-1])
        else:
            for t in range(num_steps - 1):
                if centers[t] <= middle < centers[t + 1]:
                    weight = (middle - centers[t]) / (centers[t + 1] - centers[t])
                    clips.append(features[t] * (1 - weight) + features[t + 1] * weight)
    return np.array(clips)


@pytest.mark.parametrize(
    "num_steps, duration, num_clips, timing",
    [
        (10, 6.0, 64, HACS),  # T < N: most clips interpolated
        (64, 64 * 8 / 15, 64, HACS),  # T = N
        (1000, 533.0, 16, HACS),  # T >> N
        (375, 200.0, 256, HACS),  # a HACS-like video, centres past d
        (1, 30.0, 8, HACS),  # a single step
        (40, 17.3, 32, FeatureTiming(fps=25.0, stride=16, window=16)),
        (7, 5.0, 5, UNIT),  # two centres past d: one counted, one not
    ],
)
def test_matches_plain_loops(num_steps, duration, num_clips, timing):
    features = np.random.default_rng(num_steps).standard_normal((num_steps, 5))
    clips = resample_to_clips(features, duration, num_clips, timing)
    assert clips.shape == (num_clips, 5) and clips.dtype == np.float32
    np.testing.assert_allclose(
        clips,
        reference_clips(features, duration, num_clips, timing),
        rtol=1e-5,
        atol=1e-6,
    )


def test_mean_of_member_steps():
    features = np.arange(8, dtype=np.float64).reshape(4, 2)  # centres 0.5 .. 3.5
    clips = resample_to_clips(features, 4.0, 2, UNIT)
    np.testing.assert_allclose(clips, [[1.0, 2.0], [5.0, 6.0]])


def test_empty_clips_interpolate_at_their_centre():
    timing = FeatureTiming(fps=1.0, stride=2, window=2)  # centres 1, 3, 5
    features = np.array([[0.0], [4.0], [8.0]])
    clips = resample_to_clips(features, 6.0, 6, timing)[:, 0]
    # Clip 0 [0, 1) is before the first centre: the first step. Clip 2 [2, 3)
    # is empty: at 2.5 it is 3/4 of the way from centre 1 to centre 3.
    np.testing.assert_allclose(clips, [0.0, 0.0, 3.0, 4.0, 7.0, 8.0])


def test_centres_past_the_duration():
    features = np.array(
        [[0.0], [1.0], [2.0], [3.0], [4.0], [50.0]]
    )  # centres 0.5 .. 5.5
    clips = resample_to_clips(features, 4.0, 4, UNIT)[:, 0]
    # Centre 4.5 is less than one stride past d = 4: it joins the last clip.
    # Centre 5.5 is further out: ignored.
    np.testing.assert_allclose(clips, [0.0, 1.0, 2.0, 3.5])


def test_feature_longer_than_needed_does_not_shift_clips():
    features = np.random.default_rng(0).standard_normal((200, 3))
    short = resample_to_clips(features[:100], 50.0, 10, UNIT)
    long = resample_to_clips(features, 50.0, 10, UNIT)
    # Steps after 51 s change neither the members nor the neighbours of any clip.
    np.testing.assert_allclose(short, long)


@pytest.mark.parametrize(
    "features, duration, num_clips, message",
    [
        (np.zeros(5), 10.0, 4, "features must be"),
        (np.zeros((0, 3)), 10.0, 4, "features must be"),
        (np.zeros((5, 3)), 0.0, 4, "duration must be"),
        (np.zeros((5, 3)), float("nan"), 4, "duration must be"),
        (np.zeros((5, 3)), 10.0, 0, "num_clips must be"),
        (np.zeros((5, 3)), 10.0, 2.5, "num_clips must be"),
    ],
)
def test_invalid_arguments(features, duration, num_clips, message):
    with pytest.raises(ValueError, match=message):
        resample_to_clips(features, duration, num_clips)
