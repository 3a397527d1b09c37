"""Every layer against a plain-loop numpy reference, and its `.keras` round trip."""

import json

import keras
import numpy as np
import pytest
from layer_testing import run_layer_test

from tal_keras.lattice import Lattice
from tal_keras.layers import (
    ClassHead,
    ClipEncoder,
    MaskedMapConv,
    OverlapHead,
    StackedMaxPool,
    SubMapNetwork,
)


def random_array(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def relu(values):
    return np.maximum(values, 0.0)


def map_cells(lattice, map_mode):
    """(side, proposal ids, rows, cols) of each map, straight from the lattice."""
    if map_mode == "2dtan":
        ids = np.arange(lattice.num_proposals)
        return [(lattice.num_clips, ids, lattice.starts, lattice.ends)]
    return [
        (
            size,
            np.arange(lattice.num_proposals)[part],
            lattice.map_rows[part],
            lattice.map_cols[part],
        )
        for size, part in zip(lattice.map_sizes, lattice.scale_slices)
    ]


def reference_masked_conv(features, lattice, map_mode, kernels, biases):
    """The map conv stack of docs/design.md section 5, cell by cell."""
    batch, hidden = features.shape[0], kernels[0].shape[-1]
    kernel_size = kernels[0].shape[0]
    half = kernel_size // 2
    output = np.zeros((batch, lattice.num_proposals, hidden), "float32")
    for size, ids, rows, cols in map_cells(lattice, map_mode):
        grid = np.zeros((batch, size, size, features.shape[-1]), "float32")
        valid = np.zeros((size, size), bool)
        for proposal, row, col in zip(ids, rows, cols):
            grid[:, row, col] = features[:, proposal]
            valid[row, col] = True
        for kernel, bias in zip(kernels, biases):
            new_grid = np.zeros((batch, size, size, hidden), "float32")
            new_valid = np.zeros((size, size), bool)
            for row in range(size):
                for col in range(size):
                    total, count = np.array(bias, "float64"), 0
                    for dr in range(kernel_size):
                        for dc in range(kernel_size):
                            r, c = row + dr - half, col + dc - half
                            if 0 <= r < size and 0 <= c < size:
                                total = total + grid[:, r, c] @ kernel[dr, dc]
                                count += int(valid[r, c])
                    if count:
                        new_grid[:, row, col] = relu(total) / count
                        new_valid[row, col] = True
            grid, valid = new_grid, new_valid
        for proposal, row, col in zip(ids, rows, cols):
            output[:, proposal] = grid[:, row, col]
    return output


def test_clip_encoder_matches_numpy():
    encoder = ClipEncoder(hidden_size=5)
    features = random_array(2, 16, 7)
    output = keras.ops.convert_to_numpy(encoder(features))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in encoder.weights)
    expected = np.zeros((2, 16, 5), "float32")
    for video in range(2):
        for clip in range(16):
            expected[video, clip] = relu(features[video, clip] @ kernel + bias)
    np.testing.assert_allclose(output, expected, atol=1e-5)


@pytest.mark.parametrize("map_mode", ["s2dtan", "2dtan"])
def test_maps_round_trip_and_cell_places(map_mode):
    lattice = Lattice(16, (4, 2, 2))
    layer = MaskedMapConv(16, (4, 2, 2), hidden_size=3, map_mode=map_mode)
    features = random_array(2, lattice.num_proposals, 3) + 5.0  # never zero
    layer.build(features.shape)
    maps = [keras.ops.convert_to_numpy(m) for m in layer.to_maps(features)]
    cells = map_cells(lattice, map_mode)
    assert [m.shape for m in maps] == [(2, size, size, 3) for size, *_ in cells]
    for feature_map, (size, ids, rows, cols) in zip(maps, cells):
        np.testing.assert_array_equal(feature_map[:, rows, cols], features[:, ids])
        empty = np.ones((size, size), bool)
        empty[rows, cols] = False
        assert not feature_map[:, empty].any()
    back = keras.ops.convert_to_numpy(layer.from_maps(maps))
    np.testing.assert_array_equal(back, features)


@pytest.mark.parametrize(
    "map_mode, num_clips, scale_layers",
    [("s2dtan", 16, (4, 2, 2)), ("2dtan", 16, (4, 2, 2)), ("s2dtan", 8, (8,))],
)
def test_masked_map_conv_matches_cell_by_cell_reference(
    map_mode, num_clips, scale_layers
):
    lattice = Lattice(num_clips, scale_layers)
    layer = MaskedMapConv(
        num_clips,
        scale_layers,
        hidden_size=4,
        kernel_size=3,
        num_conv_layers=3,
        map_mode=map_mode,
    )
    features = random_array(2, lattice.num_proposals, 3)
    layer.build(features.shape)
    kernels = [keras.ops.convert_to_numpy(conv.kernel) for conv in layer.convs]
    biases = [keras.ops.convert_to_numpy(conv.bias) for conv in layer.convs]
    # A non-zero bias makes the mask step visible in every cell.
    biases = [bias + 0.1 for bias in biases]
    for conv, bias in zip(layer.convs, biases):
        conv.bias.assign(bias)
    output = keras.ops.convert_to_numpy(layer(features))
    expected = reference_masked_conv(features, lattice, map_mode, kernels, biases)
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_sub_map_network_matches_numpy():
    lattice = Lattice(16, (4, 2, 2))
    network = SubMapNetwork(
        16, (4, 2, 2), hidden_size=4, kernel_size=3, num_conv_layers=2
    )
    features = random_array(2, lattice.num_proposals, 3)
    output = keras.ops.convert_to_numpy(network(features))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in network.projection.weights)
    projected = features @ kernel + bias
    normalised = projected / np.linalg.norm(projected, axis=-1, keepdims=True)
    expected = reference_masked_conv(
        normalised,
        lattice,
        "s2dtan",
        [keras.ops.convert_to_numpy(conv.kernel) for conv in network.map_conv.convs],
        [keras.ops.convert_to_numpy(conv.bias) for conv in network.map_conv.convs],
    )
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_heads_match_numpy():
    features = random_array(2, 7, 4)
    overlap_head, class_head = OverlapHead(), ClassHead(num_classes=3)
    overlap = keras.ops.convert_to_numpy(overlap_head(features))
    classes = keras.ops.convert_to_numpy(class_head(features))
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in overlap_head.weights)
    np.testing.assert_allclose(
        overlap, 1 / (1 + np.exp(-(features @ kernel + bias)[..., 0])), atol=1e-6
    )
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in class_head.weights)
    logits = features @ kernel + bias
    softmax = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(classes, softmax, atol=1e-6)


# The tiny lattice: N 16 clips, scales 4,2,2 (P = 72 proposals).
TINY_LATTICE = {"num_clips": 16, "scale_layers": (4, 2, 2)}
TINY_MAP_CONV = {**TINY_LATTICE, "hidden_size": 4}

# (layer class, its arguments, input shape, defaults its config must hold too)
SERIALISED = [
    (ClipEncoder, {"hidden_size": 5, "name": "encoder"}, (16, 7), {}),
    (
        StackedMaxPool,
        {**TINY_LATTICE, "name": "pool"},
        (16, 3),
        {"mode": "pool", "hidden_size": None},
    ),
    (StackedMaxPool, {**TINY_LATTICE, "mode": "conv", "hidden_size": 3}, (16, 3), {}),
    (
        MaskedMapConv,
        {**TINY_MAP_CONV, "kernel_size": 3, "num_conv_layers": 2, "map_mode": "2dtan"},
        (72, 3),
        {},
    ),
    (
        SubMapNetwork,
        {
            **TINY_MAP_CONV,
            "kernel_size": 5,
            "num_conv_layers": 1,
            "map_mode": "s2dtan",
            "conv_implementation": "whole",
        },
        (72, 3),
        {},
    ),
    (OverlapHead, {"name": "head"}, (72, 3), {}),
    (ClassHead, {"num_classes": 6}, (72, 3), {}),
]


@pytest.mark.parametrize("layer_class, arguments, input_shape, defaults", SERIALISED)
def test_keras_file_round_trip(layer_class, arguments, input_shape, defaults, tmp_path):
    run_layer_test(layer_class, arguments, random_array(2, *input_shape), tmp_path)
    config = layer_class(**arguments).get_config()
    # The config is JSON: tuples come back as lists.
    for key, value in json.loads(json.dumps(defaults)).items():
        assert config[key] == value, key
