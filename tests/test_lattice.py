"""The lattice against a brute-force simulation of the stacked max-pooling."""

import numpy as np
import pytest

from tal_keras.lattice import Lattice, pooling_kernel_and_stride


def simulate_pooling(num_clips, scale_layers):
    """[(scale, layer, [(start, end), ...])] by pooling index sets, plain loops.

    Each pooled position holds the set of clips it has seen (a bitmask); a
    max-pool of kernel k and stride s takes the union of k neighbours. The
    kernels and strides are `pooling_kernel_and_stride`'s, checked against
    the design by `test_pooling_schedule_follows_design_section_4`.
    """
    outputs = []
    positions = [1 << clip for clip in range(num_clips)]
    for scale, num_layers in enumerate(scale_layers):
        for layer in range(num_layers):
            kernel, stride = pooling_kernel_and_stride(scale, layer)
            pooled = []
            for first in range(0, len(positions) - kernel + 1, stride):
                covered = 0
                for position in positions[first : first + kernel]:
                    covered |= position
                pooled.append(covered)
            positions = pooled
            intervals = []
            for covered in positions:
                start = (covered & -covered).bit_length() - 1
                end = covered.bit_length() - 1
                # A proposal is a contiguous run of clips.
                assert covered == (1 << (end + 1)) - (1 << start)
                intervals.append((start, end))
            outputs.append((scale, layer, intervals))
    return outputs


def test_pooling_schedule_follows_design_section_4():
    # Identity first, max-pool(3, 2) opening each later scale, (2, 1) inside.
    assert pooling_kernel_and_stride(0, 0) == (1, 1)
    assert pooling_kernel_and_stride(0, 63) == (2, 1)
    assert pooling_kernel_and_stride(1, 0) == pooling_kernel_and_stride(2, 0) == (3, 2)
    assert pooling_kernel_and_stride(1, 1) == pooling_kernel_and_stride(2, 31) == (2, 1)


CONFIGS = [
    (256, (64, 32, 32)),
    (64, (16, 8, 8)),
    (32, (8, 4, 4)),
    (128, (32, 16, 16)),
    (16, (4, 2)),
    (24, (3, 2, 2)),
    (8, (8,)),
    (16, (16,)),
    (64, (64,)),
    (20, (5,)),
]


@pytest.mark.parametrize("num_clips, scale_layers", CONFIGS)
def test_lattice_matches_simulated_pooling(num_clips, scale_layers):
    lattice = Lattice(num_clips, scale_layers)
    simulated = simulate_pooling(num_clips, scale_layers)
    starts = [start for _, _, intervals in simulated for start, _ in intervals]
    ends = [end for _, _, intervals in simulated for _, end in intervals]
    scales = [scale for scale, _, intervals in simulated for _ in intervals]
    np.testing.assert_array_equal(lattice.starts, starts)
    np.testing.assert_array_equal(lattice.ends, ends)
    np.testing.assert_array_equal(lattice.scales, scales)
    np.testing.assert_array_equal(
        lattice.lengths, np.array(ends) - np.array(starts) + 1
    )
    assert lattice.num_proposals == len(starts)
    assert len(set(zip(starts, ends))) == len(starts), "a proposal appears twice"
    for layer, (scale, index, intervals) in zip(lattice.layers, simulated):
        assert (layer.scale, layer.layer, layer.count) == (scale, index, len(intervals))


def test_s2dtan_lattice_counts_and_lengths():
    lattice = Lattice(256, (64, 32, 32))
    assert lattice.num_proposals == 17472
    assert lattice.map_sizes == (256, 96, 32)
    assert lattice.scale_strides == (1, 2, 4)
    per_scale = [np.count_nonzero(lattice.scales == scale) for scale in range(3)]
    assert per_scale == [14368, 2576, 528]
    # docs/design.md section 3: short 1..64 every clip, medium 66..128 step 2, long 132..256 step 4.
    expected_lengths = [range(1, 65), range(66, 129, 2), range(132, 257, 4)]
    for scale, (lengths, stride) in enumerate(zip(expected_lengths, (1, 2, 4))):
        in_scale = lattice.scales == scale
        assert sorted(set(lattice.lengths[in_scale].tolist())) == list(lengths)
        assert np.all(lattice.starts[in_scale] % stride == 0)


@pytest.mark.parametrize(
    "num_clips, scale_layers, sizes",
    [
        (256, (64, 32, 32), (256, 96, 32)),
        (64, (16, 8, 8), (64, 24, 8)),
        (32, (8, 4, 4), (32, 12, 4)),
    ],
)
def test_sub_map_places_follow_design_section_5(num_clips, scale_layers, sizes):
    lattice = Lattice(num_clips, scale_layers)
    assert lattice.map_sizes == sizes
    quarter, half = num_clips // 4, num_clips // 2
    # First end clip of each scale: length 1, N/4 + 2 and N/2 + 4 at start 0
    # (65 and 131 for N = 256).
    first_ends = (0, quarter + 1, half + 3)
    for scale, (stride, first_end, num_layers) in enumerate(
        zip((1, 2, 4), first_ends, scale_layers)
    ):
        in_scale = lattice.scales == scale
        starts, ends = lattice.starts[in_scale], lattice.ends[in_scale]
        rows, cols = lattice.map_rows[in_scale], lattice.map_cols[in_scale]
        np.testing.assert_array_equal(rows, starts // stride)
        np.testing.assert_array_equal(cols, (ends - first_end) // stride)
        assert np.all((ends - first_end) % stride == 0)
        assert np.all((cols - rows >= 0) & (cols - rows < num_layers))
        size = sizes[scale]
        np.testing.assert_array_equal(lattice.map_index[in_scale], rows * size + cols)
        # Every cell with 0 <= c - r < layers and an end inside the video is a proposal.
        row_grid, col_grid = np.meshgrid(
            np.arange(size), np.arange(size), indexing="ij"
        )
        expected = (col_grid - row_grid >= 0) & (col_grid - row_grid < num_layers)
        expected &= col_grid * stride + first_end < num_clips
        np.testing.assert_array_equal(lattice.sub_map_mask(scale), expected)


def test_design_section_5_formulas_for_256_clips():
    lattice = Lattice(256, (64, 32, 32))
    for index in range(0, lattice.num_proposals, 37):
        start, end, scale = (
            lattice.starts[index],
            lattice.ends[index],
            lattice.scales[index],
        )
        row, col = lattice.map_rows[index], lattice.map_cols[index]
        if scale == 0:
            assert (row, col) == (start, end) and 0 <= end - start < 64
        elif scale == 1:
            assert (row, col) == (start / 2, (end - 65) / 2) and 0 <= col - row < 32
        else:
            assert (row, col) == (start / 4, (end - 131) / 4) and 0 <= col - row < 32


@pytest.mark.parametrize("num_clips", [8, 16, 64])
def test_dense_lattice_holds_every_pair_once(num_clips):
    lattice = Lattice(num_clips, (num_clips,))
    assert lattice.num_proposals == num_clips * (num_clips + 1) // 2
    pairs = set(zip(lattice.starts.tolist(), lattice.ends.tolist()))
    assert pairs == {(i, j) for i in range(num_clips) for j in range(i, num_clips)}
    assert lattice.full_map_mask().sum() == lattice.num_proposals
    np.testing.assert_array_equal(
        lattice.full_map_mask(), np.triu(np.ones((num_clips, num_clips), bool))
    )


def test_full_map_index_places_start_and_end():
    lattice = Lattice(64, (16, 8, 8))
    rows, cols = np.divmod(lattice.full_map_index, 64)
    np.testing.assert_array_equal(rows, lattice.starts)
    np.testing.assert_array_equal(cols, lattice.ends)


def test_seconds():
    lattice = Lattice(32, (8, 4, 4))
    seconds = lattice.seconds(80.0)
    assert seconds.shape == (lattice.num_proposals, 2)
    for index in range(lattice.num_proposals):
        start, end = lattice.starts[index], lattice.ends[index]
        assert seconds[index, 0] == pytest.approx(start * 80.0 / 32)
        assert seconds[index, 1] == pytest.approx((end + 1) * 80.0 / 32)
    assert seconds.max() == pytest.approx(80.0)


@pytest.mark.parametrize(
    "num_clips, scale_layers, message",
    [
        (90, (22, 11, 11), r"not divisible by the largest scale stride 4.*\(90,\)"),
        (100, (25, 13, 13), r"longer than num_clips=100 \(scale 2, layer 12\)"),
        (16, (17,), "longer than num_clips"),
        (18, (4, 2, 2), "not divisible"),
        (16, (4, 2, 2, 2, 2), r"longer than num_clips=16 \(scale 3"),
        (0, (1,), "positive integer"),
        (8, (), "at least one scale"),
        (8, (0,), "positive integer"),
        (8.0, (8,), "positive integer"),
        (True, (1,), "positive integer"),
    ],
)
def test_invalid_configurations_raise(num_clips, scale_layers, message):
    with pytest.raises(ValueError, match=message):
        Lattice(num_clips, scale_layers)
