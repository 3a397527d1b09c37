"""Every recipe exports exactly: the ONNX graph of the tuned recipe equals
Keras on random inputs and where two classes' class means tie to the last
bit or differ by 1e-7 (a hard choice of the best class would flip there),
in float32 and float16; and `.keras` files of the paper recipe saved before
the class-mean design load and predict as they did."""

import json
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import pytest
from python_process import run_python
from tiny_configs import EVERY_DEPARTURE, tiny_model, tiny_run_flagfile

from export import onnx_export
from tal_keras.class_means import ClassMeans
from tal_keras.config import ModelConfig
from tal_keras.models import (
    build_classifier_network,
    build_inference_model,
    build_proposal_network,
)

EARLIER_PAPER_RUN = Path(__file__).parent / "data" / "paper_recipe_v0"
TUNED = tiny_model(**EVERY_DEPARTURE, feature_dim=8, hidden_size=8, num_classes=4)


def tied_means(config, gap):
    """Class means where class 1 is class 0 plus `gap` (0: an exact tie)."""
    rng = np.random.default_rng(0)

    def unit(width):
        rows = rng.normal(size=(config.num_classes, width))
        rows /= np.linalg.norm(rows, axis=-1, keepdims=True)
        rows[1] = rows[0] + gap
        return rows.astype("float32")

    window = 3 * config.feature_dim
    return ClassMeans(
        start=unit(window), end=unit(window), body=unit(config.feature_dim)
    )


@pytest.fixture(scope="module")
def tuned_models():
    """The tuned recipe's inference model (random weights, the MLP's output
    layer given a say) for each class-mean gap, and its float32 ONNX graph."""
    keras.utils.set_random_seed(3)
    proposal = build_proposal_network(TUNED)
    classifier = build_classifier_network(TUNED)
    evidence = proposal.get_layer("class_mean_evidence")
    evidence.output_layer.kernel.assign(
        np.linspace(-1, 1, 4).reshape(4, 1).astype("float32")
    )
    inference = build_inference_model(proposal, classifier)
    graphs = {}
    for gap in (0.0, 1e-7):
        for network in (proposal, classifier):
            network.get_layer("class_mean_matches").set_class_means(
                tied_means(TUNED, gap)
            )
        graphs[gap] = onnx_export.convert(inference, TUNED, onnx_export.DEFAULT_OPSET)
        graphs[gap, "keras"] = {
            name: np.asarray(value) for name, value in inference(clip_inputs()).items()
        }
    return graphs


def clip_inputs():
    rng = np.random.default_rng(1)
    clips = rng.normal(size=(3, TUNED.num_clips, TUNED.feature_dim)).astype("float32")
    # Video 2: the same clip everywhere but one channel, so that many
    # proposals' matches are equal across classes too.
    clips[2] = clips[2, :1]
    clips[2, :, 0] = np.linspace(-1, 1, TUNED.num_clips)
    return clips


def onnx_outputs(model):
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {"clip_features": clip_inputs()})))


@pytest.mark.slow
@pytest.mark.parametrize("gap", [0.0, 1e-7])
def test_tuned_recipe_exports_exactly_at_near_ties(tuned_models, gap):
    expected = tuned_models[gap, "keras"]
    found = onnx_outputs(tuned_models[gap])
    for name, value in expected.items():
        assert np.isfinite(found[name]).all(), name
        np.testing.assert_allclose(found[name], value, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_tuned_recipe_exports_in_float16_without_nan(tuned_models):
    expected = tuned_models[0.0, "keras"]
    found = onnx_outputs(onnx_export.to_float16(tuned_models[0.0]))
    for name, value in expected.items():
        assert np.isfinite(found[name]).all(), name
        # The export's own float16 tolerance.
        np.testing.assert_allclose(found[name], value, atol=1e-2, err_msg=name)


def test_paper_recipe_keras_files_of_the_earlier_version_predict_the_same():
    with open(EARLIER_PAPER_RUN / "model_config.json") as stream:
        saved = json.load(stream)
    assert "boundary_prototypes" in saved  # written by the earlier version
    config = ModelConfig.from_dict(saved)
    assert not (config.class_mean_evidence or config.class_mean_logits)
    clips = np.load(EARLIER_PAPER_RUN / "clip_features.npy")
    for network in ("proposal", "classifier"):
        model = keras.saving.load_model(EARLIER_PAPER_RUN / f"{network}.keras")
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(model(clips)),
            np.load(EARLIER_PAPER_RUN / f"{network}_outputs.npy"),
            atol=1e-6,
            err_msg=network,
        )


@pytest.mark.slow
def test_a_trained_tuned_run_passes_the_exporters_own_check(tmp_path):
    flagfile = tiny_run_flagfile(
        tmp_path, "run", "--recipe=tuned", "--class_mean_evidence=8", "--epochs=1"
    )
    run_python(["train.py", f"--flagfile={flagfile}"])
    for precision in ([], ["--fp16"]):
        result = run_python(
            ["-m", "export.onnx_export", f"--workdir={tmp_path / 'run'}", *precision]
        )
        assert "EXPORT FAILED" not in result.stdout + result.stderr
    assert (tmp_path / "run" / "s2dtan.onnx").exists()
    assert (tmp_path / "run" / "s2dtan.fp16.onnx").exists()
