"""Test setup: TensorFlow backend unless KERAS_BACKEND says otherwise, quiet
TensorFlow logs, and the small model config most tests share."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

from tal_keras.config import ModelConfig


@pytest.fixture
def small_config():
    """A config small enough for CPU tests: N 16, three scales, H 4, K 3, L 2."""
    return ModelConfig(
        num_clips=16,
        scale_layers=(4, 2, 2),
        feature_dim=6,
        hidden_size=4,
        kernel_size=3,
        num_conv_layers=2,
        num_classes=5,
        conv_implementation="whole",
    )
