"""The proposal network's optional boundary features (--boundary_features),
a departure from the report (docs/benchmarks.md)."""

import dataclasses

import keras
import numpy as np
from tiny_configs import ONE_LAYER, tiny_model

from tal_keras.flops import model_cost
from tal_keras.lattice import Lattice
from tal_keras.layers import BoundaryFeatures
from tal_keras.models import build_proposal_network


def test_adds_the_projected_start_and_end_clip_of_every_proposal(tmp_path):
    lattice = Lattice(16, (4, 2, 2))
    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((2, lattice.num_proposals, 5)).astype("float32")
    clips = rng.standard_normal((2, 16, 5)).astype("float32")
    layer = BoundaryFeatures(16, (4, 2, 2), 5)
    output = keras.ops.convert_to_numpy(layer([pooled, clips]))
    start = keras.ops.convert_to_numpy(layer.start_projection.kernel)
    end = keras.ops.convert_to_numpy(layer.end_projection.kernel)
    expected = pooled + clips[:, lattice.starts] @ start + clips[:, lattice.ends] @ end
    np.testing.assert_allclose(output, expected, atol=1e-5)
    inputs = [keras.Input((lattice.num_proposals, 5)), keras.Input((16, 5))]
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "boundary.keras")
    loaded = keras.saving.load_model(tmp_path / "boundary.keras")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded([pooled, clips])), output
    )
    assert loaded.layers[-1].get_config()["scale_layers"] == [4, 2, 2]


def test_proposal_network_uses_them_and_flops_count_them():
    config = tiny_model(**ONE_LAYER, boundary_features=True)
    network = build_proposal_network(config)
    assert network.get_layer("boundary_features") is not None
    assert network.count_params() == model_cost(config)["proposal_params"]
    plain = model_cost(dataclasses.replace(config, boundary_features=False))
    assert model_cost(config)["proposal_params"] - plain["proposal_params"] == 2 * 8 * 8
