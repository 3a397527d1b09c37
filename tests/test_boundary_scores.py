"""The proposal network's optional boundary scores (--boundary_scores), a
departure from the report (docs/benchmarks.md), and an ONNX export of a
proposal network with every departure demo.flags carries."""

import dataclasses

import keras
import numpy as np
import onnxruntime as ort
from test_export import random_clips
from tiny_configs import EVERY_DEPARTURE, ONE_LAYER, tiny_model

from export import onnx_export
from tal_keras.flops import model_cost
from tal_keras.lattice import Lattice
from tal_keras.layers import BoundaryScores, OverlapHead
from tal_keras.models import (
    build_classifier_network,
    build_inference_model,
    build_proposal_network,
)


def test_adds_the_start_logit_of_the_first_clip_and_the_end_logit_of_the_last(
    tmp_path,
):
    lattice = Lattice(16, (4, 2, 2))
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((2, 16, 5)).astype("float32")
    layer = BoundaryScores(16, (4, 2, 2))
    output = keras.ops.convert_to_numpy(layer(clips))
    kernel, bias = layer.projection.get_weights()
    per_clip = clips @ kernel + bias
    expected = per_clip[:, lattice.starts, 0] + per_clip[:, lattice.ends, 1]
    assert output.shape == (2, lattice.num_proposals)
    np.testing.assert_allclose(output, expected, atol=1e-5)
    # A proposal's logit moves with its own first and last clip only.
    moved = clips.copy()
    moved[:, 3] += 1.0
    changed = keras.ops.convert_to_numpy(layer(moved)) != output
    touches = (lattice.starts == 3) | (lattice.ends == 3)
    np.testing.assert_array_equal(changed, np.broadcast_to(touches, changed.shape))
    model_input = keras.Input((16, 5))
    model = keras.Model(model_input, layer(model_input))
    model.save(tmp_path / "scores.keras")
    loaded = keras.saving.load_model(tmp_path / "scores.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(clips)), output)
    assert loaded.layers[-1].get_config()["scale_layers"] == [4, 2, 2]


def test_overlap_head_adds_the_logits_it_is_given():
    head = OverlapHead()
    rng = np.random.default_rng(1)
    features = rng.standard_normal((2, 7, 3)).astype("float32")
    extra = rng.standard_normal((2, 7)).astype("float32")
    plain = keras.ops.convert_to_numpy(head(features))
    both = keras.ops.convert_to_numpy(head([features, extra]))
    logit = np.log(plain / (1 - plain))
    np.testing.assert_allclose(both, 1 / (1 + np.exp(-(logit + extra))), atol=1e-5)


def test_proposal_network_uses_them_and_flops_count_them():
    config = tiny_model(**ONE_LAYER, boundary_scores=True)
    network = build_proposal_network(config)
    assert network.get_layer("boundary_scores") is not None
    assert network.count_params() == model_cost(config)["proposal_params"]
    plain = model_cost(dataclasses.replace(config, boundary_scores=False))
    assert (
        model_cost(config)["proposal_params"] - plain["proposal_params"]
        == 2 * config.hidden_size + 2
    )


def test_every_departure_exports_to_onnx_and_matches_keras():
    config = tiny_model(feature_dim=8, hidden_size=8, num_classes=4, **EVERY_DEPARTURE)
    keras.utils.set_random_seed(2)
    proposal = build_proposal_network(config)
    head = proposal.get_layer("overlap_scores")
    head.cell_biases.assign(
        np.linspace(-1, 1, config.lattice.num_proposals).astype("float32")
    )
    # The evidence MLP's output starts at zero; give it a say.
    evidence = proposal.get_layer("prototype_evidence").output_layer
    evidence.kernel.assign(np.linspace(-1, 1, 4).reshape(4, 1).astype("float32"))
    model = build_inference_model(proposal, build_classifier_network(config))
    exported = onnx_export.convert(model, config, onnx_export.DEFAULT_OPSET)
    session = ort.InferenceSession(
        exported.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    clips = random_clips(3, config)
    found = onnx_export.onnx_scores(session, clips)
    expected = onnx_export.keras_scores(model, clips, 3)
    for name in expected:
        np.testing.assert_allclose(found[name], expected[name], atol=1e-5)
