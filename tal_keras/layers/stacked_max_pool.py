"""Proposal features by stacked max-pooling (docs/design.md section 4)."""

import keras
import numpy as np
from keras import ops

from tal_keras.lattice import Lattice

MODES = ("pool", "conv")


@keras.saving.register_keras_serializable(package="tal_keras")
class StackedMaxPool(keras.layers.Layer):
    """Features of every lattice proposal, in lattice order.

    The feature of proposal (i, j) is the elementwise max of x[i..j], the
    feature 2D-TAN's SparsePropMaxPool computes by chained pools (scale 0: the
    identity, then one max-pool(2, 1) per layer; scale k > 0: a max-pool(3, 2)
    on the last output of scale k - 1, then max-pool(2, 1) layers). Here it is
    read from a range-maximum (doubling) table instead of 128 chained pools
    at the paper's lattice: level 0 is x, level k = max(level k-1, level k-1
    shifted by 2^(k-1)), so level k at i is the max of x[i..i + 2^k - 1]; the
    feature of (i, j) is max(level_k[i], level_k[j - 2^k + 1]) with
    k = floor(log2(j - i + 1)), two windows that cover x[i..j] exactly. The
    same values bit for bit (a max of the same elements); 9 levels and two
    gathers at the paper's lattice, so a training step compiles in a fraction
    of the chained pools' time. The gather tables (`range_max_tables`) come
    from the lattice in `build()`.

    With `mode="conv"` each pool is replaced by a learned conv1d of the same
    kernel and stride, H -> H channels, 'valid' padding and no activation (the
    SparsePropConv variant the authors posted in microsoft/VideoX#19), chained
    as the pools are; the identity that opens scale 0 becomes a learned 1x1
    conv.

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
        lattice = Lattice(self.num_clips, self.scale_layers)
        if self.mode == "pool":
            self._num_levels, self._first_window, self._second_window = (
                range_max_tables(lattice)
            )
            return
        steps = self.num_clips
        for conv, layer in zip(self.convs, lattice.layers):
            conv.build((input_shape[0], steps, input_shape[-1]))
            steps = layer.count

    def call(self, clip_sequence):
        if self.mode == "conv":
            outputs, features = [], clip_sequence
            for conv in self.convs:
                features = conv(features)
                outputs.append(features)
            return ops.concatenate(outputs, axis=1)
        level, levels = clip_sequence, [clip_sequence]
        for index in range(1, self._num_levels):
            shift = 2 ** (index - 1)
            level = ops.maximum(level[:, :-shift], level[:, shift:])
            levels.append(level)
        table = ops.concatenate(levels, axis=1) if len(levels) > 1 else level
        return ops.maximum(
            ops.take(table, self._first_window, axis=1),
            ops.take(table, self._second_window, axis=1),
        )

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


def range_max_tables(lattice):
    """The doubling table's size and the two rows each proposal reads.

    Level k (k = 0 .. num_levels - 1) holds N - 2^k + 1 rows, the max of
    x[i..i + 2^k - 1] at row i; the levels are concatenated in order. Proposal
    (i, j) with k = floor(log2(j - i + 1)) reads row i and row j - 2^k + 1 of
    level k: windows [i, i + 2^k - 1] and [j - 2^k + 1, j], whose union is
    [i, j].

    Returns:
        (num_levels, first, second): num_levels = floor(log2(longest)) + 1;
        first, second: int32 [P], rows of the concatenated table, lattice order.
    """
    num_clips = lattice.num_clips
    # floor(log2(length)), exact on integers.
    levels = np.array([int(length).bit_length() - 1 for length in lattice.lengths])
    num_levels = int(levels.max()) + 1
    level_offsets = np.cumsum(
        [0] + [num_clips - 2**level + 1 for level in range(num_levels - 1)]
    )
    first = level_offsets[levels] + lattice.starts
    second = level_offsets[levels] + lattice.ends - 2**levels + 1
    return num_levels, first.astype(np.int32), second.astype(np.int32)
