"""StackedMaxPool: the range-maximum table against 2D-TAN's chained pools and
a brute-force max (random and tied inputs, dense and sparse lattices),
gradients on TensorFlow and JAX, the learned-conv mode, and configs written
before the table."""

import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from chained_max_pools import chained_pools
from python_process import worst_difference_on

from tal_keras.lattice import Lattice
from tal_keras.layers import StackedMaxPool
from tal_keras.layers.stacked_max_pool import range_max_tables

# Dense (N,) and sparse scale sets; N 12, 24 and 40 are not powers of 2.
LATTICES = [
    (16, (4, 2, 2)),
    (16, (16,)),
    (32, (8, 4, 4)),
    (12, (12,)),
    (24, (6, 3, 3)),
    (40, (10, 5, 5)),
    (256, (64, 32, 32)),  # the paper's lattice
]


def random_array(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def tied_array(*shape, seed=0):
    """Values from {0, 1, 2}: most windows hold their max more than once."""
    return np.random.default_rng(seed).integers(0, 3, size=shape).astype("float32")


def brute_force(clips, lattice):
    """[B, P, C]: max of clips[:, i..j] for every proposal (i, j), one by one."""
    return np.stack(
        [
            clips[:, start : end + 1].max(axis=1)
            for start, end in zip(lattice.starts, lattice.ends)
        ],
        axis=1,
    )


def gradient(function, clips, upstream):
    clips = tf.constant(clips)
    with tf.GradientTape() as tape:
        tape.watch(clips)
        loss = tf.reduce_sum(function(clips) * upstream)
    return tape.gradient(loss, clips).numpy()


@pytest.mark.parametrize("num_clips, scale_layers", LATTICES)
@pytest.mark.parametrize("values", [random_array, tied_array])
def test_features_equal_brute_force_and_chained_pools(num_clips, scale_layers, values):
    lattice = Lattice(num_clips, scale_layers)
    clips = values(2, num_clips, 3)
    output = keras.ops.convert_to_numpy(StackedMaxPool(num_clips, scale_layers)(clips))
    assert output.shape == (2, lattice.num_proposals, 3)
    # A max of the same elements: equal, not merely close.
    np.testing.assert_array_equal(output, brute_force(clips, lattice))
    chained = keras.ops.convert_to_numpy(chained_pools(clips, lattice))
    np.testing.assert_array_equal(output, chained)


@pytest.mark.parametrize("num_clips, scale_layers", LATTICES)
def test_two_windows_cover_each_proposal_exactly(num_clips, scale_layers):
    lattice = Lattice(num_clips, scale_layers)
    num_levels, first, second = range_max_tables(lattice)
    assert num_levels == int(np.log2(lattice.lengths.max())) + 1
    sizes = [num_clips - 2**level + 1 for level in range(num_levels)]
    offsets = np.cumsum([0] + sizes)
    for proposal, (start, end) in enumerate(zip(lattice.starts, lattice.ends)):
        windows = []
        for row in (first[proposal], second[proposal]):
            level = int(np.searchsorted(offsets, row, side="right")) - 1
            window_start = row - offsets[level]
            assert 0 <= window_start < sizes[level]
            windows.append((window_start, window_start + 2**level - 1))
        (first_start, first_end), (second_start, second_end) = windows
        assert first_start == start and second_end == end
        assert second_start <= first_end + 1  # no gap between the windows
        assert first_end - first_start == second_end - second_start


@pytest.mark.parametrize("num_clips, scale_layers", LATTICES[:6])
def test_gradients_equal_the_chained_pools(num_clips, scale_layers):
    lattice = Lattice(num_clips, scale_layers)
    clips = random_array(2, num_clips, 3)
    upstream = random_array(2, lattice.num_proposals, 3, seed=1)
    pool = StackedMaxPool(num_clips, scale_layers)
    found = gradient(pool, clips, upstream)
    expected = gradient(lambda x: chained_pools(x, lattice), clips, upstream)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("num_clips, scale_layers", [(16, (4, 2, 2)), (24, (24,))])
def test_gradients_on_ties_reach_only_maxima_and_sum_to_the_upstream(
    num_clips, scale_layers
):
    # With ties the chained pools and the table may credit different copies
    # of a max; both pass every proposal's gradient to some copy of its max.
    lattice = Lattice(num_clips, scale_layers)
    clips = tied_array(2, num_clips, 3)
    upstream = np.abs(random_array(2, lattice.num_proposals, 3, seed=1)) + 0.1
    found = gradient(StackedMaxPool(num_clips, scale_layers), clips, upstream)
    np.testing.assert_allclose(
        found.sum(axis=1), upstream.sum(axis=1), rtol=1e-5, atol=0
    )
    maxima = brute_force(clips, lattice)
    # A clip value gets gradient only if it is the max of a proposal holding it.
    is_a_max = np.zeros(clips.shape, bool)
    for proposal, (start, end) in enumerate(zip(lattice.starts, lattice.ends)):
        is_a_max[:, start : end + 1] |= (
            clips[:, start : end + 1] == maxima[:, proposal : proposal + 1]
        )
    assert (found[~is_a_max] == 0).all()
    assert (found >= 0).all()


def test_layer_outputs_follow_lattice_layers():
    lattice = Lattice(16, (4, 2, 2))
    # Clip index as feature: the max of x[i..j] is j, so every cell names its end.
    clips = np.tile(np.arange(16, dtype="float32")[None, :, None], (1, 1, 2))
    output = keras.ops.convert_to_numpy(StackedMaxPool(16, (4, 2, 2))(clips))
    for layer in lattice.layers:
        ends = output[0, layer.offset : layer.offset + layer.count, 0]
        expected = np.arange(layer.count) * layer.start_stride + layer.length - 1
        np.testing.assert_array_equal(ends, expected)


def test_conv_mode_matches_numpy():
    lattice = Lattice(16, (4, 2, 2))
    pool = StackedMaxPool(16, (4, 2, 2), mode="conv", hidden_size=3)
    clips = random_array(2, 16, 3)
    output = keras.ops.convert_to_numpy(pool(clips))
    expected, sequence = [], clips
    for conv, layer in zip(pool.convs, lattice.layers):
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in conv.weights)
        assert kernel.shape == (layer.kernel, 3, 3)
        steps = (sequence.shape[1] - layer.kernel) // layer.stride + 1
        assert steps == layer.count
        new_sequence = np.zeros((2, steps, 3), "float32")
        for step in range(steps):
            total = bias.astype("float64")
            for tap in range(layer.kernel):
                total = total + sequence[:, step * layer.stride + tap] @ kernel[tap]
            new_sequence[:, step] = total
        sequence = new_sequence
        expected.append(sequence)
    np.testing.assert_allclose(output, np.concatenate(expected, axis=1), atol=1e-5)


def test_a_config_written_by_the_chained_pools_loads_and_matches():
    # The keys (and no weights) a `.keras` file of the chained layer holds.
    config = {
        "name": "proposal_features",
        "trainable": True,
        "dtype": "float32",
        "num_clips": 24,
        "scale_layers": [6, 3, 3],
        "mode": "pool",
        "hidden_size": 8,
    }
    layer = StackedMaxPool.from_config(config)
    clips = random_array(2, 24, 8)
    output = keras.ops.convert_to_numpy(layer(clips))
    assert layer.weights == []
    np.testing.assert_array_equal(output, brute_force(clips, Lattice(24, (6, 3, 3))))
    written = layer.get_config()
    assert set(written) == set(config)
    assert {key: written[key] for key in config if key != "dtype"} == {
        key: value for key, value in config.items() if key != "dtype"
    }


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="hidden_size"):
        StackedMaxPool(16, (4, 2, 2), mode="conv")
    with pytest.raises(ValueError, match="mode"):
        StackedMaxPool(16, (4, 2, 2), mode="mean")
    with pytest.raises(ValueError, match="16 clips"):
        StackedMaxPool(16, (4, 2, 2))(random_array(1, 32, 3))


JAX_SCRIPT = textwrap.dedent(
    """
    import sys

    import jax
    import keras
    import numpy as np

    sys.path.insert(0, "tests")
    from chained_max_pools import chained_pools
    from tal_keras.lattice import Lattice
    from tal_keras.layers import StackedMaxPool

    worst = 0.0
    for num_clips, scale_layers in [(16, (4, 2, 2)), (24, (24,)), (40, (10, 5, 5))]:
        lattice = Lattice(num_clips, scale_layers)
        rng = np.random.default_rng(num_clips)
        clips = rng.normal(size=(2, num_clips, 3)).astype("float32")
        upstream = rng.normal(size=(2, lattice.num_proposals, 3)).astype("float32")
        pool = StackedMaxPool(num_clips, scale_layers)

        def chained(x):
            return chained_pools(x, lattice)

        def gradient(function):
            return np.asarray(
                jax.jit(jax.grad(lambda x: (function(x) * upstream).sum()))(clips)
            )

        found, expected = gradient(pool), gradient(chained)
        assert np.abs(expected).max() > 0
        assert np.array_equal(np.asarray(pool(clips)), np.asarray(chained(clips)))
        worst = max(worst, float(np.abs(found - expected).max()))
    print(keras.backend.backend(), worst)
    """
)


@pytest.mark.slow
def test_jax_backend_gradients_equal_the_chained_pools():
    assert worst_difference_on("jax", JAX_SCRIPT) < 1e-5
