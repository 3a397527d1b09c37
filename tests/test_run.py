"""tal_keras.run (the run folder and the run's data), the baseline's length
prior from the training annotations, and the shape of the imports: no
cycles, no import running back up, no flags in the library (that the
run-level modules import no TensorFlow: test_targets.py)."""

import ast
import dataclasses
import os
import pathlib

import numpy as np
import pytest
from test_export import TINY_MODEL
from tiny_configs import data_config_of

from tal_keras import evaluation, run
from tal_keras.config import RunConfig, TrainConfig
from tal_keras.data import synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_DATA = {"num_videos": 40, "num_classes": 4, "feature_dim": 8, "seed": 1}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("data") / "data", **TINY_DATA)


def tiny_config(workdir, data):
    return RunConfig(
        workdir=str(workdir),
        data=data_config_of(data),
        model=TINY_MODEL,
        train=TrainConfig(epochs=3),
    )


def test_run_folder_names_every_file_of_the_layout(tmp_path):
    folder = run.RunFolder(str(tmp_path))
    assert folder.config == str(tmp_path / "config.json")
    assert folder.cache == str(tmp_path / "cache")
    assert folder.best_model("proposal") == str(tmp_path / "proposal" / "best.keras")
    assert folder.result(run.METRICS) == str(tmp_path / "metrics.json")
    assert folder.show_figure("v1") == str(tmp_path / "show_v1.png")
    network_dir = folder.network("classifier")
    assert run.state_path(network_dir) == str(tmp_path / "classifier" / "state.json")
    assert run.checkpoints_dir(network_dir) == str(
        tmp_path / "classifier" / "checkpoints"
    )


def test_class_names_are_kept_exactly_and_compared_as_a_category_file_reads(
    tmp_path,
):
    from tal_keras.errors import DataError

    folder = run.RunFolder(str(tmp_path))
    assert folder.read_class_names() is None
    assert folder.checked_class_names(["a", "b"], "data") == ["a", "b"]
    names = [" Long jump", "Shot put  ", "\tdiscus", "é"]
    folder.write_class_names(names)
    assert folder.read_class_names() == names
    # The data's labels, or a category file read without the spaces.
    assert folder.checked_class_names(names, "gt.json") == names
    stripped = [name.strip() for name in names]
    assert folder.checked_class_names(stripped, "classes.txt") == names
    with pytest.raises(DataError) as error:
        folder.checked_class_names(stripped[::-1], "other.txt")
    message = str(error.value)
    assert message.startswith(
        f"{folder.class_names_file}: the run was trained with other class names"
    )
    assert "than other.txt gives" in message
    with pytest.raises(DataError, match="holds a line break"):
        folder.write_class_names(["a\nb"])
    assert folder.read_class_names() == names


def test_shared_and_exclusive_locks_and_who_holds_them(tmp_path):
    from tal_keras.errors import RunFolderError

    folder = run.RunFolder(str(tmp_path / "run"))
    with (
        folder.lock(),
        pytest.raises(RunFolderError, match=f"in use by pid {os.getpid()} on"),
        folder.lock(shared=True),
    ):
        pass
    with (
        folder.lock(shared=True),
        folder.lock(shared=True),
        pytest.raises(RunFolderError, match="in use by an export or serve"),
        folder.lock(),
    ):
        pass
    # A folder that does not exist is neither made nor locked by a reader.
    missing = run.RunFolder(str(tmp_path / "missing"))
    with missing.lock(shared=True):
        assert not os.path.exists(missing.path)


def test_enclosing_run_folder_reaches_as_far_as_leftover_removal(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    inside = [
        tmp_path / "s2dtan.onnx",
        tmp_path / "proposal" / "x.json",
        tmp_path / "proposal" / "checkpoints" / "x.keras",
    ]
    for path in inside:
        assert run.enclosing_run_folder(path).path == str(tmp_path)
    assert run.enclosing_run_folder(tmp_path / "a" / "b" / "c" / "x.json") is None
    assert run.enclosing_run_folder(tmp_path.parent / "x.json") is None


def test_config_round_trips_and_a_missing_one_says_train_first(tmp_path, tiny_data):
    folder = run.RunFolder(str(tmp_path / "run"))
    assert not folder.has_config()
    with pytest.raises(FileNotFoundError, match="train first"):
        folder.read_config()
    run_config = tiny_config(folder.path, tiny_data)
    folder.write_config(run_config)
    assert folder.read_config() == run_config
    trained = run.trained_config(
        dataclasses.replace(
            run_config, model=dataclasses.replace(TINY_MODEL, num_classes=9)
        )
    )
    assert trained.model == TINY_MODEL


def test_resume_takes_epochs_and_networks_and_refuses_other_changes(
    tmp_path, tiny_data
):
    saved = tiny_config(tmp_path, tiny_data)
    longer = dataclasses.replace(
        saved, train=dataclasses.replace(saved.train, epochs=5, networks=("proposal",))
    )
    resumed = run.resumed_config(saved, longer)
    assert resumed.train.epochs == 5 and resumed.train.networks == ("proposal",)
    wider = dataclasses.replace(
        saved, model=dataclasses.replace(TINY_MODEL, hidden_size=16)
    )
    with pytest.raises(ValueError, match="model.hidden_size"):
        run.resumed_config(saved, wider)


def test_check_fresh_refuses_a_folder_with_a_training_state(tmp_path):
    folder = run.RunFolder(str(tmp_path))
    folder.check_fresh(("proposal", "classifier"))
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "state.json").write_text('{"epochs_done": 1}')
    assert folder.read_state("classifier") == {"epochs_done": 1}
    with pytest.raises(FileExistsError, match="--resume"):
        folder.check_fresh(("proposal", "classifier"))


def test_prepare_run_resolves_num_classes_from_the_data(tmp_path, tiny_data):
    run_config = tiny_config(tmp_path, tiny_data)
    one = dataclasses.replace(
        run_config, model=dataclasses.replace(TINY_MODEL, num_classes=1)
    )
    assert run.prepare_run(one, classes_from_data=True).model.num_classes == 4
    with pytest.raises(ValueError, match="--num_classes=1"):
        run.prepare_run(one, classes_from_data=False)


def test_length_prior_of_the_annotations_equals_the_clip_cache_one(tmp_path, tiny_data):
    """The baseline's prior needs no features: from the training annotations
    alone it is bit for bit the mean of the clip cache's targets."""
    run_config = tiny_config(tmp_path, tiny_data)
    annotations, cache = run.open_subset(run_config, "training")
    lattice = run_config.model.lattice
    from_cache = np.asarray(cache.max_iou, dtype=np.float64).mean(axis=0)
    expected = (
        np.bincount(lattice.lengths, weights=from_cache)
        / np.maximum(np.bincount(lattice.lengths), 1)
    )[lattice.lengths]
    found = evaluation.length_prior(
        lattice, run.open_annotations(run_config, "training")
    )
    assert len(cache) == len(annotations) > 10
    np.testing.assert_array_equal(found, expected)
    assert np.unique(found).size > 1  # it does depend on the length


def _project_modules():
    """{module name: source path} of the library, export and entry points."""
    modules = {}
    for path in [*ROOT.glob("tal_keras/**/*.py"), *ROOT.glob("export/*.py")]:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    for entry in ("train", "evaluate"):
        modules[entry] = ROOT / f"{entry}.py"
    return modules


def _imports(module, path, modules):
    """Project modules `path` imports anywhere (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from package import module` imports the module; else the names
            # come from `node.module` itself.
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    # A package is imported before its modules anyway: not an edge.
    return {name for name in found if not module.startswith(name + ".")}


def _cycle(graph):
    """One cycle of `graph` ({node: set of nodes}) as a list, or None."""
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return trail[trail.index(target) :] + [target]
            if target not in state:
                found = visit(target, trail + [target])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def _package_of(module):
    """Subpackages count as one node: an import from a module back up into a
    package that imports it is a cycle between the two."""
    for package in ("tal_keras.data", "tal_keras.layers", "export"):
        if module == package or module.startswith(package + "."):
            return package
    return module


def test_no_import_cycles_between_modules_or_packages():
    modules = _project_modules()
    graph = {
        name: _imports(name, path, modules) - {name} for name, path in modules.items()
    }
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    packages = {}
    for name, targets in graph.items():
        node = _package_of(name)
        packages.setdefault(node, set()).update(
            _package_of(target) for target in targets if _package_of(target) != node
        )
    cycle = _cycle(packages)
    assert cycle is None, f"import running back up: {' -> '.join(cycle)}"


def test_cycle_finder_sees_a_hidden_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_entry_points_read_flags():
    modules = {**_project_modules(), "absl": None}
    readers = sorted(
        name
        for name, path in modules.items()
        if path is not None
        and {"absl", "tal_keras.flags"} & _imports(name, path, modules)
    )
    # tal_keras.flag_table is a command too (python -m): the flags' table.
    assert readers == ["evaluate", "tal_keras.flag_table", "tal_keras.flags", "train"]


def test_every_network_name_has_its_spec():
    from tal_keras import config, pipeline
    from tal_keras.networks import NETWORKS

    assert tuple(NETWORKS) == config.NETWORKS
    for name, network in NETWORKS.items():
        assert network.name == name and network.target in pipeline.TARGETS
        model = network.build(TINY_MODEL)
        assert model.name == f"{name}_network"
