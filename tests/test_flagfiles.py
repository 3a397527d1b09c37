"""The shipped flagfiles parse into run configs with what their comments
promise (a misspelt or removed flag would break README's first command),
checked against the one recipe table (tal_keras/recipes.py)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tal_keras.recipes import RECIPES, TUNED

ROOT = Path(__file__).resolve().parent.parent

PARSE = """
import dataclasses, json, sys
from tal_keras import flags
flags.FLAGS(["train.py", *sys.argv[1:]])
config, classes_from_data = flags.run_config_from_flags()
print(json.dumps({"model": dataclasses.asdict(config.model),
                  "train": dataclasses.asdict(config.train),
                  "eval": dataclasses.asdict(config.eval),
                  "recipe": config.recipe,
                  "classes_from_data": classes_from_data}, default=str))
"""


def parsed(*arguments):
    result = subprocess.run(
        [sys.executable, "-c", PARSE, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_demo_flags_carry_the_tuned_recipe():
    config = parsed("--flagfile=demo.flags")
    assert config["recipe"] == "tuned"
    assert config["model"]["num_clips"] == 64
    assert config["model"]["feature_dim"] == 256
    assert config["classes_from_data"]
    for departure in TUNED:
        assert config[departure.section][departure.field] == departure.value, departure
    assert config["train"]["select_epoch_on"] == "held_out"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_hacs_flags_are_the_report_unless_a_recipe_is_added(recipe):
    arguments = ["--flagfile=hacs.flags"]
    if recipe != "paper":
        arguments.append(f"--recipe={recipe}")
    config = parsed(*arguments)
    model = config["model"]
    assert (model["num_clips"], model["hidden_size"], model["num_classes"]) == (
        256,
        512,
        200,
    )
    for departure in TUNED:
        expected = departure.value if recipe == "tuned" else departure.paper_value
        assert config[departure.section][departure.field] == expected, departure


def test_a_settings_own_flag_overrides_its_recipe():
    config = parsed(
        "--flagfile=demo.flags", "--class_mean_evidence=0", "--nms_threshold=0.5"
    )
    assert config["model"]["class_mean_evidence"] == 0
    assert config["eval"]["nms_threshold"] == 0.5
    assert config["model"]["class_mean_logits"] is True  # still the recipe's


def test_a_flagfile_parses_in_process_without_touching_the_flags():
    from tal_keras import flags

    def state():
        hidden = flags.FLAGS["hidden_size"]
        return flags.FLAGS.is_parsed(), hidden.value, hidden.present

    before = state()
    config, classes_from_data = flags.flagfile_run_config(
        str(ROOT / "demo.flags"), "--num_classes=20"
    )
    expected = parsed("--flagfile=demo.flags", "--num_classes=20")
    assert (
        json.loads(json.dumps(dataclasses.asdict(config.model), default=str))
        == (expected["model"])
    )
    assert (config.recipe, classes_from_data) == ("tuned", False)
    assert config.model.hidden_size == 64 and state() == before
