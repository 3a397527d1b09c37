"""What the layers over the proposal maps share (docs/design.md section 5): their
arguments, checks, Conv2D weights and config."""

import keras

from tal_keras.lattice import Lattice, check_map_conv


class MapConvBase(keras.layers.Layer):
    """Base of `MaskedMapConv`, `BandMapConv` and `SubMapNetwork`.

    Keeps one attribute per argument, checks them (lattice, map mode, odd
    kernel), makes the L Conv2D sublayers that hold the map conv weights
    (`convs`, where `holds_convs`), and writes the arguments into
    `get_config`. A subclass adds its own arguments to `get_config` and
    computes `call`.

    Args:
        num_clips: N, clips per video.
        scale_layers: pooling layers per scale, e.g. (64, 32, 32).
        hidden_size: H, output channels of every conv layer.
        kernel_size: K, odd side of the square conv kernels (docs/design.md: 9).
        num_conv_layers: L, conv layers (docs/design.md: 4).
        map_mode: "s2dtan" (one compact map per scale) or "2dtan" (one N x N
            map holding every proposal at (start, end)).
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_proposals, channels], lattice order.
    Output shape: float [batch, num_proposals, hidden_size], lattice order.
    """

    holds_convs = True  # False: a layer that delegates to a map conv

    def __init__(
        self,
        num_clips,
        scale_layers,
        hidden_size,
        kernel_size=9,
        num_conv_layers=4,
        map_mode="s2dtan",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_map_conv(map_mode, kernel_size)
        Lattice(num_clips, scale_layers)  # raises with a suggestion
        self.num_clips = num_clips
        self.scale_layers = tuple(scale_layers)
        self.hidden_size = hidden_size
        self.kernel_size = kernel_size
        self.num_conv_layers = num_conv_layers
        self.map_mode = map_mode
        if self.holds_convs:
            self.convs = self._conv_layers()

    def _conv_layers(self):
        """The L Conv2D sublayers `conv_<i>` (kernel [K, K, C, H], bias [H])."""
        return [
            keras.layers.Conv2D(
                self.hidden_size,
                self.kernel_size,
                padding="same",
                activation="relu",
                kernel_initializer=mask_compensating_initializer(self.kernel_size),
                dtype=self.dtype_policy,
                name=f"conv_{index}",
            )
            for index in range(self.num_conv_layers)
        ]

    def checked_lattice(self, input_shape):
        """The `Lattice`, after checking the input holds its proposals."""
        lattice = Lattice(self.num_clips, self.scale_layers)
        if input_shape[1] is not None and input_shape[1] != lattice.num_proposals:
            raise ValueError(
                f"{type(self).__name__} expects {lattice.num_proposals} proposals in "
                f"lattice order for {lattice}, got input shape {tuple(input_shape)}."
            )
        return lattice

    def build_convs(self, convs, channels):
        for conv in convs:
            conv.build((None, None, None, channels))
            channels = self.hidden_size

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.hidden_size)

    def map_arguments(self):
        """{argument: value} of the six arguments above."""
        return {
            "num_clips": self.num_clips,
            "scale_layers": list(self.scale_layers),
            "hidden_size": self.hidden_size,
            "kernel_size": self.kernel_size,
            "num_conv_layers": self.num_conv_layers,
            "map_mode": self.map_mode,
        }

    def get_config(self):
        return {**super().get_config(), **self.map_arguments()}


def mask_compensating_initializer(kernel_size):
    """He initialisation scaled up for 2D-TAN's mask step.

    The mask step divides each output by the number of valid cells under the
    kernel (up to K * K), so with plain He or Glorot weights the activations
    shrink by about K * K per layer and the overlap head starts from a
    near-constant input (P_over = 0.5 +- 1e-5 at the demo config). Scaling the
    weight variance by K ** 4 keeps the activations' scale through the stack;
    on the synthetic demo it reached a given validation AUC in about half the
    epochs. The method (docs/design.md) fixes no initialisation.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0 * kernel_size**4, mode="fan_in", distribution="uniform"
    )
