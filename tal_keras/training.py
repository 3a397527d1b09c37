"""Training one network with Keras `fit`: atomic per-epoch checkpoints that
hold the optimizer state, resumption, the best epoch by a validation metric,
TensorBoard logs, data parallel on several GPUs (`tal_keras.data_parallel`).

The files of a network's folder (WORKDIR/<network>/: checkpoints/, best.keras,
state.json, logs/) are named by `tal_keras.run`.
"""

import glob
import logging
import math
import os
import shutil
import sys
import time

import keras

from tal_keras import data_parallel, pipeline
from tal_keras.atomic import atomic_path, write_json_atomic
from tal_keras.errors import RunFolderError, raise_if_stop_requested
from tal_keras.networks import NETWORKS
from tal_keras.run import (
    best_model_path,
    checkpoint_of,
    checkpoints_dir,
    folder_of,
    logs_dir,
    read_state,
    state_path,
)

logger = logging.getLogger("tal_keras")


def save_model_atomic(model, path):
    """Saves a `.keras` file so that `path` is either the old file or the new one
    (a killed save leaves a `.saving-*.keras`, removed when the run folder is
    next locked)."""
    with atomic_path(path, prefix=".saving-") as temporary:
        model.save(temporary)


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: scores the model, saves it, keeps the best, then
    records all of it in state.json, each file written atomically. Before
    every step and after every epoch it ends training with KeyboardInterrupt
    if a stop signal came (`errors.raise_if_stop_requested`).

    Args:
        network_dir: the network's run folder.
        metric_name: name of the validation metric (higher is better).
        score_fn: model -> float, the validation metric; None keeps every
            epoch's loss instead (lower is better).
        state: the state to continue from (resume), or None.
    """

    def __init__(self, network_dir, metric_name, score_fn, state=None):
        super().__init__()
        self.network_dir = network_dir
        self.metric_name = metric_name
        self.score_fn = score_fn
        self.state = state or {
            "epochs_done": 0,
            "checkpoint": None,
            "metric": metric_name,
            "best_epoch": None,
            "best_value": None,
            "history": [],
            "finished": False,
        }

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        # Not on_train_batch_end: Keras would then wait for each step's logs.
        raise_if_stop_requested()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.score_fn is not None:
            value = float(self.score_fn(self.model))
            logs[self.metric_name] = value
            better = (
                self.state["best_value"] is None or value > self.state["best_value"]
            )
        else:
            value = float(logs["loss"])
            better = (
                self.state["best_value"] is None or value < self.state["best_value"]
            )
        checkpoint = f"epoch_{epoch + 1:04d}.keras"
        save_model_atomic(
            self.model, os.path.join(checkpoints_dir(self.network_dir), checkpoint)
        )
        if better:
            save_model_atomic(self.model, best_model_path(self.network_dir))
            self.state["best_epoch"] = epoch + 1
            self.state["best_value"] = value
        self.state["epochs_done"] = epoch + 1
        self.state["checkpoint"] = checkpoint
        self.state["history"].append(
            {"epoch": epoch + 1, **{key: float(item) for key, item in logs.items()}}
        )
        write_json_atomic(state_path(self.network_dir), self.state, indent=2)
        # Older checkpoints go only once the state no longer points at them.
        for path in glob.glob(
            os.path.join(checkpoints_dir(self.network_dir), "epoch_*.keras")
        ):
            if os.path.basename(path) != checkpoint:
                os.remove(path)
        # One line per epoch: the whole log where stdout is no terminal.
        started = getattr(self, "_epoch_started", None)
        logger.info(
            "%s epoch %d/%s: %s%s%s",
            os.path.basename(os.path.normpath(self.network_dir)),
            epoch + 1,
            self.params.get("epochs", "?"),
            ", ".join(f"{key} {float(item):.4f}" for key, item in logs.items()),
            " (best)" if better else "",
            "" if started is None else f", {time.perf_counter() - started:.1f} s",
        )
        raise_if_stop_requested()

    def on_train_end(self, logs=None):
        if self.state["epochs_done"] >= self.params.get("epochs", 0):
            self.state["finished"] = True
            write_json_atomic(state_path(self.network_dir), self.state, indent=2)


def train_network(
    network,
    run_config,
    train_dataset,
    score_fn=None,
    metric_name="loss",
    resume=False,
    verbose=None,
    training_data=None,
    devices=None,
):
    """Trains `network` ("proposal" or "classifier") and returns its best model path.

    Args:
        network: which network.
        run_config: the `RunConfig`.
        train_dataset: tf.data of (clip_features, targets), one epoch; a
            shuffled `pipeline.make_dataset` takes its epoch from `fit`.
        score_fn: model -> validation metric (higher is better), or None.
        metric_name: the metric's name in logs and TensorBoard.
        resume: continue from the last checkpoint, optimizer state included.
        verbose: Keras fit verbosity (1: progress bar); None: `fit_verbosity()`.
        training_data: `networks.TrainingData`, what a new network starts
            from (`Network.initialize`: the class means, the length prior);
            None: as built.
        devices: devices to split each batch across (`data_parallel`); None:
            the GPUs when there are several, else one device.
    """
    network_dir = folder_of(run_config).network(network)
    state = read_state(network_dir)
    if state is not None and not resume:
        raise FileExistsError(
            f"{network_dir} already holds a training state ({state['epochs_done']} epochs "
            "done); pass --resume to continue it or choose another --workdir."
        )
    train = run_config.train
    epochs, epochs_flag = train.epochs_of(network)
    if state is not None and state["epochs_done"] > epochs:
        raise RunFolderError(
            f"{network_dir}: {state['epochs_done']} epochs done, more than "
            f"{epochs_flag}={epochs}; pass {epochs_flag} >= {state['epochs_done']}."
        )
    if state is not None and state["epochs_done"] == epochs:
        logger.info(
            "%s network already trained (%d epochs); skipping",
            network,
            state["epochs_done"],
        )
        return best_model_path(network_dir)
    if state is not None and state.get("finished"):
        logger.info(
            "%s network: %d epochs done, continuing to %s=%d",
            network,
            state["epochs_done"],
            epochs_flag,
            epochs,
        )
        state = {**state, "finished": False}
    if train.mixed_precision:
        keras.mixed_precision.set_global_policy(train.dtype_policy)
    keras.utils.set_random_seed(train.seed)
    if verbose is None:
        verbose = fit_verbosity()
    # Built, compiled and fitted in the scope: JAX's DataParallel needs fit
    # inside it, not only the variables.
    with data_parallel.training_scope(devices) as replicas:
        checkpoint = checkpoint_of(network_dir, state)
        if checkpoint is not None:
            logger.info("resuming %s network from %s", network, checkpoint)
            model = load_checkpoint(checkpoint, network_dir)
        else:
            if state is not None:
                state = None  # a state without a checkpoint: nothing to resume
            if os.path.isdir(network_dir):
                shutil.rmtree(checkpoints_dir(network_dir), ignore_errors=True)
            model = build_and_compile(network, run_config)
            if training_data is not None:
                NETWORKS[network].initialize(model, training_data)
        initial_epoch = state["epochs_done"] if state else 0
        callbacks = [
            EpochCheckpoint(network_dir, metric_name, score_fn, state),
            keras.callbacks.TensorBoard(logs_dir(network_dir)),
            # Epoch e's data order from (seed, e), so a resumed run sees the same.
            *pipeline.epoch_callbacks(train_dataset),
        ]
        if train.lr_schedule != "constant":
            callbacks.insert(
                0,
                keras.callbacks.LearningRateScheduler(
                    lambda epoch: epoch_learning_rate(train, epoch, epochs)
                ),
            )
        model.fit(
            data_parallel.trim_batches(train_dataset, replicas),
            epochs=epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the tf.data pipeline shuffles
        )
    return best_model_path(network_dir)


def epoch_learning_rate(train, epoch, epochs):
    """The learning rate of epoch `epoch` (from 0) of `epochs` under
    `train.lr_schedule`."""
    if train.lr_schedule == "cosine":
        return train.learning_rate * (1 + math.cos(math.pi * epoch / epochs)) / 2
    return train.learning_rate


def load_checkpoint(path, network_dir):
    """The model and optimizer state of a checkpoint; `RunFolderError` naming
    it when it cannot be loaded (truncated, corrupt)."""
    import zipfile

    try:
        return keras.saving.load_model(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise RunFolderError(
            f"{path}: cannot load the checkpoint (truncated or corrupt): {error}; "
            f"delete {network_dir} to train that network from scratch."
        ) from None


def fit_verbosity(stream=None):
    """Keras fit verbosity for `stream` (default stdout, where Keras writes):
    1, the progress bar, on a terminal; 0 elsewhere (a file, a pipe, CI, a job
    scheduler), where the bar would write one line per update, thousands per
    run, and `EpochCheckpoint`'s one line per epoch is the log."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return 1 if isatty is not None and isatty() else 0
    except ValueError:  # a closed stream
        return 0


def build_and_compile(network, run_config):
    spec = NETWORKS[network]
    train = run_config.train
    model = spec.build(run_config.model)
    loss = spec.loss(train)
    model.compile(optimizer=keras.optimizers.Adam(train.learning_rate), loss=loss)
    return model
