"""Feature steps -> N clips of equal duration (docs/design.md section 2): where the
steps lie in time (`FeatureTiming`) and the resampling. numpy only."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class FeatureTiming:
    """Where feature steps lie in time.

    Step t covers frames [t * stride, t * stride + window) at `fps`.

    Attributes:
        fps: frame rate the features were extracted at (HACS SlowFast: 15).
        stride: frames between consecutive steps (HACS SlowFast: 8).
        window: frames each step sees (HACS SlowFast: 32).
    """

    fps: float = 15.0
    stride: int = 8
    window: int = 32

    def __post_init__(self):
        for name in ("fps", "stride", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"FeatureTiming.{name} must be a number, got {value!r}."
                )
            if not value > 0:
                raise ValueError(f"FeatureTiming.{name} must be > 0, got {value!r}.")

    @property
    def step_seconds(self):
        """Seconds between consecutive step centres."""
        return self.stride / self.fps

    def centers(self, num_steps):
        """float64 [num_steps]: centre of each step in seconds,
        (t * stride + window / 2) / fps."""
        steps = np.arange(int(num_steps), dtype=np.float64)
        return (steps * self.stride + self.window / 2.0) / self.fps

    def num_steps(self, duration):
        """About how many steps a video of `duration` seconds has."""
        return max(1, round(duration * self.fps / self.stride))


HACS_TIMING = FeatureTiming()  # HACS SlowFast features: 15 fps, stride 8, window 32


def checked_duration(duration):
    """float(duration); ValueError unless it is a positive number of seconds."""
    duration = float(duration)
    if not np.isfinite(duration) or duration <= 0:
        raise ValueError(
            f"duration must be a positive number of seconds, got {duration}."
        )
    return duration


def clip_edges(duration, num_clips):
    """float64 [N + 1]: clip n covers [edges[n], edges[n + 1]) seconds."""
    return np.arange(num_clips + 1) * (float(duration) / num_clips)


def resample_to_clips(features, duration, num_clips, timing=HACS_TIMING):
    """Resamples a video's feature steps to `num_clips` clips.

    Clip n covers [n * d / N, (n + 1) * d / N). Its feature is the mean of the
    steps whose centre (`timing.centers`) lies in it. A clip holding no centre
    takes the linear interpolation, at the clip's own centre, of the two steps
    whose centres enclose it; before the first centre it takes the first step,
    after the last centre the last step.

    Features are often a little longer than the annotated duration. A centre
    at or past d counts in the last clip when it lies less than one stride
    (`timing.step_seconds`) past d, since that is rounding of the frame count;
    centres further out belong to no clip (they still serve as interpolation
    neighbours).

    Args:
        features: [T, D] feature steps, T >= 1.
        duration: d, the video's duration in seconds, > 0.
        num_clips: N.
        timing: `FeatureTiming` placing the steps in time.

    Returns:
        float32 [N, D] clip features.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(
            f"features must be [T, D] with T >= 1, got shape {features.shape}."
        )
    duration = checked_duration(duration)
    if isinstance(num_clips, bool) or int(num_clips) != num_clips or num_clips < 1:
        raise ValueError(f"num_clips must be a positive integer, got {num_clips!r}.")
    num_clips = int(num_clips)
    steps = features.astype(np.float64, copy=False)
    centers = timing.centers(steps.shape[0])
    edges = clip_edges(duration, num_clips)

    clip_of_step = np.searchsorted(edges, centers, side="right") - 1
    # Centres increase, so those past the end form a suffix of the steps.
    just_past = (clip_of_step >= num_clips) & (
        centers < edges[-1] + timing.step_seconds
    )
    clip_of_step[just_past] = num_clips - 1
    num_counted = int(np.searchsorted(clip_of_step, num_clips, side="left"))
    counted = clip_of_step[:num_counted]

    counts = np.bincount(counted, minlength=num_clips)
    occupied = np.flatnonzero(counts)
    clip_features = np.empty((num_clips, steps.shape[1]), np.float64)
    if occupied.size:
        # Steps of one clip are contiguous: sum each run exactly with reduceat.
        first_step = np.searchsorted(counted, occupied, side="left")
        sums = np.add.reduceat(steps[:num_counted], first_step, axis=0)
        clip_features[occupied] = sums / counts[occupied, None]

    empty = np.flatnonzero(counts == 0)
    if empty.size:
        clip_centers = (edges[empty] + edges[empty + 1]) / 2
        after = np.searchsorted(centers, clip_centers, side="right")
        before = np.clip(after - 1, 0, steps.shape[0] - 1)
        after = np.clip(after, 0, steps.shape[0] - 1)
        span = centers[after] - centers[before]
        weight = np.divide(
            clip_centers - centers[before],
            span,
            out=np.zeros_like(span),
            where=span > 0,
        )[:, None]
        clip_features[empty] = steps[before] * (1 - weight) + steps[after] * weight
    return clip_features.astype(np.float32)


def standardized_clips(clip_features):
    """float64 [..., N, D]: each channel minus its mean over the N clips,
    divided by its standard deviation + 1e-3 (the numpy twin of
    `layers.clip_encoder.standardize_per_video`, for work outside a model)."""
    clip_features = np.asarray(clip_features, np.float64)
    centered = clip_features - clip_features.mean(axis=-2, keepdims=True)
    return centered / (np.sqrt((centered**2).mean(axis=-2, keepdims=True)) + 1e-3)
