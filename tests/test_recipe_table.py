"""bench/recipe_table.py: one row per finished run, read from its files."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import recipe_table


def write_run(folder, recipe, detection):
    folder.mkdir()
    config = {
        "recipe": recipe,
        "data": {"annotations": "/d/scene-high/annotations.json"},
    }
    metrics = {
        "proposals": {"AUC": 0.6956},
        "baseline": {"proposals": {"AUC": 0.5857}},
        "epochs": {"proposal": {"kept": 2, "last": 6}},
        "last_epoch": {"proposals": {"AUC": 0.6812}},
    }
    if detection:
        metrics["detection"] = {"average_mAP": 0.3141}
        metrics["last_epoch"]["detection"] = {"average_mAP": 0.3007}
        metrics["epochs"]["classifier"] = {"kept": 6, "last": 6}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return str(folder)


def test_rows_of_runs_with_and_without_a_classifier(tmp_path, capsys):
    tuned = write_run(tmp_path / "a", "tuned", detection=True)
    paper = write_run(tmp_path / "b", "paper", detection=False)
    recipe_table.main([tuned, paper, "--out", str(tmp_path / "t.md")])
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert lines == capsys.readouterr().out.splitlines()
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert lines[2] == (
        "| tuned | scene-high | 69.56 | 58.57 | +10.99 | 31.41 | 2 / 6 | 6 / 6 "
        "| 68.12 | 30.07 |"
    )
    assert lines[3] == (
        "| paper | scene-high | 69.56 | 58.57 | +10.99 | - | 2 / 6 | - | 68.12 | - |"
    )
