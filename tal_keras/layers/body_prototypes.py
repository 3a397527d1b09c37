"""Body prototypes: how much more a proposal's clips look like one class's
body than the rest of its video (or its flanks) does, added to its overlap logit (an
optional departure from the report, docs/benchmarks.md)."""

import keras
import numpy as np
from keras import ops

from tal_keras.clips import standardized_clips
from tal_keras.layers.clip_encoder import standardize_per_video
from tal_keras.layers.proposal_logits import ProposalLogits, best_present_match


@keras.saving.register_keras_serializable(package="tal_keras")
class BodyPrototypes(ProposalLogits):
    """Per-proposal logits a * max_k (inside_k - outside_k).

    m_k(n) is the dot product of clip n's standardised features with
    prototype k; inside_k is its mean over the proposal's clips, outside_k
    its mean over the video's other clips, or with `flank_fraction` f > 0
    over the proposal's flanks, the ceil(f * L) clips on each side of a
    proposal of L clips, cut at the video's ends (0 when there are none).
    Flanks compare a proposal with its surroundings only, so that slow
    drift and scene changes elsewhere in the video do not count. The max
    leaves out the all-zero prototypes of classes without training instances.
    a is a learned scale.

    The prototypes are not trained: training sets them to each class's mean
    clip inside its training instances, scaled to unit norm
    (`class_mean_bodies`), a nearest-class-mean detector that a few dozen
    instances per class already make reliable (docs/benchmarks.md).

    Args:
        num_clips: N.
        scale_layers: pooling layers per scale (the lattice).
        num_prototypes: K, one per class.
        initial_scale: a at the start.
        flank_fraction: f; 0 compares with the rest of the video.
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_clips, D], the clip features (as given to
        the network; standardised per video here).
    Output shape: float [batch, num_proposals], logits in lattice order.

    Example:
        >>> layer = BodyPrototypes(16, (4, 2, 2), num_prototypes=3)
        >>> layer(np.zeros((2, 16, 8))).shape
        (2, 72)
    """

    def __init__(
        self,
        num_clips,
        scale_layers,
        num_prototypes,
        initial_scale=0.5,
        flank_fraction=0.0,
        **kwargs,
    ):
        super().__init__(num_clips, scale_layers, **kwargs)
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}.")
        if not 0 <= flank_fraction < float("inf"):
            raise ValueError(
                f"flank_fraction must be a finite number >= 0, got {flank_fraction!r}."
            )
        self.num_prototypes = int(num_prototypes)
        self.initial_scale = float(initial_scale)
        self.flank_fraction = float(flank_fraction)

    def build(self, input_shape):
        dim = input_shape[-1]
        self.prototypes = self.add_prototypes("prototypes", dim)
        self.scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_scale),
            name="scale",
        )
        self.build_lattice()
        if self.flank_fraction > 0:
            self.build_flanks(self.flank_fraction)

    def call(self, clip_features):
        features = standardize_per_video(clip_features)
        matches = ops.matmul(
            features, ops.transpose(ops.cast(self.prototypes, features.dtype))
        )
        contrast = (
            self.inside_minus_flanks(matches)
            if self.flank_fraction > 0
            else self.inside_minus_outside(matches)
        )
        prototypes = ops.cast(self.prototypes, contrast.dtype)
        return ops.cast(self.scale, contrast.dtype) * best_present_match(
            contrast, prototypes
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_prototypes": self.num_prototypes,
                "initial_scale": self.initial_scale,
                "flank_fraction": self.flank_fraction,
            }
        )
        return config


def class_mean_bodies(clips, durations, videos, num_classes):
    """float32 [num_classes, D]: per class, the mean standardised clip (each
    video's channels standardised over its clips) over the clips whose centre
    lies inside its instances, scaled to unit norm; zeros for a class
    without such clips.

    Args:
        clips: float [V, N, D] clip features of the training videos.
        durations: float [V] seconds.
        videos: V (segments [K, 2] seconds, labels [K] int) pairs.
        num_classes: K prototypes.
    """
    num_clips, dim = clips.shape[1], clips.shape[2]
    sums = np.zeros((num_classes, dim))
    for index, (segments, labels) in enumerate(videos):
        if not len(labels):
            continue
        standardized = standardized_clips(clips[index])
        centres = (np.arange(num_clips) + 0.5) * float(durations[index]) / num_clips
        for (start, end), label in zip(np.reshape(segments, (-1, 2)), labels):
            inside = (centres >= start) & (centres < end)
            sums[int(label)] += standardized[inside].sum(axis=0)
    norms = np.linalg.norm(sums, axis=-1, keepdims=True)
    return np.where(norms > 0, sums / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
