"""The proposal network's optional prototype evidence (--prototype_evidence),
a departure from the report (docs/benchmarks.md): the layer's arithmetic
against a direct loop, where it starts, its config, and what the network
and the FLOP count make of it."""

import dataclasses
import types

import keras
import numpy as np
import pytest
from tiny_configs import ONE_LAYER, tiny_model

from tal_keras import experiment, flops
from tal_keras.config import RunConfig, TrainConfig
from tal_keras.flops import model_cost
from tal_keras.lattice import Lattice
from tal_keras.layers import PrototypeEvidence
from tal_keras.layers.prototype_evidence import NUM_EVIDENCE
from tal_keras.models import build_proposal_network


def standardized(clips):
    return (clips - clips.mean(axis=1, keepdims=True)) / (
        clips.std(axis=1, keepdims=True) + 1e-3
    )


def windows_of(features):
    """Each clip with its neighbours (ends repeated), previous first."""
    padded = np.concatenate([features[:, :1], features, features[:, -1:]], axis=1)
    return np.concatenate([padded[:, shift : shift + 16] for shift in range(3)], -1)


def expected_logits(layer, clips, flank_fraction):
    """The layer's output by a direct loop over proposals and classes."""
    lattice = Lattice(16, (4, 2, 2))
    starts, ends, bodies = (
        keras.ops.convert_to_numpy(weight)
        for weight in (
            layer.start_prototypes,
            layer.end_prototypes,
            layer.body_prototypes,
        )
    )
    dense = [
        (keras.ops.convert_to_numpy(d.kernel), keras.ops.convert_to_numpy(d.bias))
        for d in (*layer.hidden_layers, layer.output_layer)
    ]
    present = np.flatnonzero(np.linalg.norm(bodies, axis=1) > 0)
    features = standardized(clips)
    windows = windows_of(features)
    start_matches = windows @ starts.T
    start_matches -= start_matches.mean(axis=1, keepdims=True)
    end_matches = windows @ ends.T
    end_matches -= end_matches.mean(axis=1, keepdims=True)
    body_matches = features @ bodies.T
    logits = np.zeros((len(clips), lattice.num_proposals))
    for cell, (start, end) in enumerate(zip(lattice.starts, lattice.ends)):
        length = end - start + 1
        if flank_fraction > 0:
            width = int(np.ceil(flank_fraction * length))
            outside = [
                n
                for n in range(start - width, end + 1 + width)
                if 0 <= n < 16 and not start <= n <= end
            ]
        else:
            outside = [n for n in range(16) if not start <= n <= end]
        for video in range(len(clips)):
            inside = body_matches[video, start : end + 1].mean(axis=0)
            rest = (
                body_matches[video, outside].mean(axis=0)
                if outside
                else np.zeros(len(bodies))
            )
            scores = [
                start_matches[video, start][present],
                end_matches[video, end][present],
                (inside - rest)[present],
            ]
            joint = scores[0] + scores[1] + np.sqrt(length) * scores[2]
            order = np.argsort(-joint)
            evidence = (
                [score.max() for score in scores]
                + [score[order[0]] for score in scores]
                + [joint[order[0]], joint[order[0]] - joint[order[1]]]
                + [start / 16, (end + 1) / 16, length / 16]
            )
            hidden = np.asarray(evidence)
            for index, (kernel, bias) in enumerate(dense):
                hidden = hidden @ kernel + bias
                if index < len(dense) - 1:
                    hidden = np.maximum(hidden, 0)
            logits[video, cell] = hidden[0]
    return logits


@pytest.mark.parametrize("flank_fraction", [0.25, 0.0])
def test_an_mlp_of_each_proposals_best_start_end_body_and_joint_scores(
    tmp_path, flank_fraction
):
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((2, 16, 5)).astype("float32")
    layer = PrototypeEvidence(
        16, (4, 2, 2), num_prototypes=4, hidden_units=6, flank_fraction=flank_fraction
    )
    layer(clips)
    # Class 1 has no training instances: all-zero prototypes, left out.
    for weight in (layer.start_prototypes, layer.end_prototypes, layer.body_prototypes):
        weight.assign(
            weight.numpy() * np.array([[1.0], [0.0], [1.0], [1.0]], "float32")
        )
    layer.output_layer.kernel.assign(rng.standard_normal((6, 1)).astype("float32"))
    output = keras.ops.convert_to_numpy(layer(clips))
    np.testing.assert_allclose(
        output, expected_logits(layer, clips, flank_fraction), atol=1e-4
    )
    model_input = keras.Input((16, 5))
    model = keras.Model(model_input, layer(model_input))
    model.save(tmp_path / "evidence.keras")
    loaded = keras.saving.load_model(tmp_path / "evidence.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(clips)), output, atol=1e-6
    )


def test_starts_at_zero_and_trains_only_its_mlp():
    clips = np.random.default_rng(1).standard_normal((2, 16, 5)).astype("float32")
    layer = PrototypeEvidence(
        16, (4, 2, 2), num_prototypes=3, name="prototype_evidence"
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(clips)), 0.0)
    assert sorted(w.path for w in layer.trainable_weights) == [
        f"prototype_evidence/{name}/{weight}"
        for name in ("hidden1", "hidden2", "output")
        for weight in ("bias", "kernel")
    ]
    assert layer.hidden_layers[0].kernel.shape == (NUM_EVIDENCE, 32)


def test_config_round_trip_and_bad_values():
    layer = PrototypeEvidence(16, (4, 2, 2), num_prototypes=3, hidden_units=8)
    copy = PrototypeEvidence.from_config(layer.get_config())
    assert (copy.hidden_units, copy.flank_fraction, copy.context) == (8, 0.25, 1)
    with pytest.raises(ValueError, match="hidden_units"):
        PrototypeEvidence(16, (4, 2, 2), num_prototypes=3, hidden_units=0)
    with pytest.raises(ValueError, match="flank"):
        PrototypeEvidence(16, (4, 2, 2), num_prototypes=3, flank_fraction=-1.0)
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="prototype_evidence"):
            tiny_model(**ONE_LAYER, prototype_evidence=bad)


def test_network_builds_it_from_the_config_and_flops_count_it():
    config = tiny_model(**ONE_LAYER, prototype_evidence=4, body_prototype_flank=0.5)
    network = build_proposal_network(config)
    layer = network.get_layer("prototype_evidence")
    assert (layer.hidden_units, layer.flank_fraction) == (4, 0.5)
    assert network.count_params() == model_cost(config)["proposal_params"]
    assert flops.NUM_EVIDENCE == NUM_EVIDENCE
    plain = model_cost(dataclasses.replace(config, prototype_evidence=0))
    lattice = Lattice(config.num_clips, config.scale_layers)
    classes, dim = config.num_classes, config.feature_dim
    matches = 2 * config.num_clips * classes * (2 * 3 * dim + dim)
    per_pair = (7 + 9) * lattice.num_proposals * classes
    mlp = lattice.num_proposals * (2 * NUM_EVIDENCE * 4 + 2 * 4 * 4 + 6 * 4 + 1)
    assert (
        model_cost(config)["proposal_flops_band"] - plain["proposal_flops_band"]
        == matches + per_pair + mlp
    )


def test_training_starts_its_prototypes_at_the_class_means(tmp_path):
    from tal_keras.layers.body_prototypes import class_mean_bodies
    from tal_keras.layers.boundary_prototypes import class_mean_prototypes

    config = tiny_model(**ONE_LAYER, prototype_evidence=4)
    rng = np.random.default_rng(2)
    clips = rng.standard_normal((6, config.num_clips, config.feature_dim), "float32")
    videos = {
        f"v{index}": types.SimpleNamespace(
            segments=np.array([[1.0, 5.0]]), labels=np.array([index % 2])
        )
        for index in range(6)
    }
    cache = types.SimpleNamespace(
        video_ids=list(videos), clips=clips, durations=np.full(6, 8.0)
    )
    run_config = RunConfig(
        workdir=str(tmp_path), model=config, train=TrainConfig(epochs=1)
    )
    prototypes = experiment.initial_prototypes(
        run_config, types.SimpleNamespace(videos=videos), cache
    )
    pairs = [(video.segments, video.labels) for video in videos.values()]
    start, end = class_mean_prototypes(clips, cache.durations, pairs, 3)
    assert list(prototypes) == ["prototype_evidence"]
    found = prototypes["prototype_evidence"]
    np.testing.assert_array_equal(found["start_prototypes"], start)
    np.testing.assert_array_equal(found["end_prototypes"], end)
    np.testing.assert_array_equal(
        found["body_prototypes"], class_mean_bodies(clips, cache.durations, pairs, 3)
    )
