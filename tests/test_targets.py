import numpy as np
import pytest
from python_process import run_python

from tal_keras.lattice import Lattice
from tal_keras.targets import proposal_targets, scaled_overlap, segment_iou


def reference_targets(lattice, duration, segments, labels):
    """Max IoU and class of each proposal, one proposal and segment at a time."""
    max_ious, classes = [], []
    for start_clip, end_clip in zip(lattice.starts, lattice.ends):
        start = start_clip * duration / lattice.num_clips
        end = (end_clip + 1) * duration / lattice.num_clips
        best_iou, best_label = 0.0, -1
        for (segment_start, segment_end), label in zip(segments, labels):
            intersection = max(0.0, min(end, segment_end) - max(start, segment_start))
            union = (end - start) + (segment_end - segment_start) - intersection
            iou = intersection / union
            if iou > best_iou:
                best_iou, best_label = iou, label
        max_ious.append(best_iou)
        classes.append(best_label if best_iou > 0.5 else -1)
    return np.array(max_ious), np.array(classes)


@pytest.mark.parametrize(
    "num_clips, scale_layers, num_segments, seed",
    [
        (64, (16, 8, 8), 3, 0),
        (32, (32,), 5, 1),
        (256, (64, 32, 32), 2, 2),
        (32, (8, 4, 4), 1, 3),
    ],
)
def test_matches_plain_loops(num_clips, scale_layers, num_segments, seed):
    rng = np.random.default_rng(seed)
    lattice = Lattice(num_clips, scale_layers)
    duration = rng.uniform(20, 240)
    segments = np.sort(rng.uniform(0, duration, (num_segments, 2)), axis=1)
    labels = rng.integers(0, 10, num_segments)
    max_iou, classes = proposal_targets(lattice, duration, segments, labels)
    expected_iou, expected_classes = reference_targets(
        lattice, duration, segments, labels
    )
    assert max_iou.dtype == np.float32 and classes.dtype == np.int64
    assert max_iou.shape == classes.shape == (lattice.num_proposals,)
    np.testing.assert_allclose(max_iou, expected_iou, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(classes, expected_classes)
    assert np.count_nonzero(classes >= 0) > 0  # the check above saw positives


def test_exact_values_on_a_small_lattice():
    lattice = Lattice(4, (4,))  # dense: (0,0) (1,1) (2,2) (3,3) (0,1) (1,2) (2,3) ...
    max_iou, classes = proposal_targets(lattice, 8.0, [[0.0, 4.0]], [7])
    by_pair = {
        (int(s), int(e)): (float(i), int(c))
        for s, e, i, c in zip(lattice.starts, lattice.ends, max_iou, classes)
    }
    assert by_pair[(0, 1)] == (1.0, 7)
    assert by_pair[(0, 0)] == (0.5, -1)  # IoU exactly 0.5 is not a classifier cell
    assert by_pair[(0, 2)] == pytest.approx((4 / 6, 7))
    assert by_pair[(2, 3)] == (0.0, -1)


def test_ties_go_to_the_first_segment():
    lattice = Lattice(8, (8,))
    segments = [[2.0, 6.0], [2.0, 6.0]]
    _, classes = proposal_targets(lattice, 8.0, segments, [3, 9])
    assert set(classes[classes >= 0].tolist()) == {3}
    _, classes = proposal_targets(lattice, 8.0, segments, [9, 3])
    assert set(classes[classes >= 0].tolist()) == {9}


def test_highest_iou_segment_gives_the_class():
    lattice = Lattice(8, (8,))
    max_iou, classes = proposal_targets(lattice, 8.0, [[0.0, 3.0], [2.0, 8.0]], [1, 2])
    index = np.flatnonzero((lattice.starts == 2) & (lattice.ends == 7))[0]
    # (2, 7) is [2, 8): IoU 1 with the second segment, 1/8 with the first.
    assert (max_iou[index], classes[index]) == (1.0, 2)


def test_no_segments():
    lattice = Lattice(32, (8, 4, 4))
    max_iou, classes = proposal_targets(lattice, 50.0, np.zeros((0, 2)), np.zeros(0))
    np.testing.assert_array_equal(max_iou, np.zeros(lattice.num_proposals))
    np.testing.assert_array_equal(classes, np.full(lattice.num_proposals, -1))


@pytest.mark.parametrize(
    "duration, segments, labels, message",
    [
        (10.0, [[1.0, 2.0]], [1, 2], "1 segments but 2 labels"),
        (0.0, [[1.0, 2.0]], [1], "duration must be"),
        (10.0, [[3.0, 2.0]], [1], "end >= start"),
        (10.0, [[np.nan, 2.0]], [1], "finite"),
    ],
)
def test_invalid_arguments(duration, segments, labels, message):
    with pytest.raises(ValueError, match=message):
        proposal_targets(Lattice(8, (8,)), duration, segments, labels)


def test_segment_iou():
    iou = segment_iou([[0.0, 2.0], [5.0, 6.0]], [[1.0, 3.0], [0.0, 2.0]])
    np.testing.assert_allclose(iou, [[1 / 3, 1.0], [0.0, 0.0]])


def test_scaled_overlap():
    values = scaled_overlap(np.array([0.0, 0.5, 0.6, 0.75, 1.0]))
    np.testing.assert_allclose(values, [0.0, 0.0, 0.2, 0.5, 1.0], atol=1e-7)
    assert values.dtype == np.float32
    np.testing.assert_allclose(
        scaled_overlap([0.3, 0.5], t_min=0.1, t_max=0.5), [0.5, 1.0]
    )
    with pytest.raises(ValueError, match="t_max must exceed t_min"):
        scaled_overlap([0.5], t_min=0.7, t_max=0.7)


def test_numpy_only_modules_import_no_tensorflow():
    modules = [
        "tal_keras.lattice",
        "tal_keras.clips",
        "tal_keras.targets",
        "tal_keras.data",
        "tal_keras.data.annotations",
        "tal_keras.data.features",
        "tal_keras.data.synthetic",
        "tal_keras.data.benchmarks",
        "tal_keras.data.cache",
        "tal_keras.detections",
        "tal_keras.metrics",
        "tal_keras.flops",
        "tal_keras.config",
        "tal_keras.atomic",
        "tal_keras.run",
        "tal_keras.evaluation",
        "tal_keras.inference",
        # What the serving extra installs runs without TensorFlow.
        "tal_keras.scoring",
        "tal_keras.check",
        "export.detector",
        "export.serve",
        "export.compare",
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'keras', 'jax', 'torch'})\n"
        "print(','.join(heavy))\n"
    )
    result = run_python(["-c", code])
    assert result.stdout.strip() == ""
