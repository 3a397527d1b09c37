"""2D-TAN's SparsePropMaxPool as it computes: one max-pool per lattice layer,
chained (the reference `StackedMaxPool`'s range-max table is tested against,
on any Keras backend)."""

import keras


def chained_pools(clips, lattice):
    """[B, N, C] -> [B, P, C], lattice order, by chained keras.ops.max_pool."""
    outputs, features = [], clips
    for layer in lattice.layers:
        if layer.kernel > 1:
            features = keras.ops.max_pool(
                features, layer.kernel, strides=layer.stride, padding="valid"
            )
        outputs.append(features)
    return keras.ops.concatenate(outputs, axis=1)
