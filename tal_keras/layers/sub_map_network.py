"""The sub-map stage of the proposal network (DESIGN.md section 5): 2D-TAN's
fusion without text, then the shared masked conv network over the maps."""

import keras
from keras import ops

from tal_keras.layers.band_map_conv import BandMapConv
from tal_keras.layers.masked_map_conv import MAP_MODES, MaskedMapConv

CONV_IMPLEMENTATIONS = ("band", "whole")


@keras.saving.register_keras_serializable(package="tal_keras")
class SubMapNetwork(keras.layers.Layer):
    """Proposal features -> map features, both in lattice order.

    A 1x1 conv H -> H (applied per proposal, which is the same as applying it
    to the map and zeroing the empty cells), L2 normalisation over channels
    (2D-TAN's `F.normalize(map_h) * map_mask`), then `MaskedMapConv`: scatter
    into the maps, L masked KxK conv layers with weights shared by all maps,
    read back into lattice order (or the same on each layer's band of cells,
    see `BandMapConv`).

    Args:
        num_clips: N, clips per video.
        scale_layers: pooling layers per scale, e.g. (64, 32, 32).
        hidden_size: H, channels of the 1x1 conv and of the map convs.
        kernel_size: K, odd side of the map conv kernels (DESIGN.md: 9).
        num_conv_layers: L, map conv layers (DESIGN.md: 4).
        map_mode: "s2dtan" (one compact map per scale) or "2dtan" (one
            N x N map holding every proposal at (start, end)).
        conv_implementation: "band" (`BandMapConv`: only the cells each
            layer needs; the default) or "whole" (`MaskedMapConv`: whole
            maps, the reference). Same weights and outputs either way.
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_proposals, channels], lattice order.
    Output shape: float [batch, num_proposals, hidden_size], lattice order.

    Example:
        >>> network = SubMapNetwork(256, (64, 32, 32), hidden_size=512)
        >>> network(np.zeros((1, 17472, 512), "float32")).shape
        (1, 17472, 512)
    """

    def __init__(
        self,
        num_clips,
        scale_layers,
        hidden_size,
        kernel_size=9,
        num_conv_layers=4,
        map_mode="s2dtan",
        conv_implementation="band",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if map_mode not in MAP_MODES:
            raise ValueError(f"map_mode must be one of {MAP_MODES}, got {map_mode!r}.")
        if conv_implementation not in CONV_IMPLEMENTATIONS:
            raise ValueError(
                f"conv_implementation must be one of {CONV_IMPLEMENTATIONS}, "
                f"got {conv_implementation!r}."
            )
        self.num_clips = num_clips
        self.scale_layers = tuple(scale_layers)
        self.hidden_size = hidden_size
        self.kernel_size = kernel_size
        self.num_conv_layers = num_conv_layers
        self.map_mode = map_mode
        self.conv_implementation = conv_implementation
        self.projection = keras.layers.Dense(
            hidden_size, dtype=self.dtype_policy, name="projection"
        )
        map_conv_class = BandMapConv if conv_implementation == "band" else MaskedMapConv
        self.map_conv = map_conv_class(
            num_clips,
            scale_layers,
            hidden_size,
            kernel_size=kernel_size,
            num_conv_layers=num_conv_layers,
            map_mode=map_mode,
            dtype=self.dtype_policy,
            name="map_conv",
        )

    def build(self, input_shape):
        self.projection.build(input_shape)
        self.map_conv.build((*input_shape[:-1], self.hidden_size))

    def call(self, proposal_features):
        projected = self.projection(proposal_features)
        return self.map_conv(_l2_normalize(projected))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_clips": self.num_clips,
                "scale_layers": list(self.scale_layers),
                "hidden_size": self.hidden_size,
                "kernel_size": self.kernel_size,
                "num_conv_layers": self.num_conv_layers,
                "map_mode": self.map_mode,
                "conv_implementation": self.conv_implementation,
            }
        )
        return config


def _l2_normalize(features, epsilon=1e-12):
    """x / max(||x||, epsilon) over the last axis, as torch's F.normalize.

    Written out so that an all-zero vector gets a zero gradient, not NaN.
    """
    square_sum = ops.sum(ops.square(features), axis=-1, keepdims=True)
    return features / ops.sqrt(ops.maximum(square_sum, epsilon**2))
