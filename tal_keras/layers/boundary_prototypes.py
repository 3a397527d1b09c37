"""Boundary prototypes: start and end scores of every clip by its best match
with one learned prototype per class, added to the overlap logit of the
proposals that start or end there (an optional departure from the report,
docs/benchmarks.md)."""

import keras
import numpy as np
from keras import ops

from tal_keras.clips import standardized_clips
from tal_keras.layers.clip_encoder import standardize_per_video
from tal_keras.layers.proposal_logits import (
    WindowPrototypeLogits,
    best_present_match,
)


def clip_windows(clip_features, context):
    """float [batch, N, (2 * context + 1) * D]: each clip's standardised
    features with those of its `context` neighbours on each side (the first
    and last clip repeated at the ends), nearest first-to-last in time."""
    padded = clip_features
    if context:
        first = ops.repeat(clip_features[:, :1], context, axis=1)
        last = ops.repeat(clip_features[:, -1:], context, axis=1)
        padded = ops.concatenate([first, clip_features, last], axis=1)
    num_clips = clip_features.shape[1]
    return ops.concatenate(
        [padded[:, shift : shift + num_clips] for shift in range(2 * context + 1)],
        axis=-1,
    )


@keras.saving.register_keras_serializable(package="tal_keras")
class BoundaryPrototypes(WindowPrototypeLogits):
    """Per-proposal logits a_s * s + a_e * e + a_b * min(s, e), where
    s = start(first clip) and e = end(last clip).

    start(n) is the best dot product of clip n's window (the standardised
    features of clips n - c .. n + c, `clip_windows`) with one of K start
    prototypes, minus its mean over the video's clips; end(n) likewise with
    K end prototypes. Prototypes of classes without training instances (all
    zeros) take no part in the best match. a_s, a_e and a_b are learned
    scales, started at 0, 0 and 1: the min term scores a proposal high only
    when both its start and its end match. An additive score (a_s = a_e =
    0.5, the first version) gave every proposal that shares only its start or
    only its end with an action nearly the action's score; those filled each
    video's top ranks and, across videos, outranked other videos' true
    detections (average mAP 15.9 against 27.4 with the min term on a
    benchmark dataset, docs/benchmarks.md).

    The prototypes are not trained: training sets them to the mean window at
    the start (end) clip of each class's training instances, scaled to unit
    norm (`class_mean_prototypes`), and only the scales learn. With a few
    dozen instances per class, a class mean is a far better detector than
    one learned through the overlap loss, and fine-tuning it with that loss
    made it worse (docs/benchmarks.md).

    Args:
        num_clips: N.
        scale_layers: pooling layers per scale (the lattice).
        num_prototypes: K, one per class.
        context: c, neighbours on each side in a clip's window.
        initial_scales: (a_s, a_e, a_b) at the start.
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_clips, D], the clip features (as given to
        the network; standardised per video here).
    Output shape: float [batch, num_proposals], logits in lattice order.

    Example:
        >>> layer = BoundaryPrototypes(16, (4, 2, 2), num_prototypes=3)
        >>> layer(np.zeros((2, 16, 8))).shape
        (2, 72)
    """

    def __init__(
        self,
        num_clips,
        scale_layers,
        num_prototypes,
        context=1,
        initial_scales=(0.0, 0.0, 1.0),
        **kwargs,
    ):
        super().__init__(
            num_clips, scale_layers, num_prototypes, context, initial_scales, **kwargs
        )

    def build(self, input_shape):
        width = (2 * self.context + 1) * input_shape[-1]
        self.start_prototypes = self.add_prototypes("start_prototypes", width)
        self.end_prototypes = self.add_prototypes("end_prototypes", width)
        self.scales = self.add_scales()
        self.build_lattice()

    def call(self, clip_features):
        windows = clip_windows(standardize_per_video(clip_features), self.context)
        scores = []
        for prototypes in (self.start_prototypes, self.end_prototypes):
            prototypes = ops.cast(prototypes, windows.dtype)
            best = best_present_match(
                ops.matmul(windows, ops.transpose(prototypes)), prototypes
            )
            scores.append(best - ops.mean(best, axis=1, keepdims=True))
        scales = ops.cast(self.scales, windows.dtype)
        starts = ops.take(scores[0], self._starts, axis=1)
        ends = ops.take(scores[1], self._ends, axis=1)
        return (
            scales[0] * starts
            + scales[1] * ends
            + scales[2] * ops.minimum(starts, ends)
        )


def boundary_clips(durations, segments, num_clips):
    """(start clip, end clip) int64 arrays of `segments` [K, 2] (seconds) of a
    video of `durations` seconds cut into `num_clips` equal clips: the clip
    holding the start, and the last clip the segment reaches into."""
    segments = np.asarray(segments, np.float64).reshape(-1, 2)
    scale = num_clips / float(durations)
    starts = np.clip(np.floor(segments[:, 0] * scale), 0, num_clips - 1)
    ends = np.clip(np.ceil(segments[:, 1] * scale) - 1, starts, num_clips - 1)
    return starts.astype(np.int64), ends.astype(np.int64)


def class_mean_prototypes(clips, durations, videos, num_classes, context=1):
    """(start, end) float32 [num_classes, (2 * context + 1) * D]: per class,
    the mean window (`clip_windows` of the standardised clip features) at the
    start clip and at the end clip of its instances, scaled to unit norm;
    zeros for a class without instances.

    Args:
        clips: float [V, N, D] clip features of the training videos.
        durations: float [V] seconds.
        videos: V (segments [K, 2] seconds, labels [K] int) pairs.
        num_classes: K prototypes.
        context: as the layer's.
    """
    num_clips, dim = clips.shape[1], clips.shape[2]
    width = (2 * context + 1) * dim
    sums = np.zeros((2, num_classes, width))
    for index, (segments, labels) in enumerate(videos):
        if not len(labels):
            continue
        windows = numpy_clip_windows(standardized_clips(clips[index]), context)
        starts, ends = boundary_clips(durations[index], segments, num_clips)
        labels = np.asarray(labels, np.int64)
        np.add.at(sums[0], labels, windows[starts])
        np.add.at(sums[1], labels, windows[ends])
    norms = np.linalg.norm(sums, axis=-1, keepdims=True)
    prototypes = np.where(norms > 0, sums / np.maximum(norms, 1e-12), 0.0)
    return prototypes[0].astype(np.float32), prototypes[1].astype(np.float32)


def numpy_clip_windows(clip_features, context):
    """float64 [..., N, (2 * context + 1) * D]: `clip_windows` in numpy, for
    clip features [..., N, D] (already standardised where that is wanted)."""
    clip_features = np.asarray(clip_features, np.float64)
    pad = [(0, 0)] * clip_features.ndim
    pad[-2] = (context, context)
    padded = np.pad(clip_features, pad, mode="edge")
    num_clips = clip_features.shape[-2]
    return np.concatenate(
        [padded[..., shift : shift + num_clips, :] for shift in range(2 * context + 1)],
        axis=-1,
    )
