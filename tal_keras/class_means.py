"""The class means of the training data: per class, the mean clip window at
its instances' start and end clips and the mean clip inside them, computed
once per run from the training clips (numpy only). `layers.ClassMeanMatches`
holds them and matches every video's clips with them; the `tuned` recipe
(tal_keras/recipes.py) uses them in both networks, docs/design.md.

With a few dozen instances per class, a class mean is a reliable detector
of the class's start, end and body, and one that the overlap loss does not
have to learn; it is not fine-tuned (fine-tuning it through the overlap loss
made it worse, docs/benchmarks.md).
"""

import dataclasses

import numpy as np

from tal_keras.clips import standardized_clips

# Neighbours on each side in a clip's window.
DEFAULT_CONTEXT = 1


@dataclasses.dataclass(frozen=True)
class ClassMeans:
    """Unit-norm class means; all-zero rows for classes without training
    instances.

    Attributes:
        start: float32 [C, (2 * context + 1) * D], the mean window
            (`clip_windows` of the standardised clips) at the instances'
            start clips.
        end: float32 [C, (2 * context + 1) * D], likewise at their end clips.
        body: float32 [C, D], the mean standardised clip whose centre lies
            inside the instances.
    """

    start: np.ndarray
    end: np.ndarray
    body: np.ndarray

    @property
    def present(self):
        """bool [C]: the classes with training instances."""
        return np.linalg.norm(self.body, axis=-1) > 0


def class_means(clips, durations, videos, num_classes, context=DEFAULT_CONTEXT):
    """The `ClassMeans` of the training videos.

    Args:
        clips: float [V, N, D] clip features (a cache's `clips`; rows are
            read one at a time, so a memory-mapped array is fine).
        durations: float [V] seconds.
        videos: V (segments [K, 2] seconds, labels [K] int) pairs.
        num_classes: C.
        context: c, neighbours on each side in a clip's window.
    """
    num_clips, dim = clips.shape[1], clips.shape[2]
    window_sums = np.zeros((2, num_classes, (2 * context + 1) * dim))
    body_sums = np.zeros((num_classes, dim))
    for index, (segments, labels) in enumerate(videos):
        if not len(labels):
            continue
        standardized = standardized_clips(clips[index])
        windows = clip_windows(standardized, context)
        segments = np.asarray(segments, np.float64).reshape(-1, 2)
        labels = np.asarray(labels, np.int64)
        starts, ends = boundary_clips(durations[index], segments, num_clips)
        np.add.at(window_sums[0], labels, windows[starts])
        np.add.at(window_sums[1], labels, windows[ends])
        centres = (np.arange(num_clips) + 0.5) * float(durations[index]) / num_clips
        inside = (centres >= segments[:, :1]) & (centres < segments[:, 1:])
        np.add.at(body_sums, labels, inside.astype(np.float64) @ standardized)
    start, end = _unit_rows(window_sums)
    return ClassMeans(start=start, end=end, body=_unit_rows(body_sums))


def clip_windows(clip_features, context):
    """float64 [..., N, (2 * context + 1) * D]: each clip's features with
    those of its `context` neighbours on each side (the first and last clip
    repeated at the ends), first to last in time."""
    clip_features = np.asarray(clip_features, np.float64)
    pad = [(0, 0)] * clip_features.ndim
    pad[-2] = (context, context)
    padded = np.pad(clip_features, pad, mode="edge")
    num_clips = clip_features.shape[-2]
    return np.concatenate(
        [padded[..., shift : shift + num_clips, :] for shift in range(2 * context + 1)],
        axis=-1,
    )


def boundary_clips(duration, segments, num_clips):
    """(start clip, end clip) int64 [K] of `segments` [K, 2] (seconds) of a
    video of `duration` seconds cut into `num_clips` equal clips: the clip
    holding the start, and the last clip the segment reaches into."""
    segments = np.asarray(segments, np.float64).reshape(-1, 2)
    scale = num_clips / float(duration)
    starts = np.clip(np.floor(segments[:, 0] * scale), 0, num_clips - 1)
    ends = np.clip(np.ceil(segments[:, 1] * scale) - 1, starts, num_clips - 1)
    return starts.astype(np.int64), ends.astype(np.int64)


def _unit_rows(sums):
    norms = np.linalg.norm(sums, axis=-1, keepdims=True)
    return np.where(norms > 0, sums / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
