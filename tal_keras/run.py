"""The run folder and the run's data: one home for what a run is on disk.

A run folder (WORKDIR) holds:
    config.json                     the `RunConfig` (written by train.py)
    cache/<subset>-<key>/           resampled clips and targets of a subset
    <network>/                      one per network (`config.NETWORKS`):
        checkpoints/epoch_0003.keras    model + optimizer state after epoch 3
        best.keras                      the best epoch so far by the metric
        state.json                      epochs done, checkpoint, best, history
        logs/                           TensorBoard
    proposals.json, detections.json     ActivityNet submissions (evaluation)
    metrics.json, ar_an.png             scores and the AR@AN curve
    show_<video id>.png                 evaluate.py --show
    classes.txt                         the class names, in class_scores order,
                                        one a line, exactly as the labels
    .lock                               flock-ed by the process using the run

Everything that reads or writes those paths asks `RunFolder` for them; the
run's data (annotations, class names, clip caches) is opened here too.

One writer at a time: train.py and evaluate.py hold `RunFolder.lock()`, an
exclusive flock on `.lock` that the kernel releases when the process ends
however it ends (kill -9 included), so a killed run never leaves the folder
stuck. The export and serve, which only add files, hold it shared
(`lock(shared=True)`): any number of them at once, never beside train.py or
evaluate.py. On taking the exclusive lock, what a killed process left half
written (`.saving-*.keras`, `.NAME.*.tmp`, cache builds) is removed; a
temporary still flock-ed by its writer is kept (`atomic.remove_stale`).
Results are replaced as a set (`replace_results`): all written to
temporaries first, then renamed.
numpy only: training, evaluation, the experiment driver and the export all
import this module, and it imports none of them.
"""

import contextlib
import dataclasses
import fcntl
import functools
import glob
import json
import logging
import os
import socket
import time

from tal_keras.atomic import (
    atomic_path,
    folder_problem,
    probe_folder,
    remove_stale,
    write_json_atomic,
)
from tal_keras.clips import FeatureTiming
from tal_keras.config import RunConfig
from tal_keras.data.annotations import load_annotations
from tal_keras.data.cache import build_or_open_cache, remove_abandoned_builds
from tal_keras.data.features import open_feature_store
from tal_keras.errors import DataError, OutputError, RunFolderError

logger = logging.getLogger("tal_keras")

CONFIG = "config.json"
PROPOSALS = "proposals.json"
DETECTIONS = "detections.json"
METRICS = "metrics.json"
AR_AN_PLOT = "ar_an.png"
CLASSES = "classes.txt"
LOCK = ".lock"
# What a killed process may leave: atomic_path's temporaries, checkpoint saves.
_LEFTOVER_PATTERNS = (".*.tmp", ".saving-*.keras", ".write-check-*")
# Settings that may change when a run is resumed: how long it trains, which
# networks, and how it is evaluated; never what the networks are.
RESUMABLE_TRAIN_FIELDS = ("epochs", "classifier_epochs", "networks")


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder (see the module docstring for the layout).

    Attributes:
        path: the folder, WORKDIR.
    """

    path: str

    @property
    def config(self):
        return os.path.join(self.path, CONFIG)

    @property
    def cache(self):
        return os.path.join(self.path, "cache")

    def result(self, name):
        """A result file of the run: PROPOSALS, DETECTIONS, METRICS, AR_AN_PLOT."""
        return os.path.join(self.path, name)

    def show_figure(self, video_id):
        return os.path.join(self.path, f"show_{video_id}.png")

    def network(self, network):
        """The folder of one network ("proposal" or "classifier")."""
        return os.path.join(self.path, network)

    def best_model(self, network):
        return best_model_path(self.network(network))

    def has_config(self):
        return os.path.exists(self.config)

    def read_config(self):
        """The saved `RunConfig`, as saved (its workdir is where the run was
        trained; `dataclasses.replace` it where a moved run is read).

        Raises:
            FileNotFoundError: no config.json (not a run folder, or not trained).
        """
        if not os.path.exists(self.config):
            raise FileNotFoundError(
                f"{self.config} does not exist: {self.path} is not a run folder; "
                "train first (python train.py --flagfile=...)."
            )
        with open(self.config) as stream:
            return RunConfig.from_dict(json.load(stream))

    def write_config(self, run_config):
        os.makedirs(self.path, exist_ok=True)
        write_json_atomic(self.config, run_config.to_dict(), indent=2)

    def read_state(self, network):
        """The network's state.json as a dict, or None before its first epoch."""
        return read_state(self.network(network))

    def check_writable(self):
        """Raises `OutputError` unless the run folder exists or can be made,
        and files can be created in it (before any work)."""
        try:
            probe_folder(self.path)
        except OSError as error:
            raise OutputError(
                f"{self.path}: cannot use it as the run folder: "
                f"{folder_problem(self.path, error)}."
            ) from None

    @contextlib.contextmanager
    def lock(self, shared=False):
        """Holds the run folder for this process (an flock on WORKDIR/.lock,
        released when the process ends, killed or not). Exclusive (train.py,
        evaluate.py): removes what killed processes left half written.
        Shared (export, serve): taken beside other shared holders, so that no
        exclusive holder starts and removes their temporaries meanwhile; a
        folder that does not exist or cannot be written is not locked (nor
        made): no process of this user could remove files there.

        Raises:
            OutputError: the folder cannot be made or written (exclusive).
            RunFolderError: another process holds the run folder (any holder
                when exclusive, an exclusive one when shared).
        """
        if not shared:
            self.check_writable()
        elif not os.access(self.path, os.W_OK):  # False where it does not exist
            yield self
            return
        with open(os.path.join(self.path, LOCK), "a+") as stream:
            try:
                fcntl.flock(
                    stream, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
                )
            except BlockingIOError:
                raise RunFolderError(
                    f"{self.path} is in use by {self._holder(stream)}; wait for it "
                    "to end or choose another folder."
                ) from None
            if not shared:
                stream.seek(0)
                stream.truncate()
                stream.write(
                    f"pid {os.getpid()} on {socket.gethostname()} since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                )
                stream.flush()
                self.remove_leftovers()
            yield self

    def _holder(self, stream):
        """Who holds the lock `stream` could not take: the exclusive holder
        as it wrote itself into .lock, or the shared holders."""
        with open(stream.name) as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                stream.seek(0)
                return stream.read().strip() or "another process"
        return "an export or serve writing into it (shared lock)"

    def remove_leftovers(self):
        """Removes the temporaries of killed processes (call under `lock`).
        Returns the paths removed."""
        folders = [self.path, *glob.glob(os.path.join(self.path, "*", ""))]
        folders += glob.glob(os.path.join(self.path, "*", "checkpoints", ""))
        removed = remove_stale(
            path
            for folder in folders
            for pattern in _LEFTOVER_PATTERNS
            for path in glob.glob(os.path.join(folder, pattern))
            if os.path.isfile(path)
        )
        if removed:
            logger.warning(
                "%s: removed %d half-written files left by a killed run",
                self.path,
                len(removed),
            )
        if os.path.isdir(self.cache):
            removed += remove_abandoned_builds(self.cache)
        return removed

    @property
    def class_names_file(self):
        return os.path.join(self.path, CLASSES)

    def write_class_names(self, class_names):
        """Writes the class names, one per line, exactly as given (spaces
        included: they are the labels detections carry and scoring matches).

        Raises:
            DataError: a name holding a line break.
        """
        check_storable_class_names(class_names)
        with (
            atomic_path(self.class_names_file) as temporary,
            open(temporary, "w", encoding="utf-8", newline="\n") as stream,
        ):
            stream.write("".join(f"{name}\n" for name in class_names))

    def read_class_names(self):
        """The class names the run was trained with, exactly as written
        (`write_class_names`), or None (older runs)."""
        if not os.path.exists(self.class_names_file):
            return None
        try:
            with open(self.class_names_file, encoding="utf-8", newline="") as stream:
                return stream.read().removesuffix("\n").split("\n")
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(
                f"{self.class_names_file}: cannot read the run's class names: {error}"
            ) from None

    def checked_class_names(self, class_names, source):
        """The class names the run was trained with (classes.txt), which
        `class_names` (from `source`, a category file or the annotations) must
        equal, in order; each compared as a category file is read, without
        surrounding spaces. `class_names` for runs without classes.txt.

        Raises:
            DataError: the names or their order differ.
        """
        trained_with = self.read_class_names()
        if trained_with is None:
            return list(class_names)
        if [name.strip() for name in trained_with] != [
            name.strip() for name in class_names
        ]:
            raise DataError(
                f"{self.class_names_file}: the run was trained with other class "
                f"names or another order ({len(trained_with)} classes: "
                f"{trained_with[:3]}...) than {source} gives ({len(class_names)}: "
                f"{list(class_names)[:3]}...); pass the category file it was trained "
                "with, or none (the run folder carries its class names)."
            )
        return trained_with

    def check_resumable(self, train):
        """Checks, before any work, that each network of `train` (a
        `TrainConfig`) can be continued: state.json readable, its checkpoint
        present, and no more epochs done than it is to train.

        Raises:
            RunFolderError: naming the file and what to do.
        """
        for network in train.networks:
            state = self.read_state(network)
            if state is None:
                continue
            epochs, epochs_flag = train.epochs_of(network)
            if state["epochs_done"] > epochs:
                raise RunFolderError(
                    f"{state_path(self.network(network))}: {network} network has "
                    f"trained {state['epochs_done']} epochs; {epochs_flag}={epochs} "
                    f"is fewer (pass {epochs_flag} >= {state['epochs_done']} to "
                    "continue)."
                )
            checkpoint_of(self.network(network), state)

    def replace_results(self, writers, remove=()):
        """Replaces a set of result files as a whole or not at all.

        Args:
            writers: {name: function(temporary path)} writing each file.
            remove: names of older results not in this set (e.g.
                detections.json when there is no classifier), removed with
                the replacement.

        Every file is written to a temporary beside its place first; only
        when all are written are they renamed into place, so an error (disk
        full) leaves the previous set untouched.
        """
        with contextlib.ExitStack() as stack:
            for name, write in writers.items():
                write(stack.enter_context(atomic_path(self.result(name))))
        for name in remove:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.result(name))

    def check_fresh(self, networks):
        """Raises FileExistsError if a network already holds a training state."""
        for network in networks:
            if self.read_state(network) is not None:
                raise FileExistsError(
                    f"{self.network(network)} already holds a training state; pass "
                    "--resume to continue it or choose another --workdir."
                )

    def require_best_model(self, network, hint):
        """The path of the network's best.keras; FileNotFoundError (with `hint`
        on what to run) when it is missing."""
        path = self.best_model(network)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist: {hint}")
        return path


def check_storable_class_names(class_names):
    """Raises DataError for a class name classes.txt cannot hold (one with
    a line break), naming it."""
    for name in class_names:
        if "\n" in name or "\r" in name:
            raise DataError(
                f"class name {name!r} holds a line break; rename the label."
            )


def folder_of(run_config):
    return RunFolder(run_config.workdir)


# Per-network files, for code that holds a network's folder (training).
def best_model_path(network_dir):
    return os.path.join(network_dir, "best.keras")


def state_path(network_dir):
    return os.path.join(network_dir, "state.json")


def checkpoints_dir(network_dir):
    return os.path.join(network_dir, "checkpoints")


def logs_dir(network_dir):
    return os.path.join(network_dir, "logs")


def read_state(network_dir):
    """The network's state.json, or None when there is none.

    Raises:
        RunFolderError: the file is unreadable, truncated or malformed.
    """
    path = state_path(network_dir)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as stream:
            state = json.load(stream)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(
            f"{path}: cannot read the training state ({error}); delete "
            f"{network_dir} to train that network from scratch."
        ) from None
    valid = (
        isinstance(state, dict)
        and isinstance(state.get("epochs_done"), int)
        and isinstance(state.get("history", []), list)
        and (state.get("checkpoint") is None or isinstance(state["checkpoint"], str))
    )
    if not valid:
        raise RunFolderError(
            f"{path}: malformed training state (expected epochs_done, "
            f"checkpoint, history); delete {network_dir} to train that network "
            "from scratch."
        )
    return state


def checkpoint_of(network_dir, state):
    """The checkpoint path `state` continues from, or None.

    Raises:
        RunFolderError: state.json names a checkpoint that is not there.
    """
    if not state or not state.get("checkpoint"):
        return None
    path = os.path.join(checkpoints_dir(network_dir), state["checkpoint"])
    if not os.path.exists(path):
        raise RunFolderError(
            f"{state_path(network_dir)} continues from {path}, which does not "
            f"exist; restore it, or delete {network_dir} to train that network "
            "from scratch."
        )
    return path


def resumed_config(previous, current):
    """The config a resumed run continues with: the saved one, with only the
    resumable settings and the evaluation settings taken from `current`;
    anything else differing is an error (ValueError)."""
    train = dataclasses.replace(
        previous.train,
        **{name: getattr(current.train, name) for name in RESUMABLE_TRAIN_FIELDS},
    )
    # The run folder may have been moved or copied: it is where it is now.
    resumed = dataclasses.replace(
        previous, workdir=current.workdir, train=train, eval=current.eval
    )
    differing = [
        f"{section}.{field.name}"
        for section in ("data", "model", "train")
        for field in dataclasses.fields(getattr(resumed, section))
        if getattr(getattr(resumed, section), field.name)
        != getattr(getattr(current, section), field.name)
    ]
    if differing:
        raise ValueError(
            f"--resume with settings that differ from the saved config.json: {differing}."
        )
    return resumed


def trained_config(current):
    """The config evaluate.py runs with: the networks' shapes and training as
    saved in the run folder, the data and evaluation settings of `current`."""
    trained = folder_of(current).read_config()
    return dataclasses.replace(current, model=trained.model, train=trained.train)


# The run's data.
def ensure_data(data_config):
    """Generates the synthetic dataset where the config asks for it and it is missing."""
    if data_config.synthetic_videos <= 0 or os.path.exists(data_config.annotations):
        return
    from tal_keras.data import synthetic

    root = os.path.dirname(os.path.abspath(data_config.annotations))
    logger.info(
        "generating the synthetic dataset (%d videos) in %s",
        data_config.synthetic_videos,
        root,
    )
    synthetic.ensure_synthetic(root, num_videos=data_config.synthetic_videos)


@functools.lru_cache(maxsize=8)
def class_names_of(data_config):
    """The class list of the run: the category file's, else the sorted labels."""
    annotations = load_annotations(
        data_config.annotations, category_file=data_config.category_file or None
    )
    return annotations.class_names


def prepare_run(run_config, classes_from_data):
    """Makes the data available and resolves num_classes from it; checks the
    config against the data before any training starts."""
    ensure_data(run_config.data)
    class_names = class_names_of(run_config.data)
    check_storable_class_names(class_names)
    model = run_config.model
    if classes_from_data:
        model = dataclasses.replace(model, num_classes=len(class_names))
    elif model.num_classes != len(class_names):
        raise ValueError(
            f"--num_classes={model.num_classes} but {run_config.data.annotations} "
            f"has {len(class_names)} classes; pass --num_classes=0 to take them from the data."
        )
    return dataclasses.replace(run_config, model=model)


def open_annotations(run_config, subset):
    """`Annotations` of `subset` (category file and blocklist applied)."""
    data = run_config.data
    return load_annotations(
        data.annotations,
        subset=subset,
        category_file=data.category_file or None,
        blocklist=data.blocklist,
    )


def feature_timing(data_config):
    return FeatureTiming(data_config.fps, data_config.stride, data_config.window)


def open_subset(run_config, subset):
    """(annotations, cache) of the usable videos of `subset`; builds the
    clip cache under the run folder the first time."""
    data = run_config.data
    annotations = open_annotations(run_config, subset)
    stat = os.stat(data.annotations)
    cache = build_or_open_cache(
        folder_of(run_config).cache,
        subset,
        annotations,
        open_feature_store(data.features),
        run_config.model.lattice,
        feature_timing(data),
        run_config.model.feature_dim,
        dtype=run_config.train.cache_dtype,
        key_fields={
            "features": os.path.abspath(data.features),
            "annotations_mtime": stat.st_mtime,
        },
    )
    logger.info(
        "%s: %d videos usable, %d skipped", subset, len(cache), len(cache.skipped)
    )
    if subset == data.train_subset:
        warn_about_untrained_classes(annotations, cache.video_ids, subset)
    return annotations, cache


def classes_without_instance(annotations, video_ids):
    """The class names of `annotations` that no segment of `video_ids` has."""
    used = set()
    for video_id in video_ids:
        used.update(annotations.videos[video_id].labels.tolist())
    return [
        name for index, name in enumerate(annotations.class_names) if index not in used
    ]


def warn_about_untrained_classes(annotations, video_ids, subset):
    """One warning when classes have no instance in the usable videos of the
    training subset: their classifier outputs are never trained, and they
    count in the detection mAP of the subsets that have them. Returns those
    classes."""
    missing = classes_without_instance(annotations, video_ids)
    if missing:
        total = len(annotations.class_names)
        logger.warning(
            "%s: %d of the %d classes have no instance in the %d usable videos "
            "of subset %s (%s); the classifier never learns them and they "
            "count in the detection mAP wherever they are annotated",
            annotations.path,
            len(missing),
            total,
            len(video_ids),
            subset,
            ", ".join(repr(name) for name in missing),
        )
    return missing


@contextlib.contextmanager
def shared_locks(folders):
    """Holds each of the run folders `folders` (`RunFolder`s; None and
    repeats skipped) with a shared lock, as the export and serve do."""
    with contextlib.ExitStack() as stack:
        held = set()
        for folder in folders:
            if folder is None or os.path.realpath(folder.path) in held:
                continue
            held.add(os.path.realpath(folder.path))
            stack.enter_context(folder.lock(shared=True))
        yield


def enclosing_run_folder(path):
    """The run folder whose leftover removal reaches the file `path` (the
    folder holding config.json among its folder, parent and grandparent:
    WORKDIR, WORKDIR/<network>, WORKDIR/<network>/checkpoints), or None."""
    folder = os.path.dirname(os.path.abspath(path))
    for _ in range(3):
        if os.path.isfile(os.path.join(folder, CONFIG)):
            return RunFolder(folder)
        folder = os.path.dirname(folder)
    return None
