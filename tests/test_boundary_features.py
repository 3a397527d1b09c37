"""The proposal network's optional boundary features (--boundary_features),
a departure from the report (docs/benchmarks.md)."""

import dataclasses

import keras
import numpy as np
from layer_testing import run_layer_test
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

    def reference(layer, inputs):
        pooled, clips = inputs
        start = keras.ops.convert_to_numpy(layer.start_projection.kernel)
        end = keras.ops.convert_to_numpy(layer.end_projection.kernel)
        return pooled + clips[:, lattice.starts] @ start + clips[:, lattice.ends] @ end

    run_layer_test(
        BoundaryFeatures,
        {"num_clips": 16, "scale_layers": (4, 2, 2), "hidden_size": 5},
        [pooled, clips],
        tmp_path,
        reference=reference,
        expected_shapes=(2, lattice.num_proposals, 5),
    )


def test_proposal_network_uses_them_and_flops_count_them():
    config = tiny_model(**ONE_LAYER, boundary_features=True)
    network = build_proposal_network(config)
    assert network.get_layer("boundary_features") is not None
    assert network.count_params() == model_cost(config)["proposal_params"]
    plain = model_cost(dataclasses.replace(config, boundary_features=False))
    assert model_cost(config)["proposal_params"] - plain["proposal_params"] == 2 * 8 * 8
