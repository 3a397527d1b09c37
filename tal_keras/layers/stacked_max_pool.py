"""Proposal features by stacked max-pooling (docs/design.md section 4)."""

import keras
from keras import ops

from tal_keras.lattice import Lattice

MODES = ("pool", "conv")


@keras.saving.register_keras_serializable(package="tal_keras")
class StackedMaxPool(keras.layers.Layer):
    """Features of every lattice proposal, in lattice order.

    The feature of proposal (i, j) is the elementwise max of x[i..j], computed
    as 2D-TAN's SparsePropMaxPool does: scale 0 starts with the identity and
    adds one max-pool(2, 1) per layer; scale k > 0 starts with a max-pool(3, 2)
    on the last output of scale k - 1, then adds max-pool(2, 1) layers. Layer m
    of a scale yields all proposals of one length; concatenating the layer
    outputs gives the lattice order (`Lattice.layers`).

    With `mode="conv"` each pool is replaced by a learned conv1d of the same
    kernel and stride, H -> H channels, 'valid' padding and no activation (the
    SparsePropConv variant the authors posted in microsoft/VideoX#19); the
    identity that opens scale 0 becomes a learned 1x1 conv.

    Args:
        num_clips: N, clips per video; the input must have exactly N steps.
        scale_layers: pooling layers per scale, e.g. (64, 32, 32).
        mode: "pool" (max-pool, no weights) or "conv" (learned conv1d).
        hidden_size: channels of the input and of the convs; required for
            `mode="conv"`, ignored for "pool".
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_clips, channels], the clip sequence.
    Output shape: float [batch, num_proposals, channels], lattice order.

    Example:
        >>> pool = StackedMaxPool(num_clips=256, scale_layers=(64, 32, 32))
        >>> pool(np.zeros((2, 256, 512), "float32")).shape
        (2, 17472, 512)
    """

    def __init__(
        self, num_clips, scale_layers, mode="pool", hidden_size=None, **kwargs
    ):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(
                f"StackedMaxPool mode must be one of {MODES}, got {mode!r}."
            )
        if mode == "conv" and hidden_size is None:
            raise ValueError(
                "StackedMaxPool(mode='conv') needs hidden_size, the conv channels."
            )
        lattice = Lattice(num_clips, scale_layers)  # raises with a suggestion
        self.num_clips = num_clips
        self.scale_layers = tuple(scale_layers)
        self.mode = mode
        self.hidden_size = hidden_size
        self._num_proposals = lattice.num_proposals
        self.convs = []
        if mode == "conv":
            self.convs = [
                keras.layers.Conv1D(
                    hidden_size,
                    layer.kernel,
                    strides=layer.stride,
                    padding="valid",
                    dtype=self.dtype_policy,
                    name=f"conv_scale{layer.scale}_layer{layer.layer}",
                )
                for layer in lattice.layers
            ]

    def build(self, input_shape):
        if input_shape[1] is not None and input_shape[1] != self.num_clips:
            raise ValueError(
                f"StackedMaxPool expects {self.num_clips} clips per video "
                f"(num_clips), got input shape {tuple(input_shape)}."
            )
        self._pooling_layers = Lattice(self.num_clips, self.scale_layers).layers
        steps = self.num_clips
        for conv, layer in zip(self.convs, self._pooling_layers):
            conv.build((input_shape[0], steps, input_shape[-1]))
            steps = layer.count

    def call(self, clip_sequence):
        outputs = []
        features = clip_sequence
        for index, layer in enumerate(self._pooling_layers):
            if self.mode == "conv":
                features = self.convs[index](features)
            elif layer.kernel > 1:
                features = ops.max_pool(
                    features, layer.kernel, strides=layer.stride, padding="valid"
                )
            outputs.append(features)
        return ops.concatenate(outputs, axis=1)

    def compute_output_shape(self, input_shape):
        channels = self.hidden_size if self.mode == "conv" else input_shape[-1]
        return (input_shape[0], self._num_proposals, channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_clips": self.num_clips,
                "scale_layers": list(self.scale_layers),
                "mode": self.mode,
                "hidden_size": self.hidden_size,
            }
        )
        return config
