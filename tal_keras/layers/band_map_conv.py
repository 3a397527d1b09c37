"""The shared conv network over the proposal maps, with 2D-TAN's mask step
(DESIGN.md section 5), computed only on the cells that can matter."""

import keras
from keras import ops

from tal_keras.lattice import Lattice
from tal_keras.map_band import MAP_MODES, MapBand


@keras.saving.register_keras_serializable(package="tal_keras")
class BandMapConv(keras.layers.Layer):
    """`MaskedMapConv` computed on the band of each layer, not on whole maps.

    Same inputs, weights and outputs as `MaskedMapConv` (the whole-map
    reference): L layers of KxK conv + ReLU + 2D-TAN's mask step over the
    proposal maps, weights shared by all maps, proposal cells read back in
    lattice order. The mask step keeps a cell nonzero after layer m only if a
    proposal lies within m * (K // 2) cells (Chebyshev distance), and only the
    proposal cells are read after layer L, so layer m computes just the cells
    within min(m, L - m) * (K // 2) of a proposal: its band (`MapBand`). At
    the paper's config (N 256, K 9, L 4) the bands hold 17,472, 22,428,
    27,064, 22,428 and 17,472 cells against 75,776 cells per whole map set.

    Scheme: each band is a flat list of cells of all maps; the first and last
    are the proposals in lattice order, so no scatter into maps and no
    read-back are needed. A KxK conv between two bands is a sum over its K^2
    taps of a gather (static index table, the zero row where the tapped cell
    is zero or off the map) and a [C, H] matrix product. Each layer takes the
    cheaper order: gather then multiply (n_out rows per tap) while bands
    shrink, multiply then gather (n_in + 1 rows) while they grow, so the
    whole network multiplies about 1.14x the rows of the proposal cells alone
    at the paper's config (whole maps: 4.34x). Gathers and matrix products
    are plain ONNX Gather and MatMul. The gradient is written by hand
    (`keras.ops.custom_gradient`): a gather's transpose is again a gather
    (`MapBand.backward_index`), both products use the cheaper order too, and
    only a layer's input is kept for the backward pass, not the K^2 gathered
    copies that automatic differentiation would keep.

    Gathered rows of one tap are contiguous runs of cells (a kernel row is K
    neighbours of one map row), so the gathers stream memory; they cost a few
    percent of the matrix products at H = 512.

    The weights are those of `MaskedMapConv` (Conv2D sublayers `conv_<i>`,
    kernel [K, K, C, H] and bias [H]), so a checkpoint of either loads into
    the other.

    Args:
        num_clips: N, clips per video.
        scale_layers: pooling layers per scale, e.g. (64, 32, 32).
        hidden_size: H, output channels of every conv layer.
        kernel_size: K, odd side of the square conv kernels (DESIGN.md: 9).
        num_conv_layers: L, conv layers (DESIGN.md: 4).
        map_mode: "s2dtan" (one compact map per scale) or "2dtan" (one N x N
            map holding every proposal at (start, end)).
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_proposals, channels], lattice order.
    Output shape: float [batch, num_proposals, hidden_size], lattice order.

    Example:
        >>> conv = BandMapConv(256, (64, 32, 32), hidden_size=512)
        >>> conv(np.zeros((1, 17472, 512), "float32")).shape
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        if map_mode not in MAP_MODES:
            raise ValueError(f"map_mode must be one of {MAP_MODES}, got {map_mode!r}.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be a positive odd integer, got {kernel_size!r}."
            )
        Lattice(num_clips, scale_layers)  # raises with a suggestion
        self.num_clips = num_clips
        self.scale_layers = tuple(scale_layers)
        self.hidden_size = hidden_size
        self.kernel_size = kernel_size
        self.num_conv_layers = num_conv_layers
        self.map_mode = map_mode
        # Conv2D sublayers only hold the weights, named as in MaskedMapConv.
        self.convs = [
            keras.layers.Conv2D(
                hidden_size,
                kernel_size,
                padding="same",
                activation="relu",
                dtype=self.dtype_policy,
                name=f"conv_{index}",
            )
            for index in range(num_conv_layers)
        ]

    def build(self, input_shape):
        lattice = Lattice(self.num_clips, self.scale_layers)
        if input_shape[1] is not None and input_shape[1] != lattice.num_proposals:
            raise ValueError(
                f"BandMapConv expects {lattice.num_proposals} proposals in lattice "
                f"order for {lattice}, got input shape {tuple(input_shape)}."
            )
        self._band = MapBand(
            lattice, self.kernel_size, self.num_conv_layers, self.map_mode
        )
        channels = input_shape[-1]
        for conv in self.convs:
            conv.build((None, None, None, channels))
            channels = self.hidden_size

    def call(self, proposal_features):
        band = self._band
        features = proposal_features
        for layer, conv in enumerate(self.convs):
            kernel = ops.cast(conv.kernel, features.dtype)
            kernel = ops.reshape(
                kernel, (self.kernel_size**2, ops.shape(kernel)[2], self.hidden_size)
            )
            features = _band_conv(
                features,
                kernel,
                band.forward_index[layer],
                band.backward_index[layer],
                band.active_taps[layer],
                band.gather_first[layer],
            )
            weights = ops.convert_to_tensor(
                band.mask_weights[layer][None, :, None], dtype=features.dtype
            )
            bias = ops.cast(conv.bias, features.dtype)
            features = ops.relu(features + bias) * weights
        return features

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
            }
        )
        return config


def _with_zero_row(values):
    """[B, n, C] -> [B, n + 1, C], the last row zero (what index n gathers)."""
    return ops.concatenate([values, ops.zeros_like(values[:, :1])], axis=1)


def _band_conv(features, kernel, forward_index, backward_index, taps, gather_first):
    """One KxK conv (no bias) from one band to the next, by gathers.

    features: [B, n_in, C]; kernel: [K * K, C, H], taps row-major;
    forward_index: int32 [K * K, n_out]; backward_index: int32 [K * K, n_in];
    taps: the taps to sum; gather_first: gather then multiply (n_out rows
    per tap) or multiply then gather (n_in + 1 rows). Returns [B, n_out, H].
    """

    @ops.custom_gradient
    def conv(features, kernel):
        padded = _with_zero_row(features)
        output = None
        for tap in taps:
            if gather_first:
                term = ops.matmul(
                    ops.take(padded, forward_index[tap], axis=1), kernel[tap]
                )
            else:
                term = ops.take(
                    ops.matmul(padded, kernel[tap]), forward_index[tap], axis=1
                )
            output = term if output is None else output + term

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            padded_upstream = _with_zero_row(upstream)
            features_grad, kernel_grads = None, []
            for tap in range(kernel.shape[0]):
                if tap not in taps:
                    kernel_grads.append(ops.zeros_like(kernel[tap]))
                    continue
                transposed = ops.transpose(kernel[tap])
                if gather_first:
                    # n_out rows: the products run over the output band.
                    term = ops.take(
                        ops.matmul(padded_upstream, transposed),
                        backward_index[tap],
                        axis=1,
                    )
                    tap_inputs = ops.take(padded, forward_index[tap], axis=1)
                    kernel_grads.append(
                        ops.tensordot(tap_inputs, upstream, axes=[[0, 1], [0, 1]])
                    )
                else:
                    # n_in rows: the products run over the input band.
                    tap_upstream = ops.take(
                        padded_upstream, backward_index[tap], axis=1
                    )
                    term = ops.matmul(tap_upstream, transposed)
                    kernel_grads.append(
                        ops.tensordot(features, tap_upstream, axes=[[0, 1], [0, 1]])
                    )
                features_grad = term if features_grad is None else features_grad + term
            if features_grad is None:
                features_grad = ops.zeros_like(features)
            return features_grad, ops.stack(kernel_grads, axis=0)

        if output is None:
            batch = ops.shape(features)[0]
            output = ops.zeros(
                (batch, forward_index.shape[1], kernel.shape[-1]), features.dtype
            )
        return output, grad

    return conv(features, kernel)
