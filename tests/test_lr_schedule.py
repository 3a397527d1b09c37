"""--lr_schedule=cosine (a departure from the report's constant rate): the
rate of each epoch, and that training uses it."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_configs import EIGHT_CLIPS, tiny_model

from tal_keras import training
from tal_keras.config import RunConfig, TrainConfig

TINY = tiny_model(**EIGHT_CLIPS, feature_dim=4)


def test_cosine_falls_from_the_rate_to_near_zero_over_the_epochs():
    train = TrainConfig(epochs=4, learning_rate=0.01, lr_schedule="cosine")
    rates = [training.epoch_learning_rate(train, epoch, 4) for epoch in range(4)]
    np.testing.assert_allclose(
        rates, 0.01 * np.array([1.0, 0.8535534, 0.5, 0.1464466]), rtol=1e-6
    )
    constant = TrainConfig(epochs=4, learning_rate=0.01)
    assert [training.epoch_learning_rate(constant, e, 4) for e in range(4)] == [
        0.01
    ] * 4


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


@pytest.mark.parametrize(
    ("schedule", "last_rate"), [("cosine", 0.5), ("constant", 1.0)]
)
def test_training_steps_at_the_scheduled_rate(tmp_path, schedule, last_rate):
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((4, TINY.num_clips, TINY.feature_dim), "float32")
    targets = rng.uniform(size=(4, TINY.lattice.num_proposals)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((clips, targets)).batch(2)
    run_config = RunConfig(
        workdir=str(tmp_path),
        model=TINY,
        train=TrainConfig(
            epochs=2, batch_size=2, learning_rate=0.004, lr_schedule=schedule
        ),
    )
    training.train_network("proposal", run_config, dataset, verbose=0)
    # The last epoch's checkpoint holds the optimizer as it stepped then.
    checkpoint = os.path.join(tmp_path, "proposal", "checkpoints", "epoch_0002.keras")
    model = keras.saving.load_model(checkpoint)
    rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert rate == pytest.approx(0.004 * last_rate, rel=1e-6)
