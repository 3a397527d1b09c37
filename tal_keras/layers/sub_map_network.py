"""The sub-map stage of the proposal network (docs/design.md section 5): 2D-TAN's
fusion without text, then the shared masked conv network over the maps."""

import keras
from keras import ops

from tal_keras.config import CONV_IMPLEMENTATIONS
from tal_keras.layers.band_map_conv import BandMapConv
from tal_keras.layers.map_conv_base import MapConvBase
from tal_keras.layers.masked_map_conv import MaskedMapConv


@keras.saving.register_keras_serializable(package="tal_keras")
class SubMapNetwork(MapConvBase):
    """Proposal features -> map features, both in lattice order.

    A 1x1 conv H -> H (applied per proposal, which is the same as applying it
    to the map and zeroing the empty cells), L2 normalisation over channels
    (2D-TAN's `F.normalize(map_h) * map_mask`), then `MaskedMapConv`: scatter
    into the maps, L masked KxK conv layers with weights shared by all maps,
    read back into lattice order (or the same on each layer's band of cells,
    see `BandMapConv`).

    Args: those of `MapConvBase` (num_clips, scale_layers, hidden_size, which
    is also the 1x1 conv's width, kernel_size, num_conv_layers, map_mode), and
        conv_implementation: "band" (`BandMapConv`: only the cells each
            layer needs, on CPUs in the frequency form where
            `MapBand.frequency_tile` picks it, else by taps; the default),
            "taps" or "frequency" (`BandMapConv` in that form whatever it
            multiplies), "whole" (`MaskedMapConv`: whole maps, the
            reference). Same weights and outputs either way.

    Input and output shapes: those of `MapConvBase`.

    Example:
        >>> network = SubMapNetwork(256, (64, 32, 32), hidden_size=512)
        >>> network(np.zeros((1, 17472, 512), "float32")).shape
        (1, 17472, 512)
    """

    holds_convs = False  # its map_conv does

    def __init__(self, *args, conv_implementation="band", **kwargs):
        super().__init__(*args, **kwargs)
        if conv_implementation not in CONV_IMPLEMENTATIONS:
            raise ValueError(
                f"conv_implementation must be one of {CONV_IMPLEMENTATIONS}, "
                f"got {conv_implementation!r}."
            )
        self.conv_implementation = conv_implementation
        self.projection = keras.layers.Dense(
            self.hidden_size, dtype=self.dtype_policy, name="projection"
        )
        if conv_implementation == "whole":
            self.map_conv = MaskedMapConv(
                **self.map_arguments(), dtype=self.dtype_policy, name="map_conv"
            )
        else:
            self.map_conv = BandMapConv(
                **self.map_arguments(),
                frequency={"band": None, "taps": False, "frequency": True}[
                    conv_implementation
                ],
                dtype=self.dtype_policy,
                name="map_conv",
            )

    def build(self, input_shape):
        self.projection.build(input_shape)
        self.map_conv.build((*input_shape[:-1], self.hidden_size))

    def call(self, proposal_features):
        projected = self.projection(proposal_features)
        return self.map_conv(_l2_normalize(projected))

    def get_config(self):
        return {
            **super().get_config(),
            "conv_implementation": self.conv_implementation,
        }


def _l2_normalize(features, epsilon=1e-12):
    """x / max(||x||, epsilon) over the last axis, as torch's F.normalize.

    Written out so that an all-zero vector gets a zero gradient, not NaN.
    """
    square_sum = ops.sum(ops.square(features), axis=-1, keepdims=True)
    return features / ops.sqrt(ops.maximum(square_sum, epsilon**2))
