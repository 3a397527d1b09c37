"""Test setup: TensorFlow backend unless KERAS_BACKEND says otherwise, quiet
TensorFlow logs, and the small model config most tests share."""

import logging
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest
from tiny_configs import tiny_model


@pytest.fixture
def small_config():
    """A config small enough for CPU tests: N 16, three scales, H 4, K 3, L 2."""
    return tiny_model(conv_implementation="whole")


@pytest.fixture(autouse=True)
def restore_logging():
    """Entry points' `main` configure the "tal_keras" logger (a handler on the
    stderr of that moment, no propagation); undo that after every test, so a
    later test's caplog still sees the records."""
    logger = logging.getLogger("tal_keras")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved
