"""The band conv's frequency form (the ONNX export's at the paper config):
its tile tables read exactly the taps' cells, it sums the same as the taps
on any tile size, group of tiles and batch, the export picks it by multiply-adds, and the
exported graph matches Keras on typical and near-tied clips."""

import itertools

import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf
from test_export import TINY_MODEL, random_clips
from test_unroll import _near_tie_clips
from tiny_configs import tiny_model

from export import onnx_export
from tal_keras.lattice import Lattice
from tal_keras.layers.band_map_conv import (
    band_layer,
    frequency_transforms,
    taps_written_out,
)
from tal_keras.map_band import MapBand
from tal_keras.models import (
    build_classifier_network,
    build_inference_model,
    build_proposal_network,
)

# (num_clips, scale_layers, kernel_size, num_conv_layers, map_mode)
CASES = [
    (16, (4, 2, 2), 3, 2, "s2dtan"),
    (16, (16,), 9, 3, "2dtan"),  # kernel wider than half the map
    (32, (8, 4, 4), 5, 4, "s2dtan"),
    (64, (16, 8, 8), 9, 4, "s2dtan"),
]
TILES = (1, 2, 5, 40)  # 40: one tile larger than any map


@pytest.mark.parametrize("case", CASES)
def test_each_tile_window_holds_exactly_the_cells_the_taps_read(case):
    """For every output cell and tap (a, b), the cell's tile window at
    (row in tile + a, col in tile + b) is the input row the tap reads
    (`MapBand.forward_index`, the zero row included); each cell has a place
    of its own in the tiles' outputs."""
    num_clips, scales, kernel_size, num_layers, map_mode = case
    band = MapBand(Lattice(num_clips, scales), kernel_size, num_layers, map_mode)
    for layer in range(1, num_layers + 1):
        forward = band.forward_index[layer - 1][:, :-1]  # [K * K, n_out]
        for tile in TILES:
            input_index, output_index = band.frequency_tiles(layer, tile)
            side = tile + kernel_size - 1
            tiles = input_index.shape[1]
            assert input_index.shape[0] == side * side
            places = output_index[:-1]
            assert len(np.unique(places)) == len(places) == band.band_sizes[layer]
            assert places.max() < tile * tile * tiles
            within, tile_of_cell = np.divmod(places, tiles)
            row, col = np.divmod(within, tile)
            for tap in range(kernel_size**2):
                a, b = divmod(tap, kernel_size)
                np.testing.assert_array_equal(
                    input_index[(row + a) * side + col + b, tile_of_cell],
                    forward[tap],
                )


def test_the_transforms_invert_on_the_inner_cells():
    """inverse @ forward is the identity on a window's inner tile cells."""
    tile, kernel_size = 4, 3
    forward, kernel, inverse = frequency_transforms(tile, kernel_size)
    side = tile + kernel_size - 1
    frequencies = side * (side // 2 + 1)
    assert forward.shape == (2 * frequencies, side * side)
    assert kernel.shape == (2 * frequencies, kernel_size**2)
    assert inverse.shape == (tile * tile, 2 * frequencies)
    window = np.random.default_rng(0).normal(size=(side * side, 3))
    inner = window.reshape(side, side, 3)[:tile, :tile].reshape(tile * tile, 3)
    np.testing.assert_allclose(inverse @ (forward @ window), inner, atol=1e-5)


def _tap_sum(features, kernel, forward_index):
    """float64 sum over taps of gather then multiply."""
    return sum(
        features[:, forward_index[tap]].astype(np.float64) @ kernel[tap]
        for tap in range(kernel.shape[0])
    )


@pytest.mark.parametrize("case", CASES)
def test_the_frequency_form_sums_what_the_taps_sum(case):
    num_clips, scales, kernel_size, num_layers, map_mode = case
    band = MapBand(Lattice(num_clips, scales), kernel_size, num_layers, map_mode)
    rng = np.random.default_rng(1)
    channels, hidden = 5, 3
    for layer in range(1, num_layers + 1):
        index = layer - 1
        features = rng.normal(size=(2, band.band_sizes[index] + 1, channels))
        features[:, -1] = 0  # the zero row
        features = features.astype(np.float32)
        kernel = rng.normal(size=(kernel_size**2, channels, hidden)).astype(np.float32)
        bias = np.float32(0.1) * np.arange(hidden, dtype=np.float32)
        conv = _tap_sum(features, kernel, band.forward_index[index])
        expected = np.maximum(conv + bias, 0) * band.mask_weights[index][:, None]
        for tile, group_bytes in itertools.product(TILES, (0, 600)):
            # 600 bytes: groups of 1 to 7 tiles' windows (5 channels)
            with taps_written_out(group_bytes, 0, tile):
                found = band_layer(
                    tf.constant(features),
                    tf.constant(kernel),
                    tf.constant(bias),
                    tf.constant(band.mask_weights[index]),
                    band.forward_index[index],
                    band.backward_index[index],
                    band.gather_first[index],
                    band.frequency_tiles(layer, tile),
                ).numpy()
            scale = max(1.0, float(np.abs(expected).max()))
            np.testing.assert_allclose(found, expected, rtol=0, atol=1e-5 * scale)
            np.testing.assert_array_equal(found[:, -1], 0.0)  # zero row kept


def _layer_and_gradients(band, layer, features, kernel, bias, upstream, tile):
    """band_layer's output and gradients at features (band rows, not the zero
    row), kernel and bias, in the frequency form with tiles of `tile` (0:
    the taps)."""
    index = layer - 1
    variables = [tf.Variable(value) for value in (features, kernel, bias)]
    with tf.GradientTape() as tape:
        output = band_layer(
            *variables,
            tf.constant(band.mask_weights[index]),
            band.forward_index[index],
            band.backward_index[index],
            band.gather_first[index],
            band.frequency_tiles(layer, tile) if tile else None,
        )
        loss = tf.reduce_sum(output * upstream)
    gradients = [grad.numpy() for grad in tape.gradient(loss, variables)]
    gradients[0] = gradients[0][:, :-1]
    return [output.numpy(), *gradients]


@pytest.mark.parametrize("case", CASES)
def test_the_frequency_form_s_gradients_are_the_taps(case, monkeypatch):
    """The frequency form's written-out gradient (`_frequency_gradients`) on
    any tile size and group of tiles, against the taps' (whose gradient
    tests/test_band_conv.py checks against whole maps)."""
    from tal_keras.layers import band_map_conv

    num_clips, scales, kernel_size, num_layers, map_mode = case
    band = MapBand(Lattice(num_clips, scales), kernel_size, num_layers, map_mode)
    rng = np.random.default_rng(3)
    channels, hidden = 5, 3
    for layer in range(1, num_layers + 1):
        features = rng.normal(size=(2, band.band_sizes[layer - 1] + 1, channels))
        features[:, -1] = 0  # the zero row
        arrays = [
            features.astype(np.float32),
            rng.normal(size=(kernel_size**2, channels, hidden)).astype(np.float32),
            rng.uniform(-0.5, 0.5, size=hidden).astype(np.float32),
            rng.normal(size=(2, band.band_sizes[layer] + 1, hidden)).astype(np.float32),
        ]
        expected = _layer_and_gradients(band, layer, *arrays, tile=0)
        assert all(np.abs(value).max() > 0 for value in expected)
        for tile, group in ((1, 0), (2, 7), (5, 3), (40, 0)):  # tiles per group
            window_bytes = (tile + kernel_size - 1) ** 2 * channels * 4
            monkeypatch.setattr(
                band_map_conv, "FREQUENCY_GROUP_BYTES", group * window_bytes
            )
            found = _layer_and_gradients(band, layer, *arrays, tile=tile)
            for value, expected_value in zip(found, expected):
                scale = max(1.0, float(np.abs(expected_value).max()))
                np.testing.assert_allclose(
                    value, expected_value, rtol=0, atol=1e-5 * scale
                )


def test_transposed_lists_each_row_s_places():
    from tal_keras.layers.band_map_conv import _transposed

    index = np.array([2, 0, 2, 3, 2, 0])  # row 1 read nowhere
    table = _transposed(index, 4)
    np.testing.assert_array_equal(table, [[1, 6, 0, 3], [5, 6, 2, 6], [6, 6, 4, 6]])
    np.testing.assert_array_equal(
        _transposed(index, 4, skip=2), [[1, 6, 6, 3], [5, 6, 6, 6]]
    )
    values = np.arange(7.0)  # places 0..5, then the zero row (0)
    values[-1] = 0
    np.testing.assert_array_equal(values[table].sum(0), [1 + 5, 0, 0 + 2 + 4, 3])


def test_the_export_chooses_the_frequency_form_by_multiply_adds():
    paper = MapBand(Lattice(256, (64, 32, 32)), 9, 4)
    tile = paper.frequency_tile(512, 512)
    assert tile == 11
    ratio = paper.frequency_multiply_adds(512, 512, tile) / paper.multiply_adds(
        512, 512
    )
    assert 0.15 < ratio < 0.2
    # Each other tile multiplies more.
    for other in (tile - 1, tile + 1, 4, 24):
        assert paper.frequency_multiply_adds(
            512, 512, other
        ) > paper.frequency_multiply_adds(512, 512, tile)
    # The demo's config and the tests' tiny one: the taps.
    assert MapBand(Lattice(64, (16, 8, 8)), 5, 2).frequency_tile(64, 64) == 0
    tiny = MapBand(
        TINY_MODEL.lattice, TINY_MODEL.kernel_size, TINY_MODEL.num_conv_layers
    )
    assert tiny.frequency_tile(TINY_MODEL.hidden_size, TINY_MODEL.hidden_size) == 0


def _session(model):
    return ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )


def test_the_export_in_the_frequency_form_matches_keras(monkeypatch):
    """Forced (tile 3) and chosen (`MapBand.frequency_tile` made to pick 2):
    the graph holds that tile's transform (the taps' does not), outputs
    within 1e-5 of Keras on random and near-tied clips, a batch equal to its
    videos one by one."""
    model = build_inference_model(
        build_proposal_network(TINY_MODEL), build_classifier_network(TINY_MODEL)
    )
    forced = onnx_export.convert(
        model, TINY_MODEL, onnx_export.DEFAULT_OPSET, frequency_tile=3
    )
    monkeypatch.setattr(MapBand, "frequency_tile", lambda self, c, h: 2)
    chosen = onnx_export.convert(model, TINY_MODEL, onnx_export.DEFAULT_OPSET)
    monkeypatch.undo()
    taps = onnx_export.convert(model, TINY_MODEL, onnx_export.DEFAULT_OPSET)

    def shapes(graph):
        return {tuple(init.dims) for init in graph.graph.initializer}

    def forward_transform(tile):  # [2 F, P * P], P = tile + K - 1
        side = tile + TINY_MODEL.kernel_size - 1
        return (2 * side * (side // 2 + 1), side * side)

    assert forward_transform(3) in shapes(forced)
    assert forward_transform(2) in shapes(chosen)
    assert not {forward_transform(2), forward_transform(3)} & shapes(taps)
    for graph in (forced, chosen):
        session = _session(graph)
        for clips in (random_clips(3), _near_tie_clips(4)):
            found = onnx_export.onnx_scores(session, clips)
            expected = onnx_export.keras_scores(model, clips, len(clips))
            one_by_one = [
                onnx_export.onnx_scores(session, clips[i : i + 1])
                for i in range(len(clips))
            ]
            for name in expected:
                np.testing.assert_allclose(found[name], expected[name], atol=1e-5)
                np.testing.assert_allclose(
                    np.concatenate([single[name] for single in one_by_one]),
                    found[name],
                    atol=1e-6,
                )


def test_the_frequency_form_stores_each_weight_once():
    """The kernel is reshaped once for both spectra: the converter stores
    each reshape of a constant, and the export merges only small repeated
    constants (here each layer's kernel holds 9 x 24 x 24 = 5,184 values)."""
    config = tiny_model(hidden_size=24)
    model = build_inference_model(
        build_proposal_network(config), build_classifier_network(config)
    )
    graph = onnx_export.convert(
        model, config, onnx_export.DEFAULT_OPSET, frequency_tile=3
    )
    stored = [init.raw_data for init in graph.graph.initializer]
    kernels = [data for data in stored if len(data) == 4 * 9 * 24 * 24]
    assert len(kernels) == config.num_conv_layers
    large = [data for data in stored if len(data) > 4 * 4096]
    assert len(set(large)) == len(large)


@pytest.mark.parametrize("case", CASES[:3])
def test_conv_implementation_frequency_matches_whole_maps_with_gradients(case):
    """`BandMapConv(frequency=True)` (`--conv_implementation=frequency`) in
    Keras, outputs and the gradients of all weights and inputs, against the
    whole-map reference."""
    from test_band_conv import assert_close, outputs_and_gradients, random_array

    from tal_keras.layers import BandMapConv, MaskedMapConv

    num_clips, scales, kernel_size, num_layers, map_mode = case
    arguments = {
        "hidden_size": 4,
        "kernel_size": kernel_size,
        "num_conv_layers": num_layers,
        "map_mode": map_mode,
    }
    whole = MaskedMapConv(num_clips, scales, **arguments)
    frequency = BandMapConv(num_clips, scales, frequency=True, **arguments)
    shape = (2, Lattice(num_clips, scales).num_proposals, 3)
    for layer in (whole, frequency):
        layer.build(shape)
    rng = np.random.default_rng(1)
    weights = [
        rng.uniform(0.0, 0.2, w.shape) if w.ndim == 1 else rng.normal(0, 0.3, w.shape)
        for w in whole.get_weights()
    ]
    for layer in (whole, frequency):
        layer.set_weights([w.astype("float32") for w in weights])
    assert BandMapConv.from_config(frequency.get_config()).frequency
    features = random_array(*shape)
    upstream = random_array(shape[0], shape[1], 4, seed=2)
    expected, expected_gradients = outputs_and_gradients(whole, features, upstream)
    found, found_gradients = outputs_and_gradients(frequency, features, upstream)
    assert np.abs(expected).max() > 0
    assert_close(found, expected)
    for gradient, expected_gradient in zip(found_gradients, expected_gradients):
        assert np.abs(expected_gradient).max() > 0
        assert_close(gradient, expected_gradient)


def test_conv_implementation_frequency_on_jax():
    from python_process import worst_difference_on
    from test_band_conv import JAX_SCRIPT

    script = JAX_SCRIPT.replace(
        "cls(16, (4, 2, 2), hidden_size=4, kernel_size=3, num_conv_layers=3)",
        "cls(16, (4, 2, 2), hidden_size=4, kernel_size=3, num_conv_layers=3, "
        "**({'frequency': True} if cls is BandMapConv else {}))",
    )
    assert "frequency" in script
    assert worst_difference_on("jax", script, timeout=300) < 1e-5


@pytest.mark.parametrize(
    "num_clips, scales, hidden, takes_frequency",
    [(256, (64, 32, 32), 64, True), (64, (16, 8, 8), 64, False)],
)
def test_the_default_band_conv_takes_the_frequency_form_where_it_pays(
    num_clips, scales, hidden, takes_frequency
):
    """`BandMapConv()` (`--conv_implementation=band`): at the paper's lattice
    (K 9, L 4, H 64) `MapBand.frequency_tile` picks the frequency form and the
    layer computes exactly what frequency=True does, outputs and gradients;
    at the demo's lattice the taps, exactly frequency=False. Either way the
    taps' outputs to float rounding."""
    from test_band_conv import assert_close, outputs_and_gradients, random_array

    from tal_keras.layers import BandMapConv

    lattice = Lattice(num_clips, scales)
    band = MapBand(lattice, 9, 4)
    assert bool(band.frequency_tile(hidden, hidden)) is takes_frequency
    layers = [
        BandMapConv(num_clips, scales, hidden_size=hidden, frequency=frequency)
        for frequency in (None, True, False)
    ]
    shape = (2, lattice.num_proposals, hidden)
    rng = np.random.default_rng(4)
    for layer in layers:
        layer.build(shape)
    weights = [
        rng.uniform(0.0, 0.1, w.shape) if w.ndim == 1 else rng.normal(0, 0.02, w.shape)
        for w in layers[0].get_weights()
    ]
    for layer in layers:
        layer.set_weights([w.astype("float32") for w in weights])
    features = random_array(*shape)
    upstream = random_array(*shape, seed=2)
    default, frequency = (
        outputs_and_gradients(layer, features, upstream) for layer in layers[:2]
    )
    if takes_frequency:
        # The taps' gradients are tested against the frequency form's above;
        # eagerly at this lattice they would take about 11 GiB.
        same, taps = frequency, (layers[2](features).numpy(), [])
    else:
        same = taps = outputs_and_gradients(layers[2], features, upstream)
    for found, expected in zip([default[0], *default[1]], [same[0], *same[1]]):
        np.testing.assert_array_equal(found, expected)
    assert np.abs(taps[0]).max() > 0
    for found, expected in zip([default[0], *default[1]], [taps[0], *taps[1]]):
        assert_close(found, expected, tolerance=1e-4)


def _default_and_taps(dtype="float32"):
    """(`BandMapConv()`, `BandMapConv(frequency=False)`) at the paper's
    lattice, H 64, under the `dtype` policy, with the same weights, and
    clip features [1, P, 64] for them."""
    from test_band_conv import random_array

    from tal_keras.layers import BandMapConv

    lattice = Lattice(256, (64, 32, 32))
    layers = [
        BandMapConv(256, (64, 32, 32), hidden_size=64, frequency=frequency, dtype=dtype)
        for frequency in (None, False)
    ]
    shape = (1, lattice.num_proposals, 64)
    for layer in layers:
        layer.build(shape)
    layers[1].set_weights(layers[0].get_weights())
    return layers, random_array(*shape)


def test_the_default_band_conv_takes_the_taps_on_gpus(monkeypatch):
    """Where Keras lists a GPU, `BandMapConv()` at the paper's lattice runs
    the taps (frequency=False's graph, the same numbers bit for bit)."""
    import keras

    layers, features = _default_and_taps()
    monkeypatch.setattr(keras.distribution, "list_devices", lambda: ["gpu:0"])
    found, taps = (layer(features).numpy() for layer in layers)
    np.testing.assert_array_equal(found, taps)
    monkeypatch.undo()
    assert np.abs(layers[0](features).numpy() - taps).max() > 0  # CPUs: frequency


def test_the_default_band_conv_takes_the_taps_in_mixed_precision():
    """Under a bfloat16 compute policy `BandMapConv()` at the paper's lattice
    runs the taps (frequency=False's numbers bit for bit), not transforms
    rounded to bfloat16."""
    layers, features = _default_and_taps("mixed_bfloat16")
    found, taps = (layer(features).numpy() for layer in layers)
    assert found.dtype == taps.dtype
    np.testing.assert_array_equal(found, taps)


def test_band_conv_refuses_an_unknown_form():
    from tal_keras.layers import BandMapConv

    with pytest.raises(ValueError, match="frequency must be None, True or False"):
        BandMapConv(16, (4, 2, 2), hidden_size=4, frequency="yes")
