"""Data parallel training (tal_keras.data_parallel) on two virtual CPU devices:
gradients, losses and predictions equal one device's, on TensorFlow
(MirroredStrategy) and JAX (keras.distribution.DataParallel). Each backend
runs in a subprocess, since the device split must be set before it starts."""

import os
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from python_process import run_python

from tal_keras import data_parallel

SCRIPT = textwrap.dedent(
    """
    import os
    import sys

    backend = sys.argv[1]
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        devices = ["/cpu:0", "/cpu:1"]
    else:
        import jax

        devices = jax.devices()
        assert len(devices) == 2, devices
    import keras
    import numpy as np

    from tal_keras import data_parallel, inference, losses, models
    from tal_keras.config import ModelConfig

    config = ModelConfig(
        num_clips=16, scale_layers=(4, 2, 2), feature_dim=8, hidden_size=8,
        kernel_size=3, num_conv_layers=2, num_classes=5,
    )
    proposals = config.lattice.num_proposals
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(6, 16, 8)).astype("float32")
    max_iou = rng.uniform(size=(6, proposals)).astype("float32")
    labels = rng.integers(0, 5, size=(6, proposals)).astype("int32")
    # Each device's half of the batch holds a different number of labelled
    # cells, so a per-device average would differ from the batch's.
    labels[:3][rng.uniform(size=(3, proposals)) < 0.8] = -1
    labels[3:][rng.uniform(size=(3, proposals)) < 0.2] = -1
    LEARNING_RATE = 1e-2


    def train(network, scope_devices):
        import tensorflow as tf

        with data_parallel.training_scope(scope_devices) as replicas:
            keras.utils.set_random_seed(0)
            if network == "proposal":
                model = models.build_proposal_network(config)
                loss, targets = losses.ScaledOverlapLoss(t_min=0.1), max_iou
            else:
                model = models.build_classifier_network(config)
                loss, targets = losses.ProposalClassLoss(), labels
            model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=loss)
            before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
            first_step = []

            class FirstStep(keras.callbacks.Callback):
                def on_train_batch_end(self, batch, logs=None):
                    if not first_step:
                        first_step.extend(
                            keras.ops.convert_to_numpy(w)
                            for w in self.model.trainable_weights
                        )

            dataset = tf.data.Dataset.from_tensor_slices((clips, targets)).batch(6)
            history = model.fit(
                data_parallel.trim_batches(dataset, replicas),
                epochs=3,
                verbose=0,
                callbacks=[FirstStep()],
            )
            # SGD moved each weight by -lr * gradient in the first step.
            gradients = [
                (old - new) / LEARNING_RATE for old, new in zip(before, first_step)
            ]
            predictions = inference.predict_scores(
                model, _Cache(clips[:5], max_iou[:5]), 3
            )
            return replicas, history.history["loss"], gradients, predictions


    class _Cache:
        def __init__(self, clips, max_iou):
            self.clips, self.max_iou = clips, max_iou

        def __len__(self):
            return len(self.clips)


    out = {}
    for network in ("proposal", "classifier"):
        for name, scope_devices in (("one", devices[:1]), ("two", devices)):
            replicas, history, gradients, predictions = train(network, scope_devices)
            out[f"{network}_{name}_replicas"] = np.array(replicas)
            out[f"{network}_{name}_losses"] = np.array(history)
            out[f"{network}_{name}_predictions"] = np.asarray(predictions)
            for index, gradient in enumerate(gradients):
                out[f"{network}_{name}_gradient_{index}"] = gradient
    np.savez(sys.argv[2], **out)
    print(keras.backend.backend())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_train_as_one(backend, tmp_path):
    changes = {}
    if backend == "jax":
        changes["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_force_host_platform_device_count=2"
        ).strip()
    out = tmp_path / "out.npz"
    result = run_python(
        ["-c", SCRIPT, backend, out], backend=backend, changes=changes, timeout=900
    )
    assert result.stdout.strip().splitlines()[-1] == backend
    saved = np.load(out)
    for network in ("proposal", "classifier"):
        assert saved[f"{network}_one_replicas"] == 1
        assert saved[f"{network}_two_replicas"] == 2
        one_losses = saved[f"{network}_one_losses"]
        np.testing.assert_allclose(
            saved[f"{network}_two_losses"], one_losses, rtol=1e-5, err_msg=network
        )
        assert len(one_losses) == 3 and one_losses[-1] < one_losses[0]
        gradients = sorted(
            key for key in saved if key.startswith(f"{network}_one_gradient_")
        )
        assert gradients
        for key in gradients:
            one = saved[key]
            two = saved[key.replace("_one_", "_two_")]
            scale = max(np.abs(one).max(), 1e-6)
            np.testing.assert_allclose(two, one, atol=2e-4 * scale, err_msg=key)
        np.testing.assert_allclose(
            saved[f"{network}_two_predictions"],
            saved[f"{network}_one_predictions"],
            atol=1e-6,
            err_msg=network,
        )
        assert saved[f"{network}_one_predictions"].shape[0] == 5


def test_batches_are_trimmed_to_the_device_count():
    clips = np.arange(7, dtype="float32").reshape(7, 1, 1)
    targets = np.arange(7, dtype="float32").reshape(7, 1)
    dataset = tf.data.Dataset.from_tensor_slices((clips, targets)).batch(4)
    trimmed = [
        features.numpy().ravel().tolist()
        for features, _ in data_parallel.trim_batches(dataset, 2)
    ]
    assert trimmed == [[0, 1, 2, 3], [4, 5]]
    single = tf.data.Dataset.from_tensor_slices((clips[:1], targets[:1])).batch(4)
    assert list(data_parallel.trim_batches(single, 2)) == []
    assert data_parallel.trim_batches(dataset, 1) is dataset
