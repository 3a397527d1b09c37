"""Test setup: TensorFlow backend unless KERAS_BACKEND says otherwise, quiet
TensorFlow logs, the small model config most tests share, and the "tal_keras"
logger restored after every test."""

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


# The "tal_keras" logger as the tests found it: handlers, propagation, level.
_LOGGER = logging.getLogger("tal_keras")
_PRISTINE_LOGGER = (list(_LOGGER.handlers), _LOGGER.propagate, _LOGGER.level)


@pytest.fixture(autouse=True)
def restore_logging():
    """The entry points' `main` configures the "tal_keras" logger (a handler
    on the captured stderr, no propagation), in tests and in module fixtures
    alike; after each test the logger is as it was before the first one, so
    caplog sees its records in every module whatever ran before."""
    yield
    _LOGGER.handlers[:], _LOGGER.propagate, _LOGGER.level = _PRISTINE_LOGGER
