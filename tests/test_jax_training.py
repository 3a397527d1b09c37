"""train.py on the JAX backend (the GPU path) as a user runs it,
on the CPU: a tiny run, resumed to more epochs, whose checkpoints load and
score the same on the TensorFlow backend."""

import json

import keras
import pytest
from python_process import run_python
from tiny_configs import tiny_run_flagfile

import tal_keras.layers  # registers the layers the saved models use
import tal_keras.losses  # noqa: F401  (the losses of their compile config)


@pytest.mark.slow
def test_jax_backend_trains_resumes_and_its_run_scores_the_same_on_tensorflow(
    tmp_path,
):
    workdir = tmp_path / "run"
    flagfile = tiny_run_flagfile(
        tmp_path, "run", "--num_conv_layers=2", "--overlap_t_min=0.1"
    )
    first = run_python(
        ["train.py", f"--flagfile={flagfile}", "--epochs=1"], backend="jax", timeout=900
    )
    assert "results in" in first.stdout + first.stderr
    run_python(
        ["train.py", f"--flagfile={flagfile}", "--epochs=2", "--resume"],
        backend="jax",
        timeout=900,
    )
    steps_per_epoch = 7  # 28 training videos, batch 4
    for network in ("proposal", "classifier"):
        state = json.loads((workdir / network / "state.json").read_text())
        assert state["finished"] and state["epochs_done"] == 2
        assert [entry["epoch"] for entry in state["history"]] == [1, 2]
        # Saved by JAX, loaded here on TensorFlow, optimizer state included.
        checkpoint = keras.saving.load_model(
            workdir / network / "checkpoints" / state["checkpoint"]
        )
        iterations = keras.ops.convert_to_numpy(checkpoint.optimizer.iterations)
        assert int(iterations) == 2 * steps_per_epoch
    jax_metrics = json.loads((workdir / "metrics.json").read_text())

    # The same best epochs scored on TensorFlow: the networks compute the same
    # scores on both backends (to float rounding), so the metrics agree.
    run_python(
        ["evaluate.py", f"--flagfile={flagfile}"], backend="tensorflow", timeout=900
    )
    tf_metrics = json.loads((workdir / "metrics.json").read_text())
    for name, value in jax_metrics["proposals"].items():
        assert tf_metrics["proposals"][name] == pytest.approx(value, abs=1e-3), name
    assert tf_metrics["detection"]["average_mAP"] == pytest.approx(
        jax_metrics["detection"]["average_mAP"], abs=1e-3
    )


def test_mixed_precision_dtype_picks_the_keras_policy():
    from tal_keras.config import TrainConfig

    assert TrainConfig().dtype_policy == "float32"
    assert TrainConfig(mixed_precision=True).dtype_policy == "mixed_float16"
    bfloat16 = TrainConfig(mixed_precision=True, mixed_precision_dtype="bfloat16")
    assert bfloat16.dtype_policy == "mixed_bfloat16"
    assert keras.dtype_policies.DTypePolicy(bfloat16.dtype_policy).compute_dtype == (
        "bfloat16"
    )
    with pytest.raises(ValueError, match="mixed_precision_dtype"):
        TrainConfig(mixed_precision=True, mixed_precision_dtype="int8")
