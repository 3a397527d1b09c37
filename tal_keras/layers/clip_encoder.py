"""Clip encoder: the 1x1 conv D -> H + ReLU that turns clip features into the
clip sequence x[0..N-1] (docs/design.md section 2), with two optional departures
from the report (both off by default): per-video standardisation of the
input and a temporal conv for context before pooling (docs/benchmarks.md)."""

import keras

NORMALIZATIONS = ("none", "video")


def standardize_per_video(clip_features):
    """Each channel minus its mean over the clips, divided by its standard
    deviation + 1e-3 (float [batch, num_clips, D], any backend)."""
    mean = keras.ops.mean(clip_features, axis=1, keepdims=True)
    centered = clip_features - mean
    std = keras.ops.sqrt(keras.ops.mean(centered * centered, axis=1, keepdims=True))
    return centered / (std + 1e-3)


@keras.saving.register_keras_serializable(package="tal_keras")
class ClipEncoder(keras.layers.Layer):
    """1x1 temporal conv D -> H followed by a ReLU, applied to every clip.

    A 1x1 conv over time is a dense layer applied per clip, so it is one
    `Dense` on the last axis.

    Args:
        hidden_size: H, output channels (docs/design.md: 512).
        normalization: "none" (the report) or "video": each input channel is
            first standardised over the video's clips (minus its mean over
            the N clips, divided by its standard deviation + 1e-3), so that
            per-video offsets and gains are gone before the projection.
        context_kernel: 0 (the report) or an odd K: the projected sequence
            x gets x + ReLU(conv1d_K(x)) ('same' padding, H -> H), so that
            each clip sees its neighbours (onsets and offsets become visible
            to the max-pooled proposal features).
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_clips, feature_dim], the clip features.
    Output shape: float [batch, num_clips, hidden_size], non-negative.

    Example:
        >>> encoder = ClipEncoder(hidden_size=512)
        >>> encoder(np.zeros((2, 256, 2304), "float32")).shape
        (2, 256, 512)
    """

    def __init__(self, hidden_size, normalization="none", context_kernel=0, **kwargs):
        super().__init__(**kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}."
            )
        if context_kernel and (context_kernel < 1 or context_kernel % 2 == 0):
            raise ValueError(
                f"context_kernel must be 0 or a positive odd integer, got {context_kernel!r}."
            )
        self.hidden_size = hidden_size
        self.normalization = normalization
        self.context_kernel = context_kernel
        self.projection = keras.layers.Dense(
            hidden_size, activation="relu", dtype=self.dtype_policy, name="projection"
        )
        self.context = None
        if context_kernel:
            self.context = keras.layers.Conv1D(
                hidden_size,
                context_kernel,
                padding="same",
                activation="relu",
                dtype=self.dtype_policy,
                name="context",
            )

    def build(self, input_shape):
        self.projection.build(input_shape)
        if self.context is not None:
            self.context.build((*input_shape[:-1], self.hidden_size))

    def call(self, clip_features):
        if self.normalization == "video":
            clip_features = standardize_per_video(clip_features)
        clip_sequence = self.projection(clip_features)
        if self.context is not None:
            clip_sequence = clip_sequence + self.context(clip_sequence)
        return clip_sequence

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_size": self.hidden_size,
                "normalization": self.normalization,
                "context_kernel": self.context_kernel,
            }
        )
        return config
