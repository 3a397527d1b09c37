"""export.onnx_export: the ONNX graph against Keras on real and random inputs,
its metadata, dynamic batch, float16, and loud failures. The tiny run folder
built here is shared with test_serve.py."""

import dataclasses
import json
import os
import shutil

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_configs import data_config_of, tiny_model

from export import metadata, onnx_export
from tal_keras.config import EvalConfig, RunConfig
from tal_keras.data import synthetic
from tal_keras.models import (
    build_classifier_network,
    build_inference_model,
    build_proposal_network,
)

TINY_MODEL = tiny_model(feature_dim=8, hidden_size=8, num_classes=4)
_BUILT = {}


def make_tiny_run(tmp_path_factory):
    """(run folder, its RunConfig, exported ONNX path, the export's report),
    made once per test session: a 30-video synthetic dataset, both networks
    with random weights saved as best.keras, config.json, and the export."""
    if "run" in _BUILT:
        return _BUILT["run"]
    root = tmp_path_factory.mktemp("tiny_run")
    data = synthetic.generate(
        root / "data", num_videos=30, num_classes=4, feature_dim=8, seed=3
    )
    workdir = str(root / "run")
    run_config = RunConfig(
        workdir=workdir,
        data=data_config_of(data),
        model=TINY_MODEL,
        eval=EvalConfig(batch_size=4),
    )
    keras.utils.set_random_seed(5)
    for name, builder in (
        ("proposal", build_proposal_network),
        ("classifier", build_classifier_network),
    ):
        os.makedirs(os.path.join(workdir, name))
        builder(TINY_MODEL).save(os.path.join(workdir, name, "best.keras"))
    with open(os.path.join(workdir, "config.json"), "w") as stream:
        json.dump(run_config.to_dict(), stream)
    report = onnx_export.export_run(workdir, check_videos=5)
    _BUILT["run"] = (workdir, run_config, report.path, report)
    return _BUILT["run"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory)


def random_clips(batch, config=TINY_MODEL, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(
        (batch, config.num_clips, config.feature_dim), dtype=np.float32
    )


def test_export_matches_keras_on_real_videos_and_any_batch(tiny_run):
    workdir, _, path, report = tiny_run
    assert path == os.path.join(workdir, "s2dtan.onnx") and os.path.exists(path)
    assert report.inputs.endswith("videos of the validation subset")
    assert max(report.max_abs_diff.values()) <= 1e-5
    assert report.batch_consistency <= 1e-5
    # Independently of the export's own check: another batch size, other inputs.
    _, proposal_network, classifier_network = onnx_export.load_run(workdir)
    reference = build_inference_model(proposal_network, classifier_network)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [value.name for value in session.get_outputs()] == [
        "overlap_scores",
        "class_scores",
    ]
    num_proposals = TINY_MODEL.lattice.num_proposals
    assert session.get_inputs()[0].shape == ["batch", 16, 8]
    assert session.get_outputs()[1].shape == ["batch", num_proposals, 4]
    for batch in (1, 3):
        clips = random_clips(batch, seed=batch)
        overlap, classes = session.run(None, {"clip_features": clips})
        expected = reference(clips)
        np.testing.assert_allclose(overlap, expected["overlap_scores"], atol=1e-5)
        np.testing.assert_allclose(classes, expected["class_scores"], atol=1e-5)
        assert overlap.shape == (batch, num_proposals)


def test_metadata_holds_what_serving_needs(tiny_run):
    _, run_config, path, report = tiny_run
    properties = {
        entry.key: json.loads(entry.value) for entry in onnx.load(path).metadata_props
    }
    assert properties["format"] == metadata.FORMAT
    assert properties["num_clips"] == 16
    assert properties["scale_layers"] == [4, 2, 2]
    assert properties["feature_dim"] == 8
    assert properties["class_names"] == synthetic.class_names(4)
    assert properties["feature_timing"] == {"fps": 15.0, "stride": 8, "window": 32}
    assert properties["model_config"] == TINY_MODEL.to_dict()
    assert properties["precision"] == "float32"
    assert properties["tal_keras_version"] == "0.1.0"
    post = properties["postprocessing"]
    assert post["nms_threshold"] == run_config.eval.nms_threshold
    assert post["top_pairs"] == run_config.eval.top_pairs
    assert post["detections_per_video"] == run_config.eval.detections_per_video
    assert post["soft_nms"] is False
    assert post["proposal_soft_nms_sigma"] == run_config.eval.proposal_soft_nms_sigma
    assert properties["parity"]["max_abs_diff"] == report.max_abs_diff
    stored = {entry.key: entry.value for entry in onnx.load(path).metadata_props}
    spec = metadata.parse_metadata(stored, path)
    assert spec.lattice.num_proposals == TINY_MODEL.lattice.num_proposals
    # A file exported before proposal soft-NMS existed serves with NMS.
    older = dict(post)
    del older["proposal_soft_nms_sigma"]
    spec = metadata.parse_metadata(
        {**stored, "postprocessing": json.dumps(older)}, path
    )
    assert spec.postprocessing.proposal_soft_nms_sigma == 0.0


def test_float16_export_reports_its_own_tolerance(tiny_run, tmp_path, monkeypatch):
    workdir, *_ = tiny_run
    out = str(tmp_path / "half.onnx")
    forms = []
    convert = onnx_export.convert

    def recording_convert(*args, **kwargs):
        forms.append(kwargs.get("frequency_tile"))
        return convert(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "convert", recording_convert)
    report = onnx_export.export_run(workdir, out=out, fp16=True, check_videos=3)
    assert forms == [0]  # by taps, whatever the config: no float16 transforms
    assert report.precision == "float16"
    assert report.tolerance == onnx_export.FP16_TOLERANCE
    # Rounded to float16, so not as close as float32, yet within tolerance.
    assert 0 < max(report.max_abs_diff.values()) <= onnx_export.FP16_TOLERANCE
    model = onnx.load(out)
    weights = [
        tensor
        for tensor in model.graph.initializer
        if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        and np.prod(tensor.dims) > 1
    ]
    assert weights
    assert all(tensor.data_type == onnx.TensorProto.FLOAT16 for tensor in weights)
    io_types = [
        value.type.tensor_type.elem_type
        for value in [*model.graph.input, *model.graph.output]
    ]
    assert io_types == [onnx.TensorProto.FLOAT] * 3
    properties = {entry.key: entry.value for entry in model.metadata_props}
    assert json.loads(properties["precision"]) == "float16"


def test_int8_export_reports_its_difference_and_speed_and_serves(tiny_run, tmp_path):
    from export.detector import Detector

    workdir, *_ = tiny_run
    out = str(tmp_path / "quantized.onnx")
    report = onnx_export.export_run(workdir, out=out, int8=True, check_videos=3)
    assert report.precision == "int8" and report.tolerance is None
    # The float32 graph it is quantized from matches Keras; the int8 graph
    # differs, by quantization error, not by a broken graph.
    assert max(report.float32_max_abs_diff.values()) <= 1e-5
    assert 1e-5 < max(report.max_abs_diff.values()) < 0.05
    assert 0 < max(report.mean_abs_diff.values()) < max(report.max_abs_diff.values())
    assert sorted(report.call_seconds) == ["float32", "int8"]
    assert "int8: mean |ONNX - Keras|" in report.summary()
    model = onnx.load(out)
    op_types = [node.op_type for node in model.graph.node]
    # Every product by a weight is quantized: no float MatMul with a constant
    # second input is left.
    constants = {tensor.name for tensor in model.graph.initializer}
    assert not [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in constants
    ]
    assert "MatMulInteger" in op_types or "DynamicQuantizeMatMul" in op_types
    properties = {entry.key: json.loads(entry.value) for entry in model.metadata_props}
    assert properties["precision"] == "int8"
    assert properties["parity"]["quantization"] == onnx_export.INT8_SCHEME
    assert properties["parity"]["tolerance"] is None
    # Served as any export is, close to the float32 graph.
    detector = Detector(out, providers=["CPUExecutionProvider"])
    assert detector.spec.precision == "int8"
    clips = random_clips(2, seed=7)
    float_session = ort.InferenceSession(
        tiny_run[2], providers=["CPUExecutionProvider"]
    )
    expected = onnx_export.onnx_scores(float_session, clips)
    found = detector.predict(clips)
    for name in expected:
        np.testing.assert_allclose(found[name], expected[name], atol=0.05)


def test_int8_export_warns_where_int8_is_the_slower(
    tiny_run, tmp_path, monkeypatch, caplog
):
    """The report times the float32 graph a float32 export writes and the
    int8 one; where int8 took longer the export says to serve float32."""
    workdir, *_ = tiny_run
    timed = onnx_export._timed_scores
    calls = []

    def slower_each_call(session, clip_features):
        scores, _ = timed(session, clip_features)
        calls.append(len(calls) + 1.0)
        return scores, calls[-1]

    monkeypatch.setattr(onnx_export, "_timed_scores", slower_each_call)
    out = str(tmp_path / "quantized.onnx")
    with caplog.at_level("WARNING", logger="tal_keras"):
        report = onnx_export.export_run(workdir, out=out, int8=True, check_videos=2)
    assert report.call_seconds == {"float32": 1.0, "int8": 2.0}
    assert "the float32 export serves faster" in caplog.text
    caplog.clear()  # int8 as fast: no warning
    monkeypatch.setattr(
        onnx_export,
        "_timed_scores",
        lambda session, clips: (timed(session, clips)[0], 1.0),
    )
    onnx_export.export_run(workdir, out=out, int8=True, check_videos=2)
    assert "serves faster" not in caplog.text


def test_int8_export_with_a_tolerance_fails_beyond_it(tiny_run, tmp_path, capsys):
    workdir, *_ = tiny_run
    out = tmp_path / "quantized.onnx"
    arguments = ["--workdir", workdir, "--out", str(out), "--check_videos", "2"]
    status = onnx_export.main([*arguments, "--int8", "--tolerance", "1e-9"])
    assert status == 1 and not out.exists()
    error = capsys.readouterr().err
    assert "EXPORT FAILED" in error and "int8" in error
    with pytest.raises(SystemExit):
        onnx_export.parse_args([*arguments, "--int8", "--fp16"])


def test_a_mismatch_fails_loudly_and_writes_nothing(
    tiny_run, tmp_path, monkeypatch, capsys
):
    workdir, *_ = tiny_run
    keras_scores = onnx_export.keras_scores

    def off_by_a_little(*args):
        return {name: value + 2e-4 for name, value in keras_scores(*args).items()}

    monkeypatch.setattr(onnx_export, "keras_scores", off_by_a_little)
    out = tmp_path / "bad.onnx"
    status = onnx_export.main(
        ["--workdir", workdir, "--out", str(out), "--check_videos", "2"]
    )
    assert status == 1
    error = capsys.readouterr().err
    assert "EXPORT FAILED" in error and "does not match Keras" in error
    assert "Nothing was written" in error and not out.exists()


def test_without_data_the_check_runs_on_random_inputs_and_says_so(tiny_run, caplog):
    _, run_config, *_ = tiny_run
    moved = dataclasses.replace(
        run_config,
        data=dataclasses.replace(run_config.data, annotations="/nonexistent/a.json"),
    )
    clips, description = onnx_export.check_inputs(moved, 3)
    assert clips.shape == (3, 16, 8) and clips.dtype == np.float32
    assert "random" in description
    assert "PARITY CHECK ON RANDOM INPUTS" in caplog.text


def test_missing_classifier_is_a_clear_error(tiny_run, tmp_path):
    workdir, *_ = tiny_run
    partial = tmp_path / "run"
    partial.mkdir()
    shutil.copy(os.path.join(workdir, "config.json"), partial)
    shutil.copytree(os.path.join(workdir, "proposal"), partial / "proposal")
    with pytest.raises(FileNotFoundError, match="classifier/best.keras"):
        onnx_export.export_run(str(partial))
    assert onnx_export.main(["--workdir", str(partial)]) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("conv_implementation", "map_mode", "proposal_features"),
    [("whole", "s2dtan", "pool"), ("band", "2dtan", "conv")],
)
def test_other_architecture_variants_convert(
    conv_implementation, map_mode, proposal_features
):
    # The tiny run covers the default (band, s2dtan, pool).
    config = dataclasses.replace(
        TINY_MODEL,
        conv_implementation=conv_implementation,
        map_mode=map_mode,
        proposal_features=proposal_features,
    )
    model = build_inference_model(
        build_proposal_network(config), build_classifier_network(config)
    )
    session = ort.InferenceSession(
        onnx_export.convert(
            model, config, onnx_export.DEFAULT_OPSET
        ).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    clips = random_clips(2, config)
    found = onnx_export.onnx_scores(session, clips)
    expected = onnx_export.keras_scores(model, clips, 2)
    for name in expected:
        np.testing.assert_allclose(found[name], expected[name], atol=1e-5)
