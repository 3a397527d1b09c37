"""tal_keras.detections: NMS against a plain loop, soft-NMS properties, the
score fusion on a tiny lattice, seconds, and the submission file."""

import itertools
import json
import os

import numpy as np
import pytest

from tal_keras import detections
from tal_keras.errors import DataError
from tal_keras.lattice import Lattice


def loop_iou(a, b):
    intersection = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - intersection
    return intersection / union if union > 0 else 0.0


def loop_nms(segments, scores, threshold, classes=None):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(
            loop_iou(segments[i], segments[j]) <= threshold
            or (classes is not None and classes[i] != classes[j])
            for j in kept
        ):
            kept.append(i)
    return kept


def loop_soft_nms(segments, scores, threshold, sigma, classes=None):
    current = [float(s) for s in scores]
    remaining = list(range(len(scores)))
    picked, picked_scores = [], []
    while remaining:
        best = max(remaining, key=lambda i: (current[i], -i))
        remaining.remove(best)
        picked.append(best)
        picked_scores.append(current[best])
        for i in remaining:
            tiou = loop_iou(segments[best], segments[i])
            same = classes is None or classes[i] == classes[best]
            if tiou > threshold and same:
                current[i] *= np.exp(-(tiou**2) / sigma)
    return picked, picked_scores


def random_segments(rng, count, grid):
    starts = rng.integers(0, grid, size=count)
    lengths = rng.integers(1, grid // 2 + 2, size=count)
    return np.stack([starts, starts + lengths], axis=1).astype(np.float64)


@pytest.mark.parametrize("seed", range(20))
def test_nms_matches_plain_loop(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 80))
    segments = random_segments(rng, count, grid=int(rng.choice([4, 30])))
    # Coarse scores: many ties, broken by the lower index.
    scores = rng.integers(0, 5, size=count) / 4.0
    classes = rng.integers(0, 3, size=count) if seed % 2 else None
    threshold = float(rng.choice([0.0, 0.3, 0.5, 0.7]))
    kept = detections.nms(segments, scores, threshold, classes=classes)
    assert kept.tolist() == loop_nms(segments, scores, threshold, classes)
    top = detections.nms(segments, scores, threshold, top_k=3, classes=classes)
    assert top.tolist() == kept[:3].tolist()


def test_nms_suppresses_strictly_above_threshold():
    segments = np.array([[0.0, 2.0], [0.0, 1.0], [0.0, 1.9]])
    # tIoU with the first: 0.5 (kept at 0.5) and 0.95 (suppressed).
    assert detections.nms(segments, [0.9, 0.8, 0.7], 0.5).tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(10))
def test_soft_nms_matches_plain_loop(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 40))
    segments = random_segments(rng, count, grid=20)
    scores = rng.random(count)
    classes = rng.integers(0, 2, size=count) if seed % 2 else None
    indices, new_scores = detections.soft_nms(
        segments, scores, iou_threshold=0.3, sigma=0.4, classes=classes
    )
    expected, expected_scores = loop_soft_nms(segments, scores, 0.3, 0.4, classes)
    assert indices.tolist() == expected
    np.testing.assert_allclose(new_scores, expected_scores, rtol=1e-12)
    assert np.all(np.diff(new_scores) <= 0)
    assert sorted(indices.tolist()) == list(range(count))


def test_soft_nms_decay_values():
    segments = np.array([[0.0, 10.0], [0.0, 10.0], [0.0, 5.0], [20.0, 30.0]])
    indices, scores = detections.soft_nms(
        segments, [0.9, 0.8, 0.7, 0.6], iou_threshold=0.4, sigma=0.5
    )
    # After 0: the duplicate (tIoU 1) is decayed by exp(-2), the half (tIoU
    # 0.5) by exp(-0.5), the disjoint one keeps 0.6 and comes next; then the
    # half decays the duplicate once more (tIoU 0.5).
    assert indices.tolist() == [0, 3, 2, 1]
    np.testing.assert_allclose(
        scores,
        [0.9, 0.6, 0.7 * np.exp(-0.5), 0.8 * np.exp(-2.0) * np.exp(-0.5)],
        rtol=1e-12,
    )
    # Nothing above a threshold of 1: plain sort, scores unchanged.
    indices, scores = detections.soft_nms(segments, [0.9, 0.8, 0.7, 0.6], 1.0)
    assert indices.tolist() == [0, 1, 2, 3] and scores.tolist() == [0.9, 0.8, 0.7, 0.6]
    # min_score stops at the first score below it; top_k after k picks.
    indices, _ = detections.soft_nms(
        segments, [0.9, 0.8, 0.7, 0.6], 0.4, 0.5, min_score=0.3
    )
    assert indices.tolist() == [0, 3, 2]
    assert detections.soft_nms(segments, [0.9, 0.8, 0.7, 0.6], top_k=2)[0].size == 2


def tiny():
    """Lattice(4, (4,)): every (i, j), 10 proposals; 8 s video, 2 s clips."""
    return Lattice(4, (4,)), 8.0


def test_video_proposals_seconds_nms_and_top_k():
    lattice, duration = tiny()
    rng = np.random.default_rng(0)
    overlap = rng.random(lattice.num_proposals)
    proposals = detections.video_proposals(lattice, duration, overlap, 0.5, top_k=3)
    best = int(np.argmax(overlap))
    assert proposals[0] == {
        "score": overlap[best],
        "segment": [2.0 * lattice.starts[best], 2.0 * (lattice.ends[best] + 1)],
    }
    assert len(proposals) == 3
    kept = detections.nms(lattice.seconds(duration), overlap, 0.5, 3)
    assert [p["score"] for p in proposals] == overlap[kept].tolist()
    for i, a in enumerate(proposals):
        for b in proposals[i + 1 :]:
            assert loop_iou(a["segment"], b["segment"]) <= 0.5


def brute_force(lattice, duration, final, class_names):
    """Every (proposal, class) pair by decreasing score, ties by (p, c)."""
    seconds = lattice.seconds(duration)
    pairs = [
        (-final[p, c], p, c)
        for p in range(final.shape[0])
        for c in range(final.shape[1])
    ]
    return [
        {"label": class_names[c], "score": -s, "segment": seconds[p].tolist()}
        for s, p, c in sorted(pairs)
    ]


def random_video(seed):
    """`video_detections`' first arguments: the tiny lattice and duration,
    random overlap and class scores of its proposals, class names a, b, c."""
    lattice, duration = tiny()
    rng = np.random.default_rng(seed)
    overlap = rng.random(lattice.num_proposals)
    class_scores = rng.random((lattice.num_proposals, 3))
    return lattice, duration, overlap, class_scores, ["a", "b", "c"]


def test_video_detections_fusion_math():
    lattice, duration, overlap, class_scores, names = random_video(1)
    everything = {"top_m": None, "nms_threshold": 1.0, "top_k": None}
    result = detections.video_detections(
        lattice, duration, overlap, class_scores, names, **everything
    )
    final = overlap[:, None] * class_scores
    assert result == brute_force(lattice, duration, final, names)
    # Video-level fusion: only "c" and "a", multiplied by their scores.
    labels = [("c", 0.5), ("a", 0.25)]
    result = detections.video_detections(
        lattice,
        duration,
        overlap,
        class_scores,
        names,
        video_labels=labels,
        **everything,
    )
    fused = final[:, [2, 0]] * np.array([0.5, 0.25])
    expected = brute_force(lattice, duration, fused, ["c", "a"])
    assert [r["label"] for r in result] == [e["label"] for e in expected]
    np.testing.assert_allclose(
        [r["score"] for r in result], [e["score"] for e in expected]
    )
    # No per-proposal classifier: P_over times the video-level score.
    result = detections.video_detections(
        lattice, duration, overlap, None, names, video_labels=dict(labels), **everything
    )
    fused = overlap[:, None] * np.array([0.5, 0.25])
    np.testing.assert_allclose(
        [r["score"] for r in result],
        [e["score"] for e in brute_force(lattice, duration, fused, ["c", "a"])],
    )


def test_video_detections_top_m_and_per_class_nms():
    video = random_video(2)
    no_nms = {"nms_threshold": 1.0, "top_k": None}
    best_five = detections.video_detections(*video, top_m=5, **no_nms)
    everything = detections.video_detections(*video, top_m=None, **no_nms)
    assert best_five == everything[:5]
    result = detections.video_detections(*video, top_m=None, top_k=None)
    for i, a in enumerate(result):
        for b in result[i + 1 :]:
            if a["label"] == b["label"]:
                assert loop_iou(a["segment"], b["segment"]) <= 0.5
    assert len({r["label"] for r in result}) == 3
    # A score prefix of the pairs gives the same top detections.
    pruned = detections.video_detections(*video, top_m=20, top_k=3)
    assert pruned == result[:3]
    soft = detections.video_detections(*video, soft_nms=True, top_k=4)
    assert soft[0] == result[0] and len(soft) == 4
    assert all(x["score"] >= y["score"] for x, y in itertools.pairwise(soft))


def test_video_detections_rejects_bad_input():
    lattice, duration = tiny()
    overlap = np.full(lattice.num_proposals, 0.5)
    class_scores = np.full((lattice.num_proposals, 2), 0.5)
    with pytest.raises(DataError, match="'z'"):
        detections.video_detections(
            lattice,
            duration,
            overlap,
            class_scores,
            ["a", "b"],
            video_labels=[("z", 1.0)],
        )
    with pytest.raises(ValueError, match=r"\(10, 3\)"):
        detections.video_detections(
            lattice, duration, overlap, class_scores, ["a", "b", "c"]
        )
    with pytest.raises(ValueError, match="overlap_scores"):
        detections.video_proposals(lattice, duration, overlap[:-1])
    with pytest.raises(ValueError, match="NaN"):
        detections.video_proposals(lattice, duration, np.full(10, np.nan))


@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_video_proposals_soft_nms_against_plain_loop(sigma):
    lattice = Lattice(8, (2, 1, 1))
    rng = np.random.default_rng(1)
    overlap = rng.random(lattice.num_proposals)
    seconds = lattice.seconds(16.0)
    soft = detections.video_proposals(
        lattice, 16.0, overlap, top_k=12, soft_nms_sigma=sigma
    )
    picked, picked_scores = loop_soft_nms(seconds, overlap, 0.0, sigma)
    assert [p["segment"] for p in soft] == seconds[picked[:12]].tolist()
    np.testing.assert_allclose([p["score"] for p in soft], picked_scores[:12])
    # Every overlap decays (threshold 0); the list is not hard NMS's.
    hard = detections.video_proposals(lattice, 16.0, overlap, 0.5, top_k=12)
    assert soft[0] == hard[0]
    assert np.any(np.asarray(picked_scores[:12]) < overlap[picked[:12]])
    assert len(soft) == 12 and [p["segment"] for p in soft] != [
        p["segment"] for p in hard
    ]
    baseline = detections.sliding_window_proposals(
        lattice, 16.0, overlap, top_k=12, soft_nms_sigma=sigma
    )
    assert baseline == soft


def test_sliding_window_proposals():
    lattice, duration = tiny()
    flat = detections.sliding_window_proposals(lattice, duration, top_k=2)
    # Equal scores: lattice order, single clips first.
    assert [p["segment"] for p in flat] == [[0.0, 2.0], [2.0, 4.0]]
    prior = np.where(lattice.lengths == 3, 0.9, 0.1)
    favoured = detections.sliding_window_proposals(lattice, duration, prior, top_k=1)
    assert favoured == [{"score": 0.9, "segment": [0.0, 6.0]}]


def test_submission_shape_and_json_types():
    results = {
        "vid": [
            {
                "label": np.str_("a"),
                "score": np.float32(0.5),
                "segment": np.array([1, 2.5]),
            }
        ],
        "empty": [],
    }
    payload = detections.submission(results)
    assert payload == {
        "version": detections.DEFAULT_VERSION,
        "results": {
            "vid": [{"label": "a", "score": 0.5, "segment": [1.0, 2.5]}],
            "empty": [],
        },
        "external_data": {},
    }
    assert json.loads(json.dumps(payload)) == payload
    with pytest.raises(DataError, match="'vid'"):
        detections.submission({"vid": [{"score": 0.5}]})


def test_write_submission_is_atomic(tmp_path):
    path = tmp_path / "detections.json"
    results = {"vid": [{"score": 0.5, "segment": [1.0, 2.0]}]}
    detections.write_submission(path, results, version="test")
    assert json.loads(path.read_text())["results"] == results
    assert os.listdir(tmp_path) == ["detections.json"]
    # A label json cannot write fails half-way: the old file stays, no temp file.
    with pytest.raises(TypeError):
        detections.write_submission(
            path, {"vid": [{"label": object(), "score": 0.1, "segment": [0, 1]}]}
        )
    assert json.loads(path.read_text())["version"] == "test"
    assert os.listdir(tmp_path) == ["detections.json"]


@pytest.mark.parametrize("top_m", [1, 3, 7, 12, 25])
def test_top_m_pairs_are_the_best_pairs_with_ties(top_m):
    lattice, duration = tiny()
    rng = np.random.default_rng(top_m)
    # Coarse float32 scores: many tied pairs, broken by (proposal, class).
    overlap = rng.integers(0, 4, size=lattice.num_proposals) / 4
    class_scores = (rng.integers(0, 4, size=(lattice.num_proposals, 3)) / 4).astype(
        np.float32
    )
    options = {"nms_threshold": 1.0, "top_k": None}
    pruned = detections.video_detections(
        lattice, duration, overlap, class_scores, "abc", top_m=top_m, **options
    )
    everything = detections.video_detections(
        lattice, duration, overlap, class_scores, "abc", top_m=None, **options
    )
    assert pruned == everything[:top_m]
