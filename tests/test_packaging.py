"""The installable package: console scripts that resolve, and tal-score
giving evaluate.py's numbers. (CI's .ci/serve_from_wheel installs the wheel
in a venv without TensorFlow and serves from it.)"""

import importlib
import json
import pathlib

import pytest
from tiny_configs import TINY_SUBMISSION_MAP_AT_50, write_tiny_submission

from tal_keras import metrics, scoring

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = pathlib.Path(__file__).resolve().parents[1]


def project():
    with open(ROOT / "pyproject.toml", "rb") as stream:
        return tomllib.load(stream)["project"]


def test_console_scripts_resolve_to_main_functions():
    scripts = project()["scripts"]
    assert set(scripts) == {"tal-export", "tal-serve", "tal-score", "tal-check"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_serving_extras_hold_no_tensorflow():
    spec = project()
    for extra in ("serve", "serve-gpu"):
        names = " ".join(spec["dependencies"] + spec["optional-dependencies"][extra])
        assert "tensorflow" not in names and "keras" not in names
    assert "onnxruntime-gpu" in spec["optional-dependencies"]["serve-gpu"][0]


def write_json(path, content):
    path.write_text(json.dumps(content))
    return str(path)


@pytest.fixture
def submission(tmp_path):
    ground_truth, predictions, _ = write_tiny_submission(tmp_path)
    return str(ground_truth), str(predictions)


def test_tal_score_writes_the_official_metrics(submission, tmp_path, capsys):
    ground_truth, predictions = submission
    out = tmp_path / "m.json"
    argv = ["--ground_truth", ground_truth, "--predictions", predictions]
    assert scoring.main([*argv, "--metrics_out", str(out)]) == 0
    expected = metrics.evaluate_detection(ground_truth, predictions, "validation")
    written = json.loads(out.read_text())["detection"]
    assert written["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert written["mAP"]["0.50"] == pytest.approx(TINY_SUBMISSION_MAP_AT_50, abs=1e-12)
    assert "avg mAP" in capsys.readouterr().out

    assert scoring.main([*argv, "--task", "proposals", "--metrics_out", str(out)]) == 0
    auc = metrics.evaluate_proposals(ground_truth, predictions, "validation")["AUC"]
    assert json.loads(out.read_text())["proposals"]["AUC"] == pytest.approx(auc)


def test_tal_score_names_a_bad_file(submission, tmp_path, capsys):
    ground_truth, _ = submission
    bad = write_json(tmp_path / "bad.json", {"results": {"a": [{"label": "Swim"}]}})
    assert scoring.main(["--ground_truth", ground_truth, "--predictions", bad]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_every_data_file_of_the_package_is_shipped():
    with open(ROOT / "pyproject.toml", "rb") as stream:
        package_data = tomllib.load(stream)["tool"]["setuptools"]["package-data"]
    shipped = {
        path
        for package, patterns in package_data.items()
        for pattern in patterns
        for path in (ROOT / package.replace(".", "/")).glob(pattern)
    }
    data_files = {
        path
        for folder in ("tal_keras", "export")
        for path in (ROOT / folder).rglob("*")
        if path.is_file()
        and path.suffix not in (".py", ".pyc")
        and "__pycache__" not in path.parts
        and path.name != "README.md"
    }
    assert data_files <= shipped, sorted(map(str, data_files - shipped))
