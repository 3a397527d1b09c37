"""The classifier's optional class prototypes (--class_prototypes), a
departure from the report (docs/benchmarks.md): the layer's arithmetic, the
classifier using it, and where training starts it."""

import dataclasses
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from python_process import run_python
from tiny_configs import ONE_LAYER, tiny_model, tiny_run_flagfile

import tal_keras.losses  # noqa: F401  (the losses of the saved models' compile config)
from tal_keras import experiment, training
from tal_keras.config import RunConfig, TrainConfig
from tal_keras.flops import model_cost
from tal_keras.lattice import Lattice
from tal_keras.layers import ClassPrototypes
from tal_keras.layers.body_prototypes import class_mean_bodies
from tal_keras.layers.boundary_prototypes import class_mean_prototypes
from tal_keras.models import build_classifier_network


def _reference(clips, start, end, body, scales, lattice):
    """Per proposal and class, written out cell by cell in float64."""
    clips = clips.astype(np.float64)
    standardized = (clips - clips.mean(axis=1, keepdims=True)) / (
        clips.std(axis=1, keepdims=True) + 1e-3
    )
    num_clips = clips.shape[1]
    windows = np.stack(
        [
            np.concatenate(
                [
                    standardized[:, min(max(n + shift, 0), num_clips - 1)]
                    for shift in (-1, 0, 1)
                ],
                axis=-1,
            )
            for n in range(num_clips)
        ],
        axis=1,
    )
    starts = windows @ start.T
    starts -= starts.mean(axis=1, keepdims=True)
    ends = windows @ end.T
    ends -= ends.mean(axis=1, keepdims=True)
    matches = standardized @ body.T
    expected = np.zeros((clips.shape[0], lattice.num_proposals, start.shape[0]))
    for cell, (first, last) in enumerate(zip(lattice.starts, lattice.ends)):
        inside = np.zeros(num_clips, bool)
        inside[first : last + 1] = True
        outside = matches[:, ~inside].mean(axis=1) if (~inside).any() else 0.0
        contrast = matches[:, inside].mean(axis=1) - outside
        expected[:, cell] = (
            scales[0] * starts[:, first]
            + scales[1] * ends[:, last]
            + scales[2] * contrast
        )
    return expected


def test_scores_each_proposal_and_class_by_its_start_end_and_body(tmp_path):
    lattice = Lattice(16, (4, 2, 2))
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((2, 16, 5)).astype("float32")
    layer = ClassPrototypes(16, (4, 2, 2), num_prototypes=3)
    layer(clips)
    layer.scales.assign(np.array([0.7, -0.4, 0.3], "float32"))
    output = keras.ops.convert_to_numpy(layer(clips))
    weights = [
        keras.ops.convert_to_numpy(w)
        for w in (layer.start_prototypes, layer.end_prototypes, layer.body_prototypes)
    ]
    expected = _reference(clips, *weights, (0.7, -0.4, 0.3), lattice)
    assert output.shape == (2, lattice.num_proposals, 3)
    np.testing.assert_allclose(output, expected, atol=1e-4)
    model_input = keras.Input((16, 5))
    model = keras.Model(model_input, layer(model_input))
    model.save(tmp_path / "classes.keras")
    loaded = keras.saving.load_model(tmp_path / "classes.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(clips)), output, atol=1e-6
    )
    assert [weight.name for weight in layer.trainable_weights] == ["scales"]


def test_classifier_adds_them_before_its_softmax_and_flops_count_them():
    config = tiny_model(**ONE_LAYER, class_prototypes=True)
    network = build_classifier_network(config)
    assert network.count_params() == model_cost(config)["classifier_params"]
    plain = model_cost(dataclasses.replace(config, class_prototypes=False))
    width = 3 * config.feature_dim
    assert (
        model_cost(config)["classifier_params"] - plain["classifier_params"]
        == config.num_classes * (2 * width + config.feature_dim) + 3
    )
    clips = (
        np.random.default_rng(1)
        .standard_normal((2, config.num_clips, config.feature_dim))
        .astype("float32")
    )
    scores = keras.ops.convert_to_numpy(network(clips))
    np.testing.assert_allclose(scores.sum(axis=-1), 1.0, atol=1e-5)
    # With the Dense head at zero, the class scores are the softmax of the
    # prototype logits alone.
    head = network.get_layer("class_scores").projection
    head.kernel.assign(np.zeros(head.kernel.shape, "float32"))
    head.bias.assign(np.zeros(head.bias.shape, "float32"))
    logits = keras.ops.convert_to_numpy(network.get_layer("class_prototypes")(clips))
    expected = np.exp(logits - logits.max(axis=-1, keepdims=True))
    expected /= expected.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(network(clips)), expected, atol=1e-5
    )


def test_training_starts_the_classifier_at_the_class_means(tmp_path):
    config = tiny_model(**ONE_LAYER, class_prototypes=True)
    rng = np.random.default_rng(2)
    num_videos = 6
    clips = rng.standard_normal(
        (num_videos, config.num_clips, config.feature_dim), "float32"
    )
    videos = {
        f"v{index}": types.SimpleNamespace(
            segments=np.array([[1.0, 5.0]]), labels=np.array([index % 2])
        )
        for index in range(num_videos)
    }
    cache = types.SimpleNamespace(
        video_ids=list(videos), clips=clips, durations=np.full(num_videos, 8.0)
    )
    run_config = RunConfig(
        workdir=str(tmp_path),
        model=config,
        train=TrainConfig(epochs=1, batch_size=3, learning_rate=1e-2),
    )
    prototypes = experiment.initial_prototypes(
        run_config, types.SimpleNamespace(videos=videos), cache
    )
    # Only the classifier's layer: the proposal network's are off.
    assert sorted(prototypes) == ["class_prototypes"]
    pairs = [(video.segments, video.labels) for video in videos.values()]
    start, end = class_mean_prototypes(
        clips, cache.durations, pairs, config.num_classes
    )
    body = class_mean_bodies(clips, cache.durations, pairs, config.num_classes)
    # Labels: class index per proposal, -1 where no class is given.
    labels = rng.integers(-1, 2, size=(num_videos, config.lattice.num_proposals))
    dataset = tf.data.Dataset.from_tensor_slices((clips, labels.astype("int32"))).batch(
        3
    )
    path = training.train_network(
        "classifier", run_config, dataset, verbose=0, prototypes=prototypes
    )
    layer = keras.saving.load_model(path, compile=False).get_layer("class_prototypes")
    for name, value in (
        ("start_prototypes", start),
        ("end_prototypes", end),
        ("body_prototypes", body),
    ):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(getattr(layer, name)), value
        )


@pytest.mark.slow
def test_train_py_starts_both_networks_at_the_same_class_means(tmp_path):
    flagfile = tiny_run_flagfile(
        tmp_path,
        "run",
        "--num_conv_layers=1",
        "--epochs=1",
        "--boundary_prototypes",
        "--body_prototypes",
        "--class_prototypes",
    )
    run_python(["train.py", f"--flagfile={flagfile}"], backend="tensorflow")
    workdir = tmp_path / "run"
    assert (workdir / "detections.json").is_file()
    proposal = keras.saving.load_model(workdir / "proposal" / "best.keras")
    classifier = keras.saving.load_model(workdir / "classifier" / "best.keras")
    classes = classifier.get_layer("class_prototypes")
    for mine, theirs in (
        (
            "start_prototypes",
            proposal.get_layer("boundary_prototypes").start_prototypes,
        ),
        ("end_prototypes", proposal.get_layer("boundary_prototypes").end_prototypes),
        ("body_prototypes", proposal.get_layer("body_prototypes").prototypes),
    ):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(getattr(classes, mine)),
            keras.ops.convert_to_numpy(theirs),
        )
