"""Data parallel training on several devices, on either Keras backend.

TensorFlow: `tf.distribute.MirroredStrategy`; JAX:
`keras.distribution.DataParallel`. Each batch is split across the devices
and the gradients are summed, so a step on R devices equals one device's
step on the whole batch (to float rounding): the losses average over the
whole batch on both backends (see `ProposalClassLoss`). A batch must split
evenly on JAX: the pipeline pads the last batch of a pass to the full batch
size (`tal_keras.pipeline`), inference rounds its batch size up to a
multiple of R, and training batches are cut to a multiple of R
(`trim_batches`; nothing is cut when the batch size is a multiple of R).

By default the visible GPUs are used when there are several, else the
default single device.
"""

import contextlib
import logging

import keras

logger = logging.getLogger("tal_keras")

# One MirroredStrategy per device set and process: a second one over the same
# devices breaks the first one's collective ops (TensorFlow 2.21).
_STRATEGIES = {}


def default_devices():
    """The GPUs of the current backend when there are several, else None."""
    if keras.backend.backend() == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
    else:
        import tensorflow as tf

        gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    return gpus if len(gpus) > 1 else None


@contextlib.contextmanager
def training_scope(devices=None):
    """Builds, compiles and fits inside it to train on `devices`.

    Args:
        devices: None (the GPUs when there are several, else one device), or
            the devices to split each batch across: TensorFlow device names
            ("/gpu:0", "/cpu:1") or JAX devices.

    Yields:
        the number of replicas R (1 on one device).
    """
    devices = default_devices() if devices is None else list(devices)
    if not devices or len(devices) == 1:
        yield 1
        return
    backend = keras.backend.backend()
    logger.info("data parallel training on %d devices (%s)", len(devices), backend)
    if backend == "jax":
        distribution = keras.distribution.DataParallel(devices=devices)
        with distribution.scope():
            yield len(devices)
    elif backend == "tensorflow":
        import tensorflow as tf

        key = tuple(str(device) for device in devices)
        if key not in _STRATEGIES:
            _STRATEGIES[key] = tf.distribute.MirroredStrategy(list(key))
        with _STRATEGIES[key].scope():
            yield len(devices)
    else:
        raise ValueError(f"no data parallel training on the {backend} backend")


def replicas_in_scope():
    """R of the enclosing `training_scope` (1 outside one)."""
    if keras.backend.backend() == "jax":
        distribution = keras.distribution.distribution()
        if distribution is None:
            return 1
        return len(distribution.device_mesh.devices.flatten())
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def trim_batches(dataset, multiple):
    """A tf.data dataset of (features, targets) batches cut to a multiple of
    `multiple` videos; batches left empty are dropped."""
    if multiple == 1:
        return dataset
    import tensorflow as tf

    def trim(features, targets):
        size = tf.shape(features)[0] // multiple * multiple
        return features[:size], targets[:size]

    return dataset.map(trim).filter(lambda features, _: tf.shape(features)[0] > 0)
