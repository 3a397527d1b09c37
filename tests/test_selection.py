"""The kept epoch is chosen on held-out training videos by default: which
videos, that they do not train, and what metrics.json says of the choice."""

import json

import numpy as np
import pytest
from python_process import run_python
from tiny_configs import tiny_run_flagfile

from tal_keras.config import DataConfig, RunConfig, TrainConfig
from tal_keras.data.annotations import load_annotations
from tal_keras.data.cache import ClipCache
from tal_keras.experiment import epoch_choice
from tal_keras.selection import held_out_rows


def test_held_out_rows_depend_on_the_ids_alone():
    ids = [f"video_{n}" for n in range(50)]
    rows = held_out_rows(ids, 0.1)
    assert len(rows) == 5 and list(rows) == sorted(rows)
    # Another order of the same videos holds out the same videos.
    shuffled = list(np.random.default_rng(0).permutation(ids))
    assert {shuffled[row] for row in held_out_rows(shuffled, 0.1)} == {
        ids[row] for row in rows
    }
    # A larger share holds out a superset.
    assert {ids[row] for row in rows} <= {ids[row] for row in held_out_rows(ids, 0.3)}


def test_held_out_rows_keep_one_of_each_side():
    assert len(held_out_rows(["a", "b"], 0.01)) == 1
    assert len(held_out_rows(["a", "b"], 0.99)) == 1
    assert len(held_out_rows(["a"], 0.5)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("where", ["held_out", "eval_subset"])
def test_metrics_say_how_the_kept_epoch_was_chosen(tmp_path, where):
    flagfile = tiny_run_flagfile(
        tmp_path,
        "run",
        "--epochs=2",
        "--num_conv_layers=1",
        f"--select_epoch_on={where}",
    )
    result = run_python(["train.py", f"--flagfile={flagfile}"])
    with open(tmp_path / "run" / "metrics.json") as stream:
        metrics = json.load(stream)
    for network in ("proposal", "classifier"):
        epochs = metrics["epochs"][network]
        assert epochs["last"] == 2 and epochs["kept"] in (1, 2)
        assert ("held-out" in epochs["chosen_on"]) == (where == "held_out")
        assert f"{network} network: epoch {epochs['kept']} of 2 kept" in result.stdout
    assert set(metrics["last_epoch"]) == {"proposals", "detection"}
    if all(item["kept"] == 2 for item in metrics["epochs"].values()):
        assert metrics["last_epoch"]["proposals"] == metrics["proposals"]
    # 40 videos, 28 of them training: 3 held out, 25 train.
    trained_on = 25 if where == "held_out" else 28
    assert f"training on {trained_on} videos" in result.stderr


def test_videos_without_segments_are_never_held_out(tmp_path):
    database = {
        f"v{n}": {
            "subset": "training",
            "duration": 30.0,
            "annotations": (
                [{"label": "Jump", "segment": [1.0, 9.0]}] if n % 2 else []
            ),
        }
        for n in range(20)
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"database": database}))
    annotations = load_annotations(str(path), subset="training")
    cache = ClipCache.__new__(ClipCache)
    cache.video_ids = sorted(database)
    cache.durations = np.full(20, 30.0)
    cache.clips = np.zeros((20, 4, 2), "float32")
    cache.max_iou = np.zeros((20, 3), "float32")
    cache.classes = np.zeros((20, 3), "int16")
    run_config = RunConfig(
        workdir=str(tmp_path / "run"),
        data=DataConfig(annotations=str(path)),
        train=TrainConfig(selection_fraction=0.2),
    )
    fit_cache, choice = epoch_choice(run_config, annotations, cache, None, None)
    held_out = choice.cache.video_ids
    assert len(held_out) == 2 and all(int(v[1:]) % 2 for v in held_out)
    assert len(fit_cache) == 18 and not set(held_out) & set(fit_cache.video_ids)
    assert set(choice.ground_truth.video_ids) == set(held_out)
