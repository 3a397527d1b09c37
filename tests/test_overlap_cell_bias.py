"""The overlap head's optional per-proposal bias (--overlap_cell_bias), a
departure from the report (docs/benchmarks.md), and its start from the
training videos' mean overlap target."""

import dataclasses
import types

import keras
import numpy as np
import tensorflow as tf
from layer_testing import run_layer_test
from tiny_configs import EIGHT_CLIPS, tiny_model

from tal_keras import training
from tal_keras.config import RunConfig, TrainConfig
from tal_keras.flops import model_cost
from tal_keras.layers import OverlapHead
from tal_keras.models import build_proposal_network
from tal_keras.networks import TrainingData
from tal_keras.targets import scaled_overlap

TINY = tiny_model(**EIGHT_CLIPS, feature_dim=4, overlap_cell_bias=True)


def test_head_adds_one_bias_per_proposal_and_round_trips(tmp_path):
    features = np.random.default_rng(0).standard_normal((2, 5, 3)).astype("float32")

    def set_cell_biases(head):
        assert head.cell_biases.shape == (5,)
        assert not keras.ops.convert_to_numpy(head.cell_biases).any()
        head.cell_biases.assign(np.arange(5, dtype="float32") - 2)

    def reference(head, features):
        kernel, bias = head.projection.get_weights()
        cell_biases = keras.ops.convert_to_numpy(head.cell_biases)
        logits = (features @ kernel + bias)[..., 0] + cell_biases
        return 1 / (1 + np.exp(-logits))

    run_layer_test(
        OverlapHead,
        {"cell_bias": True},
        features,
        tmp_path,
        reference=reference,
        expected_shapes=(2, 5),
        atol=1e-6,
        set_weights=set_cell_biases,
    )
    assert len(OverlapHead().get_config()) and not OverlapHead().cell_bias


def test_parameters_counted():
    plain = dataclasses.replace(TINY, overlap_cell_bias=False)
    assert (
        model_cost(TINY)["proposal_params"] - model_cost(plain)["proposal_params"]
        == TINY.lattice.num_proposals
    )
    assert (
        build_proposal_network(TINY).count_params()
        == model_cost(TINY)["proposal_params"]
    )


def test_training_starts_the_biases_at_the_prior_logits(tmp_path):
    rng = np.random.default_rng(0)
    num_proposals = TINY.lattice.num_proposals
    max_iou = rng.uniform(size=(6, num_proposals)).astype("float32")
    run_config = RunConfig(
        workdir=str(tmp_path),
        model=TINY,
        train=TrainConfig(
            epochs=1, batch_size=3, learning_rate=1e-12, overlap_t_min=0.1
        ),
    )
    training_data = TrainingData(
        run_config, None, types.SimpleNamespace(max_iou=max_iou)
    )
    prior = training_data.length_prior
    mean = scaled_overlap(max_iou, 0.1, 1.0).mean(axis=0)
    lengths = TINY.lattice.lengths
    for length in np.unique(lengths):
        np.testing.assert_allclose(
            prior[lengths == length], mean[lengths == length].mean()
        )
    clips = rng.standard_normal((6, TINY.num_clips, TINY.feature_dim), "float32")
    dataset = tf.data.Dataset.from_tensor_slices((clips, max_iou)).batch(3)
    path = training.train_network(
        "proposal", run_config, dataset, verbose=0, training_data=training_data
    )
    model = keras.saving.load_model(path, compile=False)
    biases = keras.ops.convert_to_numpy(model.get_layer("overlap_scores").cell_biases)
    # Learning rate ~0: the saved biases are where training started.
    np.testing.assert_allclose(
        biases, np.log(prior / (1 - prior)), rtol=1e-5, atol=1e-5
    )
