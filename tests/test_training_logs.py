"""What training writes when stdout is not a terminal (CI, nohup, a job
scheduler): one line per epoch, no progress-bar frames."""

import contextlib
import io
import logging
import re

import numpy as np
import tensorflow as tf
from tiny_configs import EIGHT_CLIPS, tiny_model

from tal_keras import training
from tal_keras.config import RunConfig, TrainConfig

TINY = tiny_model(**EIGHT_CLIPS, feature_dim=4)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_fit_verbosity_is_the_bar_on_a_terminal_only():
    assert training.fit_verbosity(_Terminal()) == 1
    assert training.fit_verbosity(io.StringIO()) == 0
    closed = io.StringIO()
    closed.close()
    assert training.fit_verbosity(closed) == 0


def test_training_off_a_terminal_logs_one_line_per_epoch(tmp_path):
    rng = np.random.default_rng(0)
    num_proposals = TINY.lattice.num_proposals
    clips = rng.standard_normal((12, TINY.num_clips, TINY.feature_dim), "float32")
    targets = rng.uniform(size=(12, num_proposals)).astype("float32")
    # 6 steps per epoch: a bar would write several frames per epoch.
    dataset = tf.data.Dataset.from_tensor_slices((clips, targets)).batch(2)
    run_config = RunConfig(
        workdir=str(tmp_path), model=TINY, train=TrainConfig(epochs=3, batch_size=2)
    )
    stdout = io.StringIO()  # not a terminal
    records = io.StringIO()
    handler = logging.StreamHandler(records)
    logger = logging.getLogger("tal_keras")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(stdout):
            training.train_network("proposal", run_config, dataset)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    written = stdout.getvalue() + records.getvalue()
    assert "\r" not in written and "\b" not in written and "\x1b" not in written
    assert stdout.getvalue() == ""
    epoch_lines = [
        line for line in records.getvalue().splitlines() if " epoch " in line
    ]
    assert len(epoch_lines) == 3
    for number, line in enumerate(epoch_lines, start=1):
        assert re.fullmatch(
            rf"proposal epoch {number}/3: loss \d+\.\d{{4}}( \(best\))?, \d+\.\d s",
            line,
        ), line
