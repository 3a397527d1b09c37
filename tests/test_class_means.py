"""The class-mean design: the numpy class means, the one layer that matches
clips with them, its two heads (the proposal network's evidence and the
classifier's logits), each against a plain-loop numpy reference, and the
network kind's initialisation hook."""

import dataclasses
import math

import numpy as np
import pytest
from layer_testing import run_layer_test
from tiny_configs import EVERY_DEPARTURE, tiny_model

from tal_keras.class_means import ClassMeans, boundary_clips, class_means
from tal_keras.clips import standardized_clips
from tal_keras.config import ModelConfig
from tal_keras.lattice import Lattice
from tal_keras.layers import ClassHead, ClassMeanEvidence, ClassMeanMatches
from tal_keras.layers.class_mean_evidence import EVIDENCE, INITIAL_WEIGHTS
from tal_keras.models import build_classifier_network, build_proposal_network
from tal_keras.networks import NETWORKS

LATTICE = {"num_clips": 16, "scale_layers": (4, 2, 2)}


def random_means(num_classes, dim, seed=0, absent=()):
    rng = np.random.default_rng(seed)

    def unit(width):
        rows = rng.normal(size=(num_classes, width))
        rows /= np.linalg.norm(rows, axis=-1, keepdims=True)
        rows[list(absent)] = 0
        return rows.astype("float32")

    return ClassMeans(start=unit(3 * dim), end=unit(3 * dim), body=unit(dim))


def reference_matches(clips, means, num_clips, scale_layers, flank):
    """[V, P, C, 3] and [V, C]: ClassMeanMatches by loops over proposals."""
    lattice = Lattice(num_clips, scale_layers)
    outputs = []
    for video in clips:
        x = standardized_clips(video)
        padded = np.concatenate([x[:1], x, x[-1:]])
        windows = np.concatenate([padded[:-2], padded[1:-1], padded[2:]], axis=-1)
        start = windows @ means.start.T
        end = windows @ means.end.T
        start -= start.mean(axis=0)
        end -= end.mean(axis=0)
        body = x @ means.body.T
        rows = []
        for s, e in zip(lattice.starts, lattice.ends):
            length = e - s + 1
            width = math.ceil(flank * length)
            outside = list(range(max(s - width, 0), s)) + list(
                range(e + 1, min(e + 1 + width, num_clips))
            )
            if not outside:
                outside = [n for n in range(num_clips) if not s <= n <= e]
            contrast = body[s : e + 1].mean(axis=0) - (
                body[outside].mean(axis=0) if outside else 0
            )
            rows.append(np.stack([start[s], end[e], contrast], axis=-1))
        outputs.append(rows)
    present = np.broadcast_to(
        means.present.astype("float32"), (len(clips), len(means.body))
    )
    return [np.asarray(outputs), present]


def set_means(means):
    return lambda layer: layer.set_class_means(means)


@pytest.mark.parametrize("flank", [0.0, 0.25, 1.0])
def test_matches_equal_the_loop_reference(flank, tmp_path):
    clips = np.random.default_rng(1).normal(size=(2, 16, 5)).astype("float32")
    means = random_means(4, 5, absent=(2,))
    outputs = run_layer_test(
        ClassMeanMatches,
        {**LATTICE, "num_classes": 4, "flank_fraction": flank},
        clips,
        tmp_path,
        reference=lambda layer, inputs: reference_matches(
            inputs, means, 16, (4, 2, 2), flank
        ),
        expected_shapes=[(2, 72, 4, 3), (2, 4)],
        atol=1e-4,
        set_weights=set_means(means),
    )
    assert np.all(outputs[0][:, :, 2] == 0)  # the absent class matches nothing
    np.testing.assert_array_equal(outputs[1][0], [1, 1, 0, 1])


def test_matches_refuse_means_of_the_wrong_shape():
    layer = ClassMeanMatches(**LATTICE, num_classes=3)
    layer(np.zeros((1, 16, 5), "float32"))
    with pytest.raises(ValueError, match="class means of shape"):
        layer.set_class_means(random_means(4, 5))


def softmax(values):
    shifted = np.exp(values - values.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def reference_evidence(matches, present, num_clips, scale_layers, temperature):
    """[V, P, 12]: ClassMeanEvidence's inputs, in float64, only present classes."""
    lattice = Lattice(num_clips, scale_layers)
    keep = present[0] > 0
    start, end, body = (matches[..., keep, i].astype(np.float64) for i in range(3))
    lengths = lattice.ends - lattice.starts + 1
    joint = start + end + np.sqrt(lengths)[:, None] * body

    def smooth_max(scores):
        return (softmax(scores / temperature) * scores).sum(-1)

    weights = softmax(joint / temperature)
    best = [smooth_max(score) for score in (start, end, body)]
    features = [
        *best,
        np.minimum(best[0], best[1]),
        *((weights * score).sum(-1) for score in (start, end, body)),
        (weights * joint).sum(-1),
        -temperature * (weights * np.log(weights)).sum(-1),
    ]
    positions = np.stack([lattice.starts, lattice.ends + 1, lengths], -1) / num_clips
    positions = np.broadcast_to(positions, (len(matches), *positions.shape))
    return np.concatenate([np.stack(features, -1), positions], -1)


@pytest.mark.parametrize("hidden_units", [0, 6])
def test_evidence_head_equals_the_reference(hidden_units, tmp_path):
    rng = np.random.default_rng(2)
    matches = rng.normal(size=(2, 72, 4, 3)).astype("float32")
    present = np.array([[1, 0, 1, 1]] * 2, "float32")

    def give_the_mlp_a_say(layer):
        if layer.output_layer is not None:
            layer.output_layer.kernel.assign(np.linspace(-1, 1, 6)[:, None])

    def reference(layer, inputs):
        evidence = reference_evidence(*inputs, 16, (4, 2, 2), 0.5)

        def dense(dense_layer, values):
            return values @ dense_layer.kernel.numpy() + dense_layer.bias.numpy()

        logits = dense(layer.weighted_sum, evidence)
        if hidden_units:
            hidden = evidence
            for hidden_layer in layer.hidden_layers:
                hidden = np.maximum(dense(hidden_layer, hidden), 0)
            logits = logits + dense(layer.output_layer, hidden)
        return logits[..., 0]

    run_layer_test(
        ClassMeanEvidence,
        {**LATTICE, "hidden_units": hidden_units, "temperature": 0.5},
        [matches, present],
        tmp_path,
        reference=reference,
        expected_shapes=(2, 72),
        atol=1e-4,
        set_weights=give_the_mlp_a_say,
    )


def test_evidence_starts_as_the_weighted_sum_of_min_boundary_and_body():
    head = ClassMeanEvidence(**LATTICE, hidden_units=4)
    matches = np.random.default_rng(3).normal(size=(1, 72, 3, 3)).astype("float32")
    present = np.ones((1, 3), "float32")
    logits = np.asarray(head([matches, present]))
    evidence = np.asarray(head.evidence(matches, present))
    expected = sum(
        weight * evidence[..., EVIDENCE.index(name)]
        for name, weight in INITIAL_WEIGHTS.items()
    )
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_evidence_is_continuous_where_two_classes_tie():
    """Two classes' joint scores equal, then 1e-7 apart either way: the
    logit moves by a rounding error, not by a jump (a hard one-hot of the
    best class would switch between their start, end and body scores)."""
    head = ClassMeanEvidence(**LATTICE, hidden_units=4)
    head.build(None)
    head.output_layer.kernel.assign(np.ones((4, 1), "float32"))
    for layer in head.hidden_layers:
        layer.kernel.assign(np.full(layer.kernel.shape, 0.3, "float32"))
    matches = np.zeros((3, 72, 2, 3), "float32")
    # Class 0: a strong start, a weak end; class 1 the other way round.
    matches[:, :, 0] = [2.0, 0.0, 0.5]
    matches[:, :, 1] = [0.0, 2.0, 0.5]
    matches[1, :, 0, 0] += 1e-7
    matches[2, :, 1, 1] += 1e-7
    logits = np.asarray(head([matches, np.ones((3, 2), "float32")]))
    assert np.abs(logits[1:] - logits[0]).max() < 1e-5


def test_class_head_adds_scaled_matches_before_the_softmax(tmp_path):
    rng = np.random.default_rng(4)
    features = rng.normal(size=(2, 72, 3)).astype("float32")
    matches = rng.normal(size=(2, 72, 5, 3)).astype("float32")

    def reference(layer, inputs):
        kernel, bias = layer.projection.kernel.numpy(), layer.projection.bias.numpy()
        scales = layer.match_scales.numpy()
        logits = inputs[0] @ kernel + bias + (inputs[1] * scales).sum(-1)
        return softmax(logits.astype(np.float64))

    def scales(layer):
        layer.match_scales.assign(np.array([0.5, -1.0, 2.0], "float32"))

    run_layer_test(
        ClassHead,
        {"num_classes": 5},
        [features, matches],
        tmp_path,
        reference=reference,
        expected_shapes=(2, 72, 5),
        set_weights=scales,
    )


def test_class_means_equal_a_loop_over_instances():
    rng = np.random.default_rng(5)
    clips = rng.normal(size=(3, 16, 4))
    durations = np.array([32.0, 16.0, 48.0])
    videos = [
        (np.array([[2.0, 10.0], [12.0, 30.0]]), np.array([0, 2])),
        (np.zeros((0, 2)), np.zeros(0, np.int64)),
        (np.array([[0.0, 48.0]]), np.array([0])),
    ]
    means = class_means(clips, durations, videos, num_classes=4)
    sums = {
        name: np.zeros((4, width))
        for name, width in (("start", 12), ("end", 12), ("body", 4))
    }
    for video, (segments, labels) in enumerate(videos):
        x = standardized_clips(clips[video])
        padded = np.concatenate([x[:1], x, x[-1:]])
        for (begin, finish), label in zip(segments, labels):
            first, last = boundary_clips(durations[video], [[begin, finish]], 16)
            for name, clip in (("start", first[0]), ("end", last[0])):
                sums[name][label] += padded[clip : clip + 3].reshape(-1)
            for clip in range(16):
                centre = (clip + 0.5) * durations[video] / 16
                if begin <= centre < finish:
                    sums["body"][label] += x[clip]
    for name, total in sums.items():
        norms = np.linalg.norm(total, axis=-1, keepdims=True)
        expected = np.where(norms > 0, total / np.maximum(norms, 1e-12), 0)
        np.testing.assert_allclose(getattr(means, name), expected, atol=1e-6)
    np.testing.assert_array_equal(means.present, [True, False, True, False])


class FakeTrainingData:
    def __init__(self, means, prior):
        self.class_means = means
        self.length_prior = prior


def test_the_network_kinds_start_both_networks_from_the_training_data():
    config = tiny_model(**EVERY_DEPARTURE)
    means = random_means(config.num_classes, config.feature_dim, seed=6)
    prior = np.linspace(0.1, 0.9, config.lattice.num_proposals)
    data = FakeTrainingData(means, prior)
    for network, build in (
        ("proposal", build_proposal_network),
        ("classifier", build_classifier_network),
    ):
        model = build(config)
        NETWORKS[network].initialize(model, data)
        layer = model.get_layer("class_mean_matches")
        np.testing.assert_array_equal(layer.body_means.numpy(), means.body)
        np.testing.assert_array_equal(layer.start_means.numpy(), means.start)
    biases = model_biases = build_proposal_network(config)
    NETWORKS["proposal"].initialize(biases, data)
    model_biases = biases.get_layer("overlap_scores").cell_biases.numpy()
    np.testing.assert_allclose(model_biases, np.log(prior / (1 - prior)), rtol=1e-5)


def test_runs_of_earlier_versions_load_unless_they_used_replaced_layers():
    fields = dataclasses.asdict(tiny_model())
    earlier = {
        **fields,
        "boundary_scores": False,
        "boundary_prototypes": False,
        "boundary_prototype_scales": [0.0, 0.0, 1.0],
        "body_prototypes": False,
        "body_prototype_flank": 0.0,
        "prototype_evidence": 0,
        "class_prototypes": False,
    }
    assert ModelConfig.from_dict(earlier) == tiny_model()
    with pytest.raises(ValueError, match="prototype_evidence.*retrain"):
        ModelConfig.from_dict({**earlier, "prototype_evidence": 64})
