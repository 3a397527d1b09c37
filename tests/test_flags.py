"""tal_keras.flags: one flag per config field, named as the field, turned
into a RunConfig by one function; the earlier flag names still work."""

import dataclasses

import pytest
from absl.testing import flagsaver

from tal_keras import flags as run_flags
from tal_keras.config import RunConfig

FLAGS = run_flags.FLAGS


def parsed(*args):
    FLAGS.unparse_flags()
    FLAGS(["train.py", *args])
    return run_flags.run_config_from_flags()


def test_every_config_field_has_the_flag_of_its_name():
    for section, config_class in run_flags.SECTIONS.items():
        for field in dataclasses.fields(config_class):
            name = run_flags.flag_name(section, field.name)
            assert name in FLAGS, f"{section}.{field.name} has no flag --{name}"
            if name != field.name:  # only where two sections share a field name
                assert name == f"{section}_{field.name}"


@flagsaver.flagsaver
def test_defaults_give_the_default_config():
    run_config, classes_from_data = parsed()
    default = RunConfig(workdir="runs/hacs")
    assert classes_from_data  # --num_classes defaults to 0: from the data
    assert run_config.data == default.data
    assert run_config.train == default.train
    assert run_config.eval == default.eval
    model = dataclasses.replace(default.model, num_classes=1)
    assert run_config.model == model


@flagsaver.flagsaver
def test_each_flag_lands_in_its_field():
    run_config, classes_from_data = parsed(
        "--workdir=/tmp/w",
        "--stride=4",
        "--window=16",
        "--map_mode=2dtan",
        "--scale_layers=16",
        "--num_clips=16",
        "--num_classes=7",
        "--batch_size=3",
        "--eval_batch_size=5",
        "--networks=classifier",
        "--blocklist=a,b",
        "--soft_nms",
        "--top_pairs=50",
        "--class_mean_flank=0.5",
        "--selection_fraction=0.2",
    )
    assert not classes_from_data
    assert run_config.workdir == "/tmp/w"
    assert (run_config.data.stride, run_config.data.window) == (4, 16)
    assert run_config.data.blocklist == ("a", "b")
    assert run_config.model.map_mode == "2dtan"
    assert run_config.model.scale_layers == (16,)
    assert run_config.model.class_mean_flank == 0.5
    assert run_config.train.selection_fraction == 0.2
    assert run_config.model.num_classes == 7
    assert run_config.train.batch_size == 3
    assert run_config.train.networks == ("classifier",)
    assert run_config.eval.batch_size == 5
    assert run_config.eval.soft_nms and run_config.eval.top_pairs == 50


@flagsaver.flagsaver
def test_earlier_flag_names_are_aliases():
    run_config, _ = parsed("--map=2dtan", "--feature_stride=4", "--feature_window=8")
    assert run_config.model.map_mode == "2dtan"
    assert (run_config.data.stride, run_config.data.window) == (4, 8)


@flagsaver.flagsaver
@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--scale_layers=4,x", "integers"),
        ("--num_classes=-1", "num_classes"),
        ("--class_mean_flank=-1", "class_mean_flank"),
        ("--class_mean_evidence=-2", "class_mean_evidence"),
        ("--selection_fraction=1", "selection_fraction"),
    ],
)
def test_a_bad_value_is_a_value_error_naming_the_flag(flag, message):
    with pytest.raises(ValueError, match=message):
        parsed(flag)
