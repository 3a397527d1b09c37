"""The shared conv network over the proposal maps, with 2D-TAN's mask step
(docs/design.md section 5), computed only on the cells that can matter."""

import contextlib
import math

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
    read-back are needed. A KxK conv between two bands is a sum over its K^2
    taps of a gather (static index table, the zero row where the tapped cell
    is zero or off the map) and a [C, H] matrix product. Each layer takes the
    cheaper order: gather then multiply (n_out rows per tap) while bands
    shrink, multiply then gather (n_in + 1 rows) while they grow, so the
    whole network multiplies about 1.14x the rows of the proposal cells alone
    at the paper's config (whole maps: 4.34x). Gathers and matrix products
    are plain ONNX Gather and MatMul; the taps run in a loop, one at a time,
    so that one tap's temporaries are alive at once (the ONNX export traces
    the taps written out instead, or, where it multiplies at most half as
    much, the frequency form: tiles of output cells through 2-D discrete
    Fourier transforms written as matrix products, `taps_written_out`). Bias,
    ReLU and the mask step are part of the layer, and its gradient is
    written by hand (`keras.ops.custom_gradient`): a gather's transpose is
    again a gather (`MapBand.backward_index`), both products use the cheaper
    order too, and only a layer's input and output (also its neighbours'
    output and input) are kept for the backward pass, not the K^2 gathered
    copies that automatic differentiation would keep.

    Alternatives counted at the paper's config, in multiples of the
    valid-cell minimum: one rectangle per map and layer in (start, length)
    coordinates 1.51x (1.35x in blocks of 16 rows), (1, K) convolutions per
    kernel row over zero-padded rows 1.46x to 1.59x, every band cell with
    gathers in one fixed order 1.28x; this layer 1.14x.

    On CPUs, where `MapBand.frequency_tile` finds that the frequency form
    multiplies at most half of what the taps do (the paper config: 0.19;
    the demo's: no), every layer runs in it in Keras too, training and
    inference, with its gradient written out as the taps' is (`frequency`:
    None, the default; on GPUs, `_only_cpus`, and under a float16 or
    bfloat16 policy the taps; True: in the frequency form whatever it
    multiplies; False: by taps). At the paper
    config a training step at batch 2 took about a fifth of the taps' time
    on TensorFlow, peaking about 1.7 GiB higher (docs/performance.md,
    Training step).

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

    def __init__(self, *args, frequency=None, **kwargs):
        super().__init__(*args, **kwargs)
        if frequency not in (None, True, False):
            raise ValueError(
                f"frequency must be None, True or False, got {frequency!r}."
            )
        self.frequency = frequency

    def get_config(self):
        return {**super().get_config(), "frequency": self.frequency}

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
        channels = proposal_features.shape[-1]
        if _WRITTEN_OUT:
            tile = _WRITTEN_OUT[-1][2]
            if tile is None:  # the choice by multiply-adds
                tile = band.frequency_tile(channels, self.hidden_size)
        elif self.frequency is None:
            # The same choice where Keras computes in float32 on CPUs only;
            # on GPUs (`_only_cpus`) and in float16 or bfloat16, whose
            # transforms would round each spectrum to 8 or 11 bits, the taps.
            tile = 0
            if _only_cpus() and self.compute_dtype == "float32":
                tile = band.frequency_tile(channels, self.hidden_size)
        else:
            tile = self.frequency and band.frequency_tile(
                channels, self.hidden_size, at_most=None
            )
        for layer, conv in enumerate(self.convs):
            kernel = ops.cast(conv.kernel, features.dtype)
            features = band_layer(
                features,
                ops.reshape(kernel, (self.kernel_size**2, *kernel.shape[2:])),
                ops.cast(conv.bias, features.dtype),
                ops.convert_to_tensor(band.mask_weights[layer], features.dtype),
                band.forward_index[layer],
                band.backward_index[layer],
                band.gather_first[layer],
                band.frequency_tiles(layer + 1, tile) if tile else None,
            )
        return features[:, :-1]


def _only_cpus():
    """Whether Keras sees no GPU or TPU. There the default band conv takes
    the frequency form where it multiplies at most half as much; on
    accelerators the taps: no GPU has run the frequency form yet, and XLA's
    own count of the paper config's training step at a batch of 32 (JAX,
    `memory_analysis` on the CPU) is 44 GiB of temporaries in the frequency
    form against 19 GiB by taps (docs/performance.md)."""
    return all(device.startswith("cpu") for device in keras.distribution.list_devices())


def _with_zero_row(values):
    """[B, n, C] -> [B, n + 1, C], the last row zero."""
    return ops.concatenate([values, ops.zeros_like(values[:, :1])], axis=1)


def band_layer(
    features,
    kernel,
    bias,
    mask_weights,
    forward_index,
    backward_index,
    gather_first,
    frequency_tiles=None,
):
    """One layer, band m - 1 to band m: KxK conv by gathers, bias, ReLU, mask step.

    features: [B, n_in + 1, C], last row zero; kernel: [K * K, C, H], taps
    row-major; bias: [H]; mask_weights: [n_out + 1], 0 at the zero row;
    forward_index: int32 [K * K, n_out + 1]; backward_index: int32
    [K * K, n_in + 1]; gather_first: gather then multiply (n_out + 1 rows per
    tap) or multiply then gather (n_in + 1 rows); frequency_tiles: None, or
    `MapBand.frequency_tiles` of the layer, to compute it in the frequency
    form. Returns [B, n_out + 1, H], last row zero.

    The gradient is written out so that the backward pass keeps only the
    layer's input and output (each also the neighbouring layer's output or
    input): for the taps gathers of rows, not K^2 gathered copies
    (`_tap_gradients`); for the frequency form the transposed transforms
    and products, each group of tiles' spectra computed again, not kept
    (`_frequency_gradients`). Inside `taps_written_out` (the ONNX export)
    the layer has no gradient.
    """

    def activation(conv, bias):
        return ops.relu(conv + bias) * mask_weights[None, :, None]

    if _WRITTEN_OUT:
        if frequency_tiles is None:
            conv = _written_out_taps(features, kernel, forward_index, gather_first)
        else:
            group_bytes = _WRITTEN_OUT[-1][0]
            conv = _frequency_taps(features, kernel, *frequency_tiles, group_bytes)
        return activation(conv, bias)
    if frequency_tiles is None:
        forward_table = ops.convert_to_tensor(forward_index)

        def conv(features, kernel):
            return _taps(features, kernel, forward_table, gather_first)

        def conv_gradients(features, kernel, conv_grad):
            return _tap_gradients(
                features, kernel, conv_grad, forward_table, backward_index, gather_first
            )

    else:

        def conv(features, kernel):
            return _frequency_taps(
                features, kernel, *frequency_tiles, FREQUENCY_GROUP_BYTES
            )

        def conv_gradients(features, kernel, conv_grad):
            return _frequency_gradients(
                features, kernel, conv_grad, *frequency_tiles, FREQUENCY_GROUP_BYTES
            )

    @ops.custom_gradient
    def layer(features, kernel, bias):
        output = activation(conv(features, kernel), bias)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # Gradient at the conv output; 0 at the zero row (weight 0).
            conv_grad = ops.where(
                output > 0, upstream * mask_weights[None, :, None], 0.0
            )
            features_grad, kernel_grad = conv_gradients(features, kernel, conv_grad)
            return features_grad, kernel_grad, ops.sum(conv_grad, axis=(0, 1))

        return output, grad

    return layer(features, kernel, bias)


def _taps(features, kernel, forward_table, gather_first):
    """The conv of `band_layer` tap by tap in a loop: features [B, n_in + 1,
    C], kernel [K * K, C, H], forward_table int32 [K * K, n_out + 1]; returns
    [B, n_out + 1, H]."""

    def tap_output(tap):
        rows = ops.take(forward_table, tap, axis=0)
        weights = ops.take(kernel, tap, axis=0)
        if gather_first:
            return ops.matmul(ops.take(features, rows, axis=1), weights)
        return ops.take(ops.matmul(features, weights), rows, axis=1)

    return _one_tap_at_a_time(
        1,
        forward_table.shape[0],
        lambda tap, total: total + tap_output(tap),
        tap_output(0),
    )


def _tap_gradients(
    features, kernel, conv_grad, forward_table, backward_index, gather_first
):
    """The gradients of `_taps` at features and kernel given conv_grad
    [B, n_out + 1, H] (0 at the zero row): a gather's transpose is again a
    gather (`MapBand.backward_index`, numpy [K * K, n_in + 1]), and both
    products take the cheaper order too."""
    # Made here, so that inference graphs (and ONNX files) lack it.
    backward_table = ops.convert_to_tensor(backward_index)

    def features_grad_term(tap):
        backward_rows = ops.take(backward_table, tap, axis=0)
        transposed = ops.transpose(ops.take(kernel, tap, axis=0))
        if gather_first:  # n_out + 1 rows per product
            return ops.take(ops.matmul(conv_grad, transposed), backward_rows, axis=1)
        # n_in + 1 rows
        return ops.matmul(ops.take(conv_grad, backward_rows, axis=1), transposed)

    def kernel_grad_step(unused, tap):
        forward_rows, backward_rows = tap
        if gather_first:
            # One [C, B * n] x [B * n, H] product (what TensorFlow's
            # tensordot computes): on JAX, XLA's CPU dot ran the
            # [B, n, C] x [B, n, H] contraction at 0.7x this rate at
            # the paper config (multiply first, below, the other way
            # round).
            tap_features = ops.take(features, forward_rows, axis=1)
            kernel_grad = ops.matmul(
                ops.transpose(ops.reshape(tap_features, (-1, tap_features.shape[-1]))),
                ops.reshape(conv_grad, (-1, conv_grad.shape[-1])),
            )
        else:
            tap_grad = ops.take(conv_grad, backward_rows, axis=1)
            kernel_grad = ops.tensordot(features, tap_grad, axes=[[0, 1], [0, 1]])
        return unused, kernel_grad

    features_grad = _one_tap_at_a_time(
        1,
        backward_index.shape[0],
        lambda tap, total: total + features_grad_term(tap),
        features_grad_term(0),
    )
    # A second loop: TensorFlow's scan only stacks outputs shaped like its
    # carry, here a [C, H] placeholder.
    _, kernel_grad = ops.scan(
        kernel_grad_step,
        ops.zeros_like(kernel[0]),
        (forward_table, backward_table),
    )
    return features_grad, kernel_grad


# Outside the export, the frequency form takes its tiles in groups whose
# input windows take at most this many bytes per video.
FREQUENCY_GROUP_BYTES = 32 * 2**20
# The (group bytes, block bytes, frequency tile) of the `taps_written_out`
# blocks entered, innermost last.
_WRITTEN_OUT = []


@contextlib.contextmanager
def taps_written_out(group_bytes=0, block_bytes=0, frequency_tile=0):
    """Band conv layers traced inside it run their taps as plain steps, each
    with its index rows and kernel slices constants, instead of a loop.

    For the ONNX export (`export.onnx_export.convert`): the converter gets no
    Loop to write out after converting. A layer whose gathered rows of G >= 2
    taps fit in `group_bytes` per video (float32) sums its taps G at a time:
    one Gather of the G taps' rows [B, n_out + 1, G, C] and one product with
    their kernel slices stacked [G * C, H], gather first whatever the layer's
    cheaper order; G is as large as the budget allows, up to K * K. Other
    layers compute their output rows in blocks whose gathered rows of one tap
    fit in `block_bytes` per video (all rows in one block if 0), each block
    by one MatMul and one Add per tap with its Gathers, in the layer's
    cheaper order (`_taps_in_row_blocks`). With a `frequency_tile` T > 0
    every layer is computed in the frequency form instead
    (`_frequency_taps`, T x T output cells per tile, in groups of tiles whose
    input windows fit in `group_bytes` per video); with None, in the
    frequency form where `MapBand.frequency_tile` finds it multiplies at
    most half of what the taps do (the paper config: yes, the demo's: no).
    The sums are the same up to float rounding.
    """
    _WRITTEN_OUT.append((group_bytes, block_bytes, frequency_tile))
    try:
        yield
    finally:
        _WRITTEN_OUT.pop()


def _written_out_taps(features, kernel, forward_index, gather_first):
    """The conv of `band_layer` inside `taps_written_out`: grouped taps where
    a group fits its budget, else tap by tap in row blocks.

    features: [B, n_in + 1, C]; kernel: [K * K, C, H]; forward_index: int32
    numpy [K * K, n_out + 1]. Returns [B, n_out + 1, H].
    """
    group_bytes, block_bytes, _ = _WRITTEN_OUT[-1]
    taps, rows = forward_index.shape
    row_bytes = features.shape[-1] * 4  # one gathered float32 row
    group = min(taps, group_bytes // (rows * row_bytes))
    if group > 1:
        return _grouped_taps(features, kernel, forward_index, group)
    block_rows = max(1, block_bytes // row_bytes) if block_bytes else rows
    return _taps_in_row_blocks(
        features, kernel, forward_index, gather_first, block_rows
    )


def _grouped_taps(features, kernel, forward_index, group):
    """Sum over taps of gather then multiply, `group` taps per product.

    features: [B, n_in + 1, C]; kernel: [K * K, C, H]; forward_index: int32
    numpy [K * K, n_out + 1]. Returns [B, n_out + 1, H].
    """
    taps, channels = kernel.shape[0], kernel.shape[1]
    total = None
    for begin in range(0, taps, group):
        end = min(begin + group, taps)
        rows = np.ascontiguousarray(forward_index[begin:end].T)  # [n_out + 1, G]
        gathered = _rows(features, rows)  # [B, n_out + 1, G, C]
        stacked = (end - begin) * channels
        term = _times(
            ops.reshape(gathered, (-1, rows.shape[0], stacked)),
            ops.reshape(kernel[begin:end], (stacked, kernel.shape[-1])),
        )
        total = term if total is None else total + term
    return total


def _taps_in_row_blocks(features, kernel, forward_index, gather_first, block_rows):
    """Sum over taps, one tap at a time, output rows in blocks of `block_rows`.

    A block's gathers, products and sums stay small enough for the CPU's
    caches: onnxruntime's [n, 512] x [512, 512] products ran 1.18 (one
    thread) to 1.23 (two) times as fast at n 1,024 as at n 27,064
    (`bench/gemm_ceiling.py`, docs/performance.md). Gather first: a block reads
    its rows of the tap's input. Multiply first, where the block is the
    whole layer: the whole input times the tap's kernel slice, then the
    block's rows of it; in a smaller block: only the input rows the block
    reads through the tap (and the zero row), times the kernel slice, then
    placed, so that each input row is multiplied about once per tap in all.

    features: [B, n_in + 1, C], last row zero; kernel: [K * K, C, H];
    forward_index: int32 numpy [K * K, n_out + 1]; returns [B, n_out + 1, H].
    """
    zero_row = features.shape[1] - 1
    taps, rows = forward_index.shape
    # Sliced once: a slice per block and tap would be one more constant of
    # C x H each once the converter folds them.
    tap_kernels = [kernel[tap] for tap in range(taps)]
    blocks = []
    for begin in range(0, rows, block_rows):
        block = forward_index[:, begin : begin + block_rows]
        total = None
        for tap, tap_kernel in enumerate(tap_kernels):
            if gather_first:
                term = _times(_rows(features, block[tap]), tap_kernel)
            elif block.shape[1] == rows:
                term = _rows(_times(features, tap_kernel), block[tap])
            else:
                # The rows read, ascending, then the zero row.
                read = np.append(
                    np.unique(block[tap][block[tap] != zero_row]), zero_row
                )
                term = _rows(
                    _times(_rows(features, read), tap_kernel),
                    np.searchsorted(read, block[tap]).astype(np.int32),
                )
            total = term if total is None else total + term
        blocks.append(total)
    return blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, axis=1)


def frequency_transforms(tile, kernel_size):
    """The real matrices of the frequency form's 2-D discrete Fourier
    transforms, P = tile + kernel_size - 1, F = P (P // 2 + 1) frequencies
    (the real input's half spectrum), computed in float64, returned float32.

    Returns (forward [2 F, P * P]: the real then imaginary parts of the
    spectrum of a P x P input, row-major; kernel [2 F, K * K]: the same of a
    K x K kernel placed in the corner; inverse [tile * tile, 2 F]: the top
    left tile x tile cells of the real inverse transform). With X, W the
    spectra of an input window and a kernel, inverse @ (X * conj(W)) is
    the window's KxK cross-correlation at its tile x tile inner cells,
    exactly what the band conv's taps sum there (no wrap-around reaches
    them).
    """
    side = tile + kernel_size - 1
    rows = np.arange(side)[:, None, None, None]
    cols = np.arange(side // 2 + 1)[None, :, None, None]

    def spectrum(size):
        cells = np.arange(size)
        angle = (2 * np.pi / side) * (
            rows * cells[None, None, :, None] + cols * cells[None, None, None, :]
        )
        angle = angle.reshape(-1, size * size)
        return np.concatenate([np.cos(angle), -np.sin(angle)])

    frequencies = side * (side // 2 + 1)
    units = np.eye(2 * frequencies)
    half_spectra = (units[:, :frequencies] + 1j * units[:, frequencies:]).reshape(
        2 * frequencies, side, side // 2 + 1
    )
    inverse = np.fft.irfft2(half_spectra, s=(side, side))[:, :tile, :tile]
    return (
        spectrum(side).astype(np.float32),
        spectrum(kernel_size).astype(np.float32),
        inverse.reshape(2 * frequencies, tile * tile).T.astype(np.float32),
    )


def _frequency_taps(features, kernel, input_index, output_index, group_bytes=0):
    """The conv of `band_layer` in the frequency form: each tile of T x T
    output cells is the inverse transform of its P x P input window's
    spectrum times the kernel's (conjugated), P = T + K - 1; the channel
    mixing is one [2 tiles, C] x [C, H] product per frequency for the real
    and one for the imaginary part of the kernel's spectrum. At the paper
    config, with the transforms and the kernel spectra, it multiplies 0.19
    of what the taps do (`MapBand.frequency_multiply_adds`). The tiles go in
    groups whose input windows take at most `group_bytes` per video
    (float32; all in one group if 0), so that one group's temporaries, about
    six times its windows' size, are alive at a time.

    features: [B, n_in + 1, C], last row zero; kernel: [K * K, C, H];
    input_index int32 numpy [P * P, tiles], output_index int32 numpy
    [n_out + 1] (`MapBand.frequency_tiles`). Returns [B, n_out + 1, H] (the
    zero row not zero: the mask step zeroes it).
    """
    form = _FrequencyForm(kernel, input_index, group_bytes)
    real_kernel, imaginary_kernel = form.kernel_spectra(kernel, features)
    outputs = []
    for begin, size in form.groups:
        spectra = form.window_spectra(_after(features, *outputs[-1:]), begin, size)
        by_real = _times(spectra, real_kernel)
        by_imaginary = _times(spectra, imaginary_kernel)
        # (a + ib)(c - id) = (ac + bd) + i(bc - ad)
        products = ops.concatenate(
            [
                by_real[:, :, :size] + by_imaginary[:, :, size:],
                by_real[:, :, size:] - by_imaginary[:, :, :size],
            ],
            axis=1,
        )
        cells = _times(
            form.inverse,
            ops.reshape(products, (-1, 2 * form.frequencies, size * form.hidden)),
        )
        outputs.append(ops.reshape(cells, (-1, form.tile_cells * size, form.hidden)))
    cells = outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=1)
    return _rows(cells, form.places(output_index))


def _frequency_gradients(
    features, kernel, conv_grad, input_index, output_index, group_bytes=0
):
    """The gradients of `_frequency_taps` at features and kernel given
    conv_grad [B, n_out + 1, H] (0 at the zero row), group by group: the
    group's window spectra computed again, then the transposes of its
    inverse transform, channel mixing and forward transform; the kernel
    spectra's gradients summed over the groups, then the kernel's. A
    gather's transpose is again a gather (`_transposed`). Returns
    ([B, n_in + 1, C], [K * K, C, H])."""
    form = _FrequencyForm(kernel, input_index, group_bytes)
    frequencies, channels, hidden = form.frequencies, form.channels, form.hidden
    # [F, H, C] each, computed per call of conv_grad: TensorFlow's executor
    # would compute them, of every layer at once, as soon as the kernels are
    # there.
    real_kernel, imaginary_kernel = form.kernel_spectra(
        ops.transpose(kernel, (0, 2, 1)), conv_grad
    )
    # The output row of each tile cell, the zero row (gradient 0) for cells
    # off the band.
    (cell_rows,) = _transposed(
        form.places(output_index[:-1]),
        form.tiles * form.tile_cells,
    )
    kernel_spectra_grads = [0.0, 0.0]
    features_grad = None
    zero_row = features.shape[1] - 1
    for begin, size in form.groups:
        # After the last group's results (the first group after conv_grad).
        previous = [conv_grad]
        if features_grad is not None:
            previous = [features_grad, *kernel_spectra_grads]
        features_now, conv_grad_now = (
            _after(values, *previous) for values in (features, conv_grad)
        )
        group_cells = slice(begin * form.tile_cells, (begin + size) * form.tile_cells)
        products_grad = ops.reshape(
            _times(
                ops.transpose(form.inverse),
                ops.reshape(
                    _rows(conv_grad_now, cell_rows[group_cells]),
                    (-1, form.tile_cells, size * hidden),
                ),
            ),
            (-1, 2, frequencies, size, hidden),
        )
        real, imaginary = products_grad[:, 0], products_grad[:, 1]
        # [B, F, 2 size, H] each, rows as the window spectra's: the gradient
        # through the kernel spectrum's real and its imaginary part.
        through_real = ops.concatenate([real, imaginary], axis=2)
        through_imaginary = ops.concatenate([-imaginary, real], axis=2)
        spectra = form.window_spectra(features_now, begin, size)
        for index, grad in enumerate((through_real, through_imaginary)):
            kernel_spectra_grads[index] += ops.einsum("bfrc,bfrh->fch", spectra, grad)
        spectra_grad = _times(through_real, real_kernel) + _times(
            through_imaginary, imaginary_kernel
        )
        # Back to the forward transform's layout: [B, 2 F, size C].
        spectra_grad = ops.reshape(
            ops.transpose(
                ops.reshape(spectra_grad, (-1, frequencies, 2, size, channels)),
                (0, 2, 1, 3, 4),
            ),
            (-1, 2 * frequencies, size * channels),
        )
        window_grad = _with_zero_row(
            ops.reshape(
                _times(ops.transpose(form.forward), spectra_grad),
                (-1, form.window_cells * size, channels),
            )
        )
        # Summed into the band rows the group reads (not kept for all groups:
        # at a batch of 32 they would take 3 times the band's size per
        # layer), then spread into all band rows.
        read = input_index[:, begin : begin + size].reshape(-1)
        rows = np.unique(read[read != zero_row])
        local = np.where(read == zero_row, rows.size, np.searchsorted(rows, read))
        term = _with_zero_row(
            _gathered_sum(window_grad, _transposed(local, rows.size, skip=rows.size))
        )
        spread = np.full(zero_row + 1, rows.size, np.int32)
        spread[rows] = np.arange(rows.size)
        term = _rows(term, spread)
        features_grad = term if features_grad is None else features_grad + term
    # The kernel transform's rows are the real parts', then the imaginary's.
    kernel_grad = ops.matmul(
        ops.transpose(form.kernel_transform),
        ops.reshape(
            ops.concatenate(kernel_spectra_grads, axis=0),
            (2 * frequencies, channels * hidden),
        ),
    )
    return features_grad, ops.reshape(kernel_grad, kernel.shape)


class _FrequencyForm:
    """What `_frequency_taps` and `_frequency_gradients` share: the sizes, the
    transforms (`frequency_transforms`), the groups of tiles, the kernel's
    and the windows' spectra, and where a tile's cell lies in the groups'
    outputs.

    kernel: [K * K, C, H]; input_index: int32 numpy [P * P, tiles];
    group_bytes: the budget of a group's windows per video (float32; all
    tiles in one group if 0).
    """

    def __init__(self, kernel, input_index, group_bytes):
        self.window_cells, self.tiles = input_index.shape
        taps, self.channels, self.hidden = kernel.shape
        kernel_size = math.isqrt(taps)
        self.tile_cells = (math.isqrt(self.window_cells) - kernel_size + 1) ** 2
        self.forward, self.kernel_transform, self.inverse = (
            ops.convert_to_tensor(matrix, kernel.dtype)
            for matrix in frequency_transforms(math.isqrt(self.tile_cells), kernel_size)
        )
        self.frequencies = self.forward.shape[0] // 2
        self.input_index = input_index
        group = self.tiles
        if group_bytes:
            window_bytes = self.window_cells * self.channels * 4
            group = max(1, min(self.tiles, group_bytes // window_bytes))
        self.group = group
        self.groups = [
            (begin, min(group, self.tiles - begin))
            for begin in range(0, self.tiles, group)
        ]

    def kernel_spectra(self, kernel, values):
        """[F, C_in, C_out] each: the real and imaginary parts of the
        spectrum of kernel [K * K, C_in, C_out] (computed per call of
        `values`, `_per_call`; the kernel reshaped once: the converter
        stores each reshape's result)."""
        kernel_by_tap = ops.reshape(kernel, (kernel.shape[0], -1))
        frequencies = self.frequencies
        return [
            ops.reshape(
                _times(_per_call(part, values), kernel_by_tap),
                (frequencies, *kernel.shape[1:]),
            )
            for part in (
                self.kernel_transform[:frequencies],
                self.kernel_transform[frequencies:],
            )
        ]

    def window_spectra(self, features, begin, size):
        """[B, F, 2 size, C]: the spectra of the windows of tiles begin ..
        begin + size - 1, the real parts' rows, then the imaginary parts'."""
        windows = ops.reshape(
            _rows(features, self.input_index[:, begin : begin + size]),
            (-1, self.window_cells, size * self.channels),
        )
        spectra = ops.reshape(
            _times(self.forward, windows),
            (-1, 2, self.frequencies, size, self.channels),
        )
        return ops.reshape(
            ops.transpose(spectra, (0, 2, 1, 3, 4)),
            (-1, self.frequencies, 2 * size, self.channels),
        )

    def places(self, index):
        """int32 numpy: for index = cell * tiles + tile (any shape), the place
        of that cell of that tile in the groups' outputs, concatenated: a
        group of `size` tiles is laid out [tile cells, size], row-major."""
        within, place = np.divmod(index, self.tiles)
        first = place - place % self.group
        size = np.minimum(self.group, self.tiles - first)
        offset = first * self.tile_cells + within * size + place % self.group
        return offset.astype(np.int32)


def _gathered_sum(values, table):
    """sum over m of values[:, table[m]]: [B, n, C], int numpy [M, rows] ->
    [B, rows, C]."""
    total = None
    for index in table:
        term = _rows(values, index)
        total = term if total is None else total + term
    return total


def _transposed(index, rows, skip=None):
    """The transpose of a gather: for index[p] the row read at place p, int32
    numpy [M, rows] whose column r lists the places p with index[p] == r (in
    order; M the most any row has), filled with len(index) (a zero row
    placed after the gathered ones); places reading row `skip` are left
    out."""
    index = np.asarray(index).reshape(-1)
    places = np.arange(index.size)
    if skip is not None:
        places = places[index != skip]
    order = places[np.argsort(index[places], kind="stable")]
    counts = np.bincount(index[order], minlength=rows)
    rank = np.arange(order.size) - np.repeat(np.cumsum(counts) - counts, counts)
    table = np.full((max(1, counts.max(initial=0)), rows), index.size, np.int32)
    table[rank, index[order]] = order
    return table


def _after(values, *previous):
    """`values`, on TensorFlow read only once the tensors `previous` are
    computed: its graph executor would otherwise start every group of tiles
    at once, all their temporaries alive together. XLA schedules its
    programs itself (on JAX an optimization barrier here left XLA's count of
    the training step's memory as it was)."""
    if not previous or keras.backend.backend() != "tensorflow":
        return values
    import tensorflow as tf

    with tf.control_dependencies(previous):
        return tf.identity(values)


def _per_call(constant, values):
    """`constant` times 1 computed from the batch size of `values`: the same
    numbers, but the converter cannot fold what is made from it into the
    file. The frequency form's kernel spectra are 2 F / K^2 times the size of
    the kernel (1.6 GB in all at the paper config, against 0.38 GB for the
    whole model), so each call computes them from the kernel instead (a
    product of 2 F x K^2 x C H multiply-adds per layer, batch-independent)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        batch = tf.shape(values)[0]
    else:
        batch = ops.shape(values)[0]
    return constant * ops.cast(ops.greater(batch, 0), constant.dtype)


def _rows(values, index):
    """values[:, index]: [B, n, C] -> [B, *index.shape, C], index a numpy
    array of non-negative ints. On TensorFlow a plain gather: keras.ops.take
    would add six ops per gather to handle negative indices, which the export
    traces and folds again for each of its thousands of gathers."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.gather(values, index, axis=1)
    return ops.take(values, index, axis=1)


def _times(values, weights):
    """[B, n, C] x [C, H] -> [B, n, H] (or any matmul that broadcasts). On
    TensorFlow one plain matmul, which
    the converter writes as one ONNX MatMul that keeps the input's batch
    dimension in the graph's shapes (onnxruntime runs it as one product of
    B n rows). Reshapes to [B * n, C] and back took two more nodes per
    product (14,000 at the paper config in blocks of rows, whose conversion
    took 277 s with them, 177 s without), and gave each product a batch
    dimension of its own, so that onnxruntime's buffer-reuse planner could
    not share their buffers (one layer in blocks at H 64 loaded in 24 s with
    them, 2.8 s without, with onnxruntime's default options)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.linalg.matmul(values, weights)
    return ops.matmul(values, weights)


def _one_tap_at_a_time(lower, upper, body, initial):
    """`ops.fori_loop`, but on TensorFlow one iteration at a time.

    TensorFlow's while loop starts up to 10 iterations at once by default, so
    10 taps' gathers and products would be alive together; ops.scan runs one
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
