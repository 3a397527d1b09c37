"""The shared conv network over the proposal maps, with 2D-TAN's mask step
(docs/design.md section 5), computed only on the cells that can matter."""

import keras
import numpy as np
from keras import ops

from tal_keras.layers.map_conv_base import MapConvBase
from tal_keras.map_band import MapBand


@keras.saving.register_keras_serializable(package="tal_keras")
class BandMapConv(MapConvBase):
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
    read-back are needed. A KxK conv between two bands is a sum over its K
    kernel rows, each one gather (static index table, K rows per cell, the
    zero row where the tapped cell is zero or off the map) and one matrix
    product: gather then multiply ([n_out + 1, K * C] x [K * C, H]) while
    bands shrink, multiply then gather ([n_in + 1, C] x [C, K * H], then K
    rows per cell summed) while they grow, so the whole network multiplies
    about 1.14x the rows of the proposal cells alone at the paper's config
    (whole maps: 4.34x). K products of K * C (or K * H) columns, not K^2 of
    C: fewer, larger matrix products, and a K-step loop to compile. Gathers
    and matrix products are plain ONNX Gather and MatMul; the kernel rows run
    in a loop, one at a time, so that one row's temporaries are alive at
    once (at the paper's config, [n, K * C] floats: about 0.5 GB a video;
    all K^2 taps at once would be 4.5 GB). tf2onnx makes it an ONNX Loop,
    which the export writes out row by row (`export/unroll.py`). Bias, ReLU
    and the mask step are part of the layer, and its gradient is written by
    hand (`keras.ops.custom_gradient`): a gather's transpose is again a
    gather (`MapBand.backward_index`), both products use the cheaper order
    too, and only a layer's input and output (also its neighbours' output
    and input) are kept for the backward pass, not the gathered copies that
    automatic differentiation would keep.

    Alternatives counted at the paper's config, in multiples of the
    valid-cell minimum: one rectangle per map and layer in (start, length)
    coordinates 1.51x (1.35x in blocks of 16 rows), (1, K) convolutions per
    kernel row over zero-padded rows 1.46x to 1.59x, every band cell with
    gathers in one fixed order 1.28x; this layer 1.14x.

    The weights are those of `MaskedMapConv` (Conv2D sublayers `conv_<i>`,
    kernel [K, K, C, H] and bias [H], used only as weights here), so a
    checkpoint of either loads into the other, and so are its arguments and
    shapes (`MapConvBase`: num_clips, scale_layers, hidden_size, kernel_size,
    num_conv_layers, map_mode).

    Example:
        >>> conv = BandMapConv(256, (64, 32, 32), hidden_size=512)
        >>> conv(np.zeros((1, 17472, 512), "float32")).shape
        (1, 17472, 512)
    """

    def build(self, input_shape):
        self._band = MapBand(
            self.checked_lattice(input_shape),
            self.kernel_size,
            self.num_conv_layers,
            self.map_mode,
        )
        self.build_convs(self.convs, input_shape[-1])

    def call(self, proposal_features):
        band = self._band
        # Every band carries a zero row after its cells (see MapBand).
        features = _with_zero_row(proposal_features)
        for layer, conv in enumerate(self.convs):
            features = _band_layer(
                features,
                ops.cast(conv.kernel, features.dtype),
                ops.cast(conv.bias, features.dtype),
                ops.convert_to_tensor(band.mask_weights[layer], features.dtype),
                band.forward_index[layer],
                band.backward_index[layer],
                band.gather_first[layer],
            )
        return features[:, :-1]


def _with_zero_row(values):
    """[B, n, C] -> [B, n + 1, C], the last row zero."""
    return ops.concatenate([values, ops.zeros_like(values[:, :1])], axis=1)


def _band_layer(
    features, kernel, bias, mask_weights, forward_index, backward_index, gather_first
):
    """One layer, band m - 1 to band m: KxK conv by gathers, bias, ReLU, mask step.

    features: [B, n_in + 1, C], last row zero; kernel: [K, K, C, H]; bias:
    [H]; mask_weights: [n_out + 1], 0 at the zero row; forward_index: int32
    [K * K, n_out + 1]; backward_index: int32 [K * K, n_in + 1] (taps
    row-major, `MapBand`); gather_first: gather then multiply (n_out + 1
    rows per product) or multiply then gather (n_in + 1 rows). Returns
    [B, n_out + 1, H], last row zero.

    The K taps of one kernel row are one step: one gather of K rows per cell
    and one [K * C, H] matrix product (or one [C, K * H] product and one
    gather), K steps per layer. The gradient is written out so that the
    backward pass keeps only the layer's input and output (each also the
    neighbouring layer's output or input), not the gathered copies.
    """
    kernel_size = kernel.shape[0]
    channels, hidden = kernel.shape[2], kernel.shape[3]
    forward_rows = _row_tables(forward_index, kernel_size, not gather_first)
    backward_rows = _row_tables(backward_index, kernel_size, gather_first)

    @ops.custom_gradient
    def layer(features, kernel, bias):
        forward_table = ops.convert_to_tensor(forward_rows)
        inputs, outputs = backward_rows.shape[1], forward_rows.shape[1]

        def row_output(row):
            rows = ops.take(forward_table, row, axis=0)  # [n_out + 1, K]
            weights = ops.take(kernel, row, axis=0)  # [K, C, H]
            if gather_first:  # [B, n_out + 1, K * C] x [K * C, H]
                gathered = ops.take(features, rows, axis=1)
                return ops.matmul(
                    ops.reshape(gathered, (-1, outputs, kernel_size * channels)),
                    ops.reshape(weights, (kernel_size * channels, hidden)),
                )
            # [B, n_in + 1, C] x [C, K * H], then each cell's K products
            products = ops.matmul(
                features,
                ops.reshape(
                    ops.transpose(weights, (1, 0, 2)),
                    (channels, kernel_size * hidden),
                ),
            )
            products = ops.reshape(products, (-1, inputs * kernel_size, hidden))
            return ops.sum(ops.take(products, rows, axis=1), axis=2)

        conv = _one_step_at_a_time(
            1, kernel_size, lambda row, total: total + row_output(row), row_output(0)
        )
        output = ops.relu(conv + bias) * mask_weights[None, :, None]

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # Made here, so that inference graphs (and ONNX files) lack it.
            backward_table = ops.convert_to_tensor(backward_rows)
            # Gradient at the conv output; 0 at the zero row (weight 0).
            conv_grad = ops.where(
                output > 0, upstream * mask_weights[None, :, None], 0.0
            )

            def features_grad_term(row):
                rows = ops.take(backward_table, row, axis=0)  # [n_in + 1, K]
                weights = ops.take(kernel, row, axis=0)  # [K, C, H]
                if gather_first:  # n_out + 1 rows per product
                    products = ops.matmul(
                        conv_grad,
                        ops.transpose(
                            ops.reshape(weights, (kernel_size * channels, hidden))
                        ),
                    )
                    products = ops.reshape(
                        products, (-1, outputs * kernel_size, channels)
                    )
                    return ops.sum(ops.take(products, rows, axis=1), axis=2)
                # n_in + 1 rows: [B, n_in + 1, K * H] x [K * H, C]
                gathered = ops.take(conv_grad, rows, axis=1)
                return ops.matmul(
                    ops.reshape(gathered, (-1, inputs, kernel_size * hidden)),
                    ops.reshape(
                        ops.transpose(weights, (0, 2, 1)),
                        (kernel_size * hidden, channels),
                    ),
                )

            def kernel_grad_step(unused, rows):
                if gather_first:  # rows: forward, [n_out + 1, K]
                    gathered = ops.reshape(
                        ops.take(features, rows, axis=1),
                        (-1, outputs, kernel_size * channels),
                    )
                    row_grad = ops.tensordot(gathered, conv_grad, axes=[[0, 1], [0, 1]])
                    return unused, ops.reshape(
                        row_grad, (kernel_size, channels, hidden)
                    )
                # rows: backward, [n_in + 1, K]
                gathered = ops.reshape(
                    ops.take(conv_grad, rows, axis=1),
                    (-1, inputs, kernel_size * hidden),
                )
                row_grad = ops.tensordot(features, gathered, axes=[[0, 1], [0, 1]])
                row_grad = ops.reshape(row_grad, (channels, kernel_size, hidden))
                return unused, ops.transpose(row_grad, (1, 0, 2))

            features_grad = _one_step_at_a_time(
                1,
                kernel_size,
                lambda row, total: total + features_grad_term(row),
                features_grad_term(0),
            )
            # A second loop: TensorFlow's scan only stacks outputs shaped like
            # its carry, here a [K, C, H] placeholder.
            _, kernel_grad = ops.scan(
                kernel_grad_step,
                ops.zeros_like(kernel[0]),
                forward_table if gather_first else backward_table,
            )
            bias_grad = ops.sum(conv_grad, axis=(0, 1))
            return features_grad, kernel_grad, bias_grad

        return output, grad

    return layer(features, kernel, bias)


def _row_tables(tap_index, kernel_size, flattened):
    """int32 [K, n + 1, K]: the tap table [K * K, n + 1] by kernel row.

    Entry [a, o, b] is tap (a, b)'s row for cell o. With `flattened`, it is
    row * K + b instead: the row of the product of that tap in a
    [(rows) * K, H] view of a [rows, K * H] product.
    """
    rows = tap_index.reshape(kernel_size, kernel_size, -1).transpose(0, 2, 1)
    if flattened:
        rows = rows.astype(np.int64) * kernel_size + np.arange(kernel_size)
    return rows.astype(np.int32)


def _one_step_at_a_time(lower, upper, body, initial):
    """`ops.fori_loop`, but on TensorFlow one iteration at a time.

    TensorFlow's while loop starts up to 10 iterations at once by default, so
    10 steps' gathers and products would be alive together; ops.scan runs one
    at a time but tf2onnx cannot export its TensorArray carry. So on
    TensorFlow this is a plain tf.while_loop with parallel_iterations=1 (an
    ONNX Loop); other backends run their fori_loop, which is sequential.
    """
    if keras.backend.backend() != "tensorflow":
        return ops.fori_loop(lower, upper, body, initial)
    import tensorflow as tf

    return tf.while_loop(
        lambda index, total: index < upper,
        lambda index, total: (index + 1, body(index, total)),
        (tf.constant(lower), initial),
        parallel_iterations=1,
    )[1]
