"""BandMapConv against the whole-map reference MaskedMapConv: outputs and
gradients, the band tables against brute force, weights shared with the
reference, the JAX backend and the exported ONNX model."""

import dataclasses
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from python_process import worst_difference_on

from tal_keras.lattice import Lattice
from tal_keras.layers import BandMapConv, MaskedMapConv, SubMapNetwork
from tal_keras.layers.masked_map_conv import _map_tables, _mask_step_weights
from tal_keras.map_band import MapBand
from tal_keras.models import build_proposal_network

# (num_clips, scale_layers, kernel_size, num_conv_layers, map_mode): N 16 to
# 256, dense (N,) and sparse scale sets, K 1 to 9, L 1 to 4, both map modes.
CASES = [
    (16, (4, 2, 2), 3, 2, "s2dtan"),
    (16, (16,), 9, 3, "2dtan"),  # kernel wider than half the map
    (32, (8, 4, 4), 5, 4, "s2dtan"),
    (32, (8, 4, 4), 3, 1, "2dtan"),  # sparse lattice in one N x N map
    (32, (32,), 5, 2, "s2dtan"),
    (64, (64,), 1, 1, "2dtan"),  # Table 1, row 4
    (64, (64,), 9, 4, "2dtan"),  # Table 1, row 3
    (64, (16, 8, 8), 9, 4, "s2dtan"),
    (256, (64, 32, 32), 9, 4, "s2dtan"),  # the paper's geometry
    (256, (64, 32, 32), 5, 3, "2dtan"),
]


def random_array(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def twin_layers(num_clips, scale_layers, kernel_size, num_layers, map_mode, channels):
    """A MaskedMapConv and a BandMapConv with the same random weights."""
    lattice = Lattice(num_clips, scale_layers)
    shape = (2, lattice.num_proposals, channels)
    layers = [
        layer_class(
            num_clips,
            scale_layers,
            hidden_size=4,
            kernel_size=kernel_size,
            num_conv_layers=num_layers,
            map_mode=map_mode,
        )
        for layer_class in (MaskedMapConv, BandMapConv)
    ]
    for layer in layers:
        layer.build(shape)
    rng = np.random.default_rng(1)
    # A positive bias makes the mask step matter in every reached cell.
    weights = [
        rng.uniform(0.0, 0.2, w.shape) if w.ndim == 1 else rng.normal(0, 0.3, w.shape)
        for w in layers[0].get_weights()
    ]
    for layer in layers:
        layer.set_weights([w.astype("float32") for w in weights])
    return layers, shape


def outputs_and_gradients(layer, features, upstream):
    features = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(features)
        output = layer(features)
        loss = tf.reduce_sum(output * upstream)
    gradients = tape.gradient(loss, [features] + layer.trainable_weights)
    return output.numpy(), [gradient.numpy() for gradient in gradients]


def assert_close(actual, expected, tolerance=1e-5):
    """Max abs difference within `tolerance` times max(1, max |expected|)."""
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize(
    "num_clips, scale_layers, kernel_size, num_layers, map_mode", CASES
)
def test_band_matches_whole_maps_outputs_and_gradients(
    num_clips, scale_layers, kernel_size, num_layers, map_mode
):
    (whole, band), shape = twin_layers(
        num_clips, scale_layers, kernel_size, num_layers, map_mode, channels=3
    )
    features = random_array(*shape)
    upstream = random_array(shape[0], shape[1], 4, seed=2)
    whole_output, whole_gradients = outputs_and_gradients(whole, features, upstream)
    band_output, band_gradients = outputs_and_gradients(band, features, upstream)
    assert np.abs(whole_output).max() > 0  # the comparison is not vacuous
    assert_close(band_output, whole_output)
    assert len(band_gradients) == len(whole_gradients) == 1 + 2 * num_layers
    for band_gradient, whole_gradient in zip(band_gradients, whole_gradients):
        assert np.abs(whole_gradient).max() > 0
        assert_close(band_gradient, whole_gradient)


@pytest.mark.parametrize(
    "num_clips, scale_layers, kernel_size, num_layers, map_mode",
    [case for case in CASES if case[0] <= 64],
)
def test_band_tables_match_brute_force(
    num_clips, scale_layers, kernel_size, num_layers, map_mode
):
    lattice = Lattice(num_clips, scale_layers)
    band = MapBand(lattice, kernel_size, num_layers, map_mode)
    sizes, scatters, _ = _map_tables(lattice, map_mode)
    half = kernel_size // 2
    proposals = [
        np.asarray(s).reshape(n, n) < lattice.num_proposals
        for n, s in zip(sizes, scatters)
    ]
    reference_weights = [
        _mask_step_weights(valid, kernel_size, num_layers) for valid in proposals
    ]
    for layer in range(num_layers + 1):
        cells = band.band_cells[layer]
        assert len(cells) == band.band_sizes[layer]
        if layer in (0, num_layers):
            # Lattice order: cell p holds proposal p.
            for map_id, (size, scatter) in enumerate(zip(sizes, scatters)):
                in_map = cells[:, 0] == map_id
                places = cells[in_map, 1] * size + cells[in_map, 2]
                np.testing.assert_array_equal(
                    np.asarray(scatter)[places], np.flatnonzero(in_map)
                )
            continue
        reach = min(layer, num_layers - layer) * half
        for map_id, valid in enumerate(proposals):
            rows, cols = np.nonzero(valid)
            # Brute force: cells within `reach` (Chebyshev) of a proposal.
            size = valid.shape[0]
            grid_rows, grid_cols = np.mgrid[:size, :size]
            distance = np.min(
                np.maximum(
                    np.abs(grid_rows[..., None] - rows),
                    np.abs(grid_cols[..., None] - cols),
                ),
                axis=-1,
            )
            expected = distance <= reach
            actual = np.zeros_like(expected)
            in_map = cells[cells[:, 0] == map_id]
            actual[in_map[:, 1], in_map[:, 2]] = True
            np.testing.assert_array_equal(actual, expected)
    for layer in range(num_layers):
        cells = band.band_cells[layer + 1]
        expected = np.array(
            [reference_weights[m][layer][r, c] for m, r, c in cells], "float32"
        )
        np.testing.assert_array_equal(band.mask_weights[layer][:-1], expected)
        assert band.mask_weights[layer][-1] == 0 and (expected > 0).all()
        # Each tap reads the cell at its offset, or the zero row.
        forward = band.forward_index[layer]
        inputs = band.band_cells[layer]
        for tap in (0, kernel_size**2 // 2, kernel_size**2 - 1):
            offset = np.array(divmod(tap, kernel_size)) - half
            reads = forward[tap, :-1]
            hit = reads < len(inputs)
            np.testing.assert_array_equal(
                inputs[reads[hit], 1:], cells[hit, 1:] + offset
            )
            np.testing.assert_array_equal(inputs[reads[hit], 0], cells[hit, 0])
            assert (forward[:, -1] == len(inputs)).all()
            backward = band.backward_index[layer]
            read_by = backward[tap, :-1]
            back_hit = read_by < len(cells)
            np.testing.assert_array_equal(
                forward[tap, read_by[back_hit]], np.flatnonzero(back_hit)
            )
            assert back_hit.sum() == hit.sum()


def test_paper_config_band_sizes_and_cost():
    band = MapBand(Lattice(256, (64, 32, 32)), 9, 4)
    assert band.band_sizes == (17472, 22428, 27064, 22428, 17472)
    # Multiply then gather while the band grows, gather then multiply after.
    assert band.gather_first == (False, False, True, True)
    assert band.rows_multiplied == (17473, 22429, 22429, 17473)
    valid_cells = 4 * 17472
    assert sum(band.rows_multiplied) / valid_cells < 1.15


def test_band_is_the_default_and_loads_whole_map_weights(tmp_path):
    lattice = Lattice(16, (4, 2, 2))
    features = random_array(2, lattice.num_proposals, 3)
    models = {}
    for path in ("band", "whole"):
        options = {} if path == "band" else {"conv_implementation": "whole"}
        keras.utils.set_random_seed(int(path == "band"))  # different weights
        inputs = keras.Input(features.shape[1:])
        network = SubMapNetwork(
            16,
            (4, 2, 2),
            hidden_size=4,
            kernel_size=3,
            num_conv_layers=2,
            name="sub_maps",
            **options,
        )
        models[path] = keras.Model(inputs, network(inputs))
    assert isinstance(models["band"].layers[-1].map_conv, BandMapConv)
    assert [w.path for w in models["band"].weights] == [
        w.path for w in models["whole"].weights
    ]
    # A checkpoint of the whole-map model loads into the band model.
    models["whole"].save_weights(tmp_path / "whole.weights.h5")
    models["band"].load_weights(tmp_path / "whole.weights.h5")
    assert_close(models["band"](features), models["whole"](features))


def test_proposal_network_overlap_scores_and_training_step(small_config):
    """P_over within 1e-5 and one `train_on_batch` (a traced graph) alike."""
    config = dataclasses.replace(small_config, num_conv_layers=3)
    clip_features = random_array(4, config.num_clips, config.feature_dim)
    max_iou = np.random.default_rng(3).uniform(size=(4, config.lattice.num_proposals))
    models = {}
    for path in ("whole", "band"):
        keras.utils.set_random_seed(0)
        model = build_proposal_network(
            dataclasses.replace(config, conv_implementation=path)
        )
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
        models[path] = model
    initial = models["band"].get_weights()
    overlap = {
        path: model.predict_on_batch(clip_features) for path, model in models.items()
    }
    np.testing.assert_allclose(overlap["band"], overlap["whole"], rtol=0, atol=1e-5)
    losses = {
        path: model.train_on_batch(clip_features, max_iou)
        for path, model in models.items()
    }
    np.testing.assert_allclose(losses["band"], losses["whole"], rtol=1e-5)
    for band_weight, whole_weight, initial_weight in zip(
        models["band"].get_weights(), models["whole"].get_weights(), initial
    ):
        assert not np.array_equal(band_weight, initial_weight)  # it trained
        assert_close(band_weight, whole_weight)


def test_mixed_precision_runs_close_to_float32():
    lattice = Lattice(16, (4, 2, 2))
    features = random_array(2, lattice.num_proposals, 3)
    outputs = {}
    for dtype in ("float32", "mixed_float16"):
        keras.utils.set_random_seed(0)
        layer = BandMapConv(
            16, (4, 2, 2), hidden_size=4, kernel_size=3, num_conv_layers=2, dtype=dtype
        )
        outputs[dtype] = keras.ops.convert_to_numpy(layer(features)).astype("float32")
    # float16 keeps about 3 significant digits.
    assert_close(outputs["mixed_float16"], outputs["float32"], tolerance=5e-3)


@pytest.mark.slow
def test_onnx_export_matches_keras(small_config, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    config = dataclasses.replace(small_config, num_conv_layers=3, kernel_size=5)
    assert config.conv_implementation == "whole"  # the fixture's; band below
    keras.utils.set_random_seed(0)
    model = build_proposal_network(
        dataclasses.replace(config, conv_implementation="band")
    )
    clip_features = random_array(3, config.num_clips, config.feature_dim)
    expected = keras.ops.convert_to_numpy(model(clip_features))
    path = tmp_path / "proposal_network.onnx"
    model.export(str(path), format="onnx", verbose=False)
    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    (actual,) = session.run(None, {session.get_inputs()[0].name: clip_features})
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


JAX_SCRIPT = textwrap.dedent(
    """
    import jax
    import keras
    import numpy as np

    from tal_keras.layers import BandMapConv, MaskedMapConv

    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 72, 3)).astype("float32")
    upstream = rng.normal(size=(2, 72, 4)).astype("float32")
    layers = [
        cls(16, (4, 2, 2), hidden_size=4, kernel_size=3, num_conv_layers=3)
        for cls in (MaskedMapConv, BandMapConv)
    ]
    for layer in layers:
        layer.build(features.shape)
    weights = [
        w + 0.1 if w.ndim == 1 else w for w in layers[0].get_weights()
    ]
    for layer in layers:
        layer.set_weights(weights)

    def loss(variables, features, layer):
        output, _ = layer.stateless_call(variables, [], features)
        return (output * upstream).sum(), output

    results = []
    for layer in layers:
        variables = [v.value for v in layer.trainable_variables]
        grad = jax.jit(
            jax.grad(lambda v, x: loss(v, x, layer), argnums=(0, 1), has_aux=True)
        )
        (variable_grads, feature_grads), output = grad(variables, features)
        results.append([np.asarray(output), np.asarray(feature_grads)]
                       + [np.asarray(g) for g in variable_grads])
    worst = max(
        float(np.abs(b - w).max() / max(1.0, np.abs(w).max()))
        for b, w in zip(*results)
    )
    print(keras.backend.backend(), worst)
    """
)


@pytest.mark.slow
def test_jax_backend_band_matches_whole_maps():
    assert worst_difference_on("jax", JAX_SCRIPT, timeout=300) < 1e-5
