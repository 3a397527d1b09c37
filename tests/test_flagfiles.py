"""The shipped flagfiles parse into run configs with what their comments
promise (a misspelt or removed flag would break README's first command)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEPARTURES = (
    "boundary_features",
    "overlap_cell_bias",
    "boundary_prototypes",
    "body_prototypes",
    "class_prototypes",
)

PARSE = """
import dataclasses, json, sys
from tal_keras import flags
flags.FLAGS(["train.py", "--flagfile=" + sys.argv[1]])
config, classes_from_data = flags.run_config_from_flags()
print(json.dumps({"model": dataclasses.asdict(config.model),
                  "train": dataclasses.asdict(config.train),
                  "eval": dataclasses.asdict(config.eval),
                  "classes_from_data": classes_from_data}, default=str))
"""


def parsed(flagfile):
    result = subprocess.run(
        [sys.executable, "-c", PARSE, flagfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_demo_flags_carry_the_benchmark_recipe():
    config = parsed("demo.flags")
    model = config["model"]
    assert model["num_clips"] == 64
    assert model["feature_dim"] == 256
    assert config["classes_from_data"]
    for departure in DEPARTURES:
        assert model[departure] is True, departure
    assert model["clip_normalization"] == "video"
    assert model["clip_context"] == 3
    assert model["body_prototype_flank"] == 0.25
    assert model["prototype_evidence"] == 64
    assert config["train"]["overlap_positive_weight"] == 10
    assert config["eval"]["proposal_soft_nms_sigma"] == 2
    assert config["eval"]["soft_nms"] and config["eval"]["nms_threshold"] == 0.1


def test_hacs_flags_keep_the_reports_method():
    config = parsed("hacs.flags")
    model = config["model"]
    assert (model["num_clips"], model["hidden_size"], model["num_classes"]) == (
        256,
        512,
        200,
    )
    for departure in DEPARTURES:
        assert model[departure] is False, departure
    assert model["clip_normalization"] == "none"
    assert model["body_prototype_flank"] == 0
    assert model["prototype_evidence"] == 0
    assert config["eval"]["proposal_soft_nms_sigma"] == 0
    assert not config["eval"]["soft_nms"] and config["eval"]["nms_threshold"] == 0.5
