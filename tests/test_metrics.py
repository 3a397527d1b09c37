"""tal_keras.metrics against hand-computed values and against a plain-loop
reference written from the official ActivityNet code (Evaluation/
eval_detection.py, eval_proposal.py, utils.py). bench/compare_official_eval.py
checks against the official code itself."""

import json

import numpy as np
import pytest
from python_process import run_python

from tal_keras import metrics
from tal_keras.errors import DataError

THRESHOLDS = np.linspace(0.5, 0.95, 10)


# ---------------------------------------------------------------- reference


def reference_iou(target, candidates):
    """The official utils.segment_iou, one target against [N, 2] candidates."""
    start = np.maximum(target[0], candidates[:, 0])
    end = np.minimum(target[1], candidates[:, 1])
    intersection = (end - start).clip(0)
    union = (
        (candidates[:, 1] - candidates[:, 0]) + (target[1] - target[0]) - intersection
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return intersection.astype(float) / union


def reference_interpolated_ap(precision, recall):
    mprec = np.hstack([[0], precision, [0]])
    mrec = np.hstack([[0], recall, [1]])
    for i in range(len(mprec) - 1)[::-1]:
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.where(mrec[1::] != mrec[0:-1])[0] + 1
    return np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])


def reference_rows(ground_truth, submission, subset):
    """The official data frames as lists: GT rows and prediction rows."""
    class_index, gt_rows = {}, []
    for video_id, video in ground_truth["database"].items():
        if video["subset"] != subset:
            continue
        for annotation in video["annotations"]:
            class_index.setdefault(annotation["label"], len(class_index))
            start, end = annotation["segment"]
            gt_rows.append(
                (video_id, float(start), float(end), class_index[annotation["label"]])
            )
    prediction_rows = []
    for video_id, entries in submission["results"].items():
        for entry in entries:
            label = class_index.get(entry.get("label"), -1)
            start, end = entry["segment"]
            prediction_rows.append((video_id, float(start), float(end), label))
    # One score column for the whole frame, as pandas builds it.
    scores = np.array(
        [
            entry["score"]
            for entries in submission["results"].values()
            for entry in entries
        ]
    )
    return class_index, gt_rows, prediction_rows, scores


def reference_detection(ground_truth, submission, thresholds, subset="validation"):
    """mAP [T] following compute_average_precision_detection line by line."""
    class_index, gt_rows, prediction_rows, scores = reference_rows(
        ground_truth, submission, subset
    )
    ap = np.zeros((len(thresholds), len(class_index)))
    for label in range(len(class_index)):
        gt = [row for row in gt_rows if row[3] == label]
        members = [i for i, row in enumerate(prediction_rows) if row[3] == label]
        if not members:
            continue
        order = scores[members].argsort()[::-1]
        predictions = [prediction_rows[members[i]] for i in order]
        lock = -np.ones((len(thresholds), len(gt)))
        tp = np.zeros((len(thresholds), len(predictions)))
        fp = np.zeros((len(thresholds), len(predictions)))
        for idx, prediction in enumerate(predictions):
            same_video = [j for j, row in enumerate(gt) if row[0] == prediction[0]]
            if not same_video:
                fp[:, idx] = 1
                continue
            candidates = np.array([[gt[j][1], gt[j][2]] for j in same_video])
            tiou = reference_iou(np.array(prediction[1:3]), candidates)
            preference = tiou.argsort()[::-1]
            for t, threshold in enumerate(thresholds):
                for jdx in preference:
                    if tiou[jdx] < threshold:
                        fp[t, idx] = 1
                        break
                    if lock[t, same_video[jdx]] >= 0:
                        continue
                    tp[t, idx] = 1
                    lock[t, same_video[jdx]] = idx
                    break
                if fp[t, idx] == 0 and tp[t, idx] == 0:
                    fp[t, idx] = 1
        tp_cumsum = np.cumsum(tp, axis=1)
        fp_cumsum = np.cumsum(fp, axis=1)
        recall = tp_cumsum / float(len(gt))
        precision = tp_cumsum / (tp_cumsum + fp_cumsum)
        for t in range(len(thresholds)):
            ap[t, label] = reference_interpolated_ap(precision[t], recall[t])
    return ap.mean(axis=1)


def reference_proposals(
    ground_truth, submission, thresholds, max_avg, subset="validation"
):
    """(average recall [100], proposals per video [100]) following
    average_recall_vs_avg_nr_proposals line by line."""
    _, gt_rows, prediction_rows, scores = reference_rows(
        ground_truth, submission, subset
    )
    videos = list(dict.fromkeys(row[0] for row in gt_rows))
    if not max_avg:
        max_avg = float(len(prediction_rows)) / len(videos)
    ratio = max_avg * float(len(videos)) / len(prediction_rows)
    score_list, total = [], 0
    for video in videos:
        gt = np.array([row[1:3] for row in gt_rows if row[0] == video])
        members = [i for i, row in enumerate(prediction_rows) if row[0] == video]
        if not members:
            score_list.append(np.zeros((len(gt), 1)))
            continue
        proposals = np.array([prediction_rows[i][1:3] for i in members])
        proposals = proposals[scores[members].argsort()[::-1]]
        kept = min(int(len(proposals) * ratio), len(proposals))
        total += kept
        tiou = np.empty((len(gt), kept))
        for i in range(kept):
            tiou[:, i] = reference_iou(proposals[i], gt)
        score_list.append(tiou)
    fractions = np.arange(1, 101) / 100.0 * (max_avg * float(len(videos)) / total)
    recall = np.empty((len(thresholds), 100))
    for t, threshold in enumerate(thresholds):
        matches = np.zeros(100)
        for tiou in score_list:
            used = np.minimum((tiou.shape[1] * fractions).astype(int), tiou.shape[1])
            for j, count in enumerate(used):
                matches[j] += np.count_nonzero(
                    (tiou[:, :count] >= threshold).sum(axis=1)
                )
        recall[t] = matches / len(gt_rows)
    return recall.mean(axis=0), fractions * (float(total) / len(videos))


def random_fixture(seed):
    """Small GT + submission with the official code's edge cases: coarse grid
    (tied tIoU, duplicates, zero-length and reversed segments), tied and
    integer scores, videos without predictions or without GT, predictions on
    training or unknown videos, a class without predictions, and videos with
    more than 16 predictions or GT segments (other numpy sort kernels)."""
    rng = np.random.default_rng(seed)
    grid = int(rng.choice([2, 4, 20, 1000]))

    def segment():
        bounds = np.sort(rng.integers(0, grid + 1, size=2)) * 60.0 / grid
        return bounds[::-1].tolist() if rng.random() < 0.05 else bounds.tolist()

    labels = [f"c{n}" for n in range(int(rng.integers(1, 5)))]
    database = {}
    for video in range(int(rng.integers(1, 12))):
        annotations = [
            {"label": str(rng.choice(labels)), "segment": segment()}
            for _ in range(int(rng.choice([0, 1, 2, 3, 18])))
        ]
        subset = "validation" if video == 0 or rng.random() < 0.8 else "training"
        database[f"v{video}"] = {"subset": subset, "annotations": annotations}
    database["v0"]["annotations"].append({"label": labels[0], "segment": [6.0, 30.0]})
    known = sorted(
        {
            a["label"]
            for v in database.values()
            if v["subset"] == "validation"
            for a in v["annotations"]
        }
    )
    predicted = known[:-1] if len(known) > 1 and rng.random() < 0.4 else known
    integer_scores = rng.random() < 0.2
    results = {}
    for video_id in [*database, "elsewhere0", "elsewhere1"]:
        if rng.random() < 0.15:
            continue
        entries = []
        gt = database.get(video_id, {}).get("annotations", [])
        for _ in range(int(rng.choice([0, 1, 4, 20, 60]))):
            if gt and rng.random() < 0.4:
                where = list(gt[int(rng.integers(len(gt)))]["segment"])
            else:
                where = segment()
            if integer_scores:
                score = int(rng.integers(0, 3))
            else:
                score = (
                    float(rng.integers(0, 4)) / 4
                    if rng.random() < 0.5
                    else rng.random()
                )
            entries.append(
                {"label": str(rng.choice(predicted)), "score": score, "segment": where}
            )
        entries += [dict(e) for e in entries[: int(rng.integers(0, 3))]]
        results[video_id] = entries
    results.setdefault("v0", []).append(
        {"label": known[0], "score": 0.5, "segment": [6.0, 30.0]}
    )
    return {"database": database}, {"results": results}


# ---------------------------------------------------------------- detection


def one_video_fixture():
    """One GT [0, 10] of class A; A predicted at [0, 5] (0.9, tIoU 0.5) and at
    [0, 10] (0.8, tIoU 1); class B has a GT segment and no prediction."""
    ground_truth = {
        "database": {
            "a": {
                "subset": "validation",
                "annotations": [{"label": "A", "segment": [0, 10]}],
            },
            "b": {
                "subset": "validation",
                "annotations": [{"label": "B", "segment": [5, 9]}],
            },
            "t": {
                "subset": "training",
                "annotations": [{"label": "C", "segment": [1, 2]}],
            },
        }
    }
    submission = {
        "results": {
            "a": [
                {"label": "A", "score": 0.9, "segment": [0, 5]},
                {"label": "A", "score": 0.8, "segment": [0, 10]},
            ]
        }
    }
    return ground_truth, submission


def test_detection_hand_computed():
    ground_truth, submission = one_video_fixture()
    result = metrics.evaluate_detection(ground_truth, submission)
    # At 0.50 the first prediction takes the segment: AP(A) = 1. Above 0.50 it
    # misses and the second hits: precision [0, 1/2], recall [0, 1], AP = 1/2.
    # B has no prediction: AP 0; mAP over the two validation classes.
    assert result["mAP"]["0.50"] == pytest.approx(0.5, abs=1e-12)
    for key in ("0.55", "0.75", "0.95"):
        assert result["mAP"][key] == pytest.approx(0.25, abs=1e-12)
    assert result["average_mAP"] == pytest.approx((0.5 + 9 * 0.25) / 10, abs=1e-12)
    assert result["per_class_AP"]["B"]["0.50"] == 0.0
    assert list(result["mAP"]) == [f"{t:.2f}" for t in THRESHOLDS]


def test_prediction_on_video_without_ground_truth_is_false_positive():
    ground_truth, _ = one_video_fixture()
    submission = {
        "results": {
            "elsewhere": [{"label": "A", "score": 0.9, "segment": [0, 10]}],
            "a": [{"label": "A", "score": 0.5, "segment": [0, 10]}],
            "b": [{"label": "A", "score": 0.7, "segment": [5, 9]}],
        }
    }
    result = metrics.evaluate_detection(ground_truth, submission)
    # A: miss (no GT video), miss (GT of class B only), hit: AP = 1/3.
    assert result["per_class_AP"]["A"]["0.95"] == pytest.approx(1 / 3, abs=1e-12)


def test_interpolated_average_precision_hand_computed():
    # Interpolated precision [1, 1, 2/3]; recall steps 0.5 at 1 and 0.5 at 2/3.
    value = metrics.interpolated_average_precision(
        np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])
    )
    assert value == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_detection_matches_reference(seed):
    ground_truth, submission = random_fixture(seed)
    thresholds = THRESHOLDS if seed % 4 else np.array([0.0, 0.3, 0.5, 1.0])
    result = metrics.evaluate_detection(
        ground_truth, submission, tiou_thresholds=thresholds
    )
    expected = reference_detection(ground_truth, submission, thresholds)
    np.testing.assert_allclose(
        list(result["mAP"].values()), expected, rtol=0, atol=1e-9
    )
    assert result["average_mAP"] == pytest.approx(expected.mean(), abs=1e-9)


def test_detection_on_many_ties_matches_reference():
    # 40 identical predictions on 20 segments, half with the same tIoU: which
    # segment each one locks depends on the argsort tie order.
    annotations = [
        {"label": "A", "segment": [float(i), float(i + 2)]} for i in range(20)
    ]
    ground_truth = {
        "database": {"x": {"subset": "validation", "annotations": annotations}}
    }
    entries = [
        {"label": "A", "score": 0.5, "segment": [float(i % 19) + 1, float(i % 19) + 2]}
        for i in range(40)
    ]
    submission = {"results": {"x": entries}}
    result = metrics.evaluate_detection(ground_truth, submission)
    expected = reference_detection(ground_truth, submission, THRESHOLDS)
    np.testing.assert_allclose(
        list(result["mAP"].values()), expected, rtol=0, atol=1e-9
    )


def test_paths_dicts_and_loaded_objects_agree(tmp_path):
    ground_truth, submission = random_fixture(3)
    gt_path, prediction_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(ground_truth))
    prediction_path.write_text(json.dumps(submission))
    from_dicts = metrics.evaluate_detection(ground_truth, submission)
    from_paths = metrics.evaluate_detection(str(gt_path), prediction_path)
    loaded = metrics.load_ground_truth(gt_path)
    from_objects = metrics.evaluate_detection(
        loaded, metrics.load_predictions(prediction_path, loaded)
    )
    assert from_dicts == from_paths == from_objects
    with pytest.raises(ValueError, match="subset"):
        metrics.evaluate_detection(loaded, submission, subset="training")
    with pytest.raises(ValueError, match="without labels"):
        metrics.evaluate_detection(loaded, metrics.load_predictions(prediction_path))


def test_unknown_label_names_file_video_and_label(tmp_path):
    ground_truth, submission = one_video_fixture()
    submission["results"]["a"].append({"label": "C", "score": 0.1, "segment": [1, 2]})
    path = tmp_path / "pred.json"
    path.write_text(json.dumps(submission))
    # "C" is a class of the training subset only.
    with pytest.raises(DataError, match=r"pred\.json.*video 'a'.*label 'C'"):
        metrics.evaluate_detection(ground_truth, str(path))


@pytest.mark.parametrize(
    ("ground_truth", "submission", "pattern"),
    [
        ("not json", {"results": {}}, r"gt\.json.*not valid JSON"),
        ({"videos": {}}, {"results": {}}, r"gt\.json.*'database'"),
        (
            {"database": {"a": {"annotations": []}}},
            {"results": {}},
            r"gt\.json.*'a'.*subset",
        ),
        (
            {
                "database": {
                    "a": {"subset": "validation", "annotations": [{"label": "A"}]}
                }
            },
            {"results": {}},
            r"gt\.json.*'a', annotation 0",
        ),
        (
            {"database": {"a": {"subset": "training", "annotations": []}}},
            {"results": {}},
            r"gt\.json.*no ground-truth segment.*training",
        ),
        (None, {"result": {}}, r"pred\.json.*'results'"),
        (
            None,
            {"results": {"a": [{"label": "A", "score": "high", "segment": [0, 1]}]}},
            r"pred\.json.*'a', prediction 0.*score",
        ),
        (
            None,
            {"results": {"a": [{"label": "A", "score": 0.5, "segment": [0]}]}},
            r"pred\.json.*'a', prediction 0",
        ),
        (
            None,
            {
                "results": {
                    "a": [{"label": "A", "score": float("nan"), "segment": [0, 1]}]
                }
            },
            r"pred\.json.*'a', prediction 0.*nan",
        ),
        (None, {"results": {"a": {"label": "A"}}}, r"pred\.json.*'a'.*list"),
    ],
)
def test_malformed_files_raise_data_error_naming_the_file(
    tmp_path, ground_truth, submission, pattern
):
    if ground_truth is None:
        ground_truth = one_video_fixture()[0]
    gt_path, prediction_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(
        ground_truth if isinstance(ground_truth, str) else json.dumps(ground_truth)
    )
    prediction_path.write_text(json.dumps(submission))
    with pytest.raises(DataError, match=pattern):
        metrics.evaluate_detection(gt_path, prediction_path)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="missing.json"):
        metrics.evaluate_detection(tmp_path / "missing.json", {"results": {}})


def test_empty_submission_scores_zero():
    ground_truth, _ = one_video_fixture()
    result = metrics.evaluate_detection(ground_truth, {"results": {}})
    assert result["average_mAP"] == 0.0


def test_disjoint_video_ids_warn():
    ground_truth, submission = one_video_fixture()
    submission = {"results": {"v_a": submission["results"]["a"]}}
    with pytest.warns(UserWarning, match="v_"):
        metrics.evaluate_detection(ground_truth, submission)


# ---------------------------------------------------------------- proposals


def segment_ground_truth(*video_ids):
    """Ground truth of validation videos holding one segment [0, 10] each."""
    annotations = [{"label": "A", "segment": [0, 10]}]
    return {
        "database": {
            video_id: {"subset": "validation", "annotations": annotations}
            for video_id in video_ids
        }
    }


def ranked_proposals(video_id, hit_rank, count=100):
    """`count` proposals by decreasing score; only the one at `hit_rank`
    (1-based) overlaps the segment [0, 10]."""
    return [
        {
            "score": 1.0 - rank / 1000,
            "segment": [0.0, 10.0] if rank == hit_rank else [20.0 + rank, 20.5 + rank],
        }
        for rank in range(1, count + 1)
    ]


def test_proposals_hand_computed():
    ground_truth = segment_ground_truth("a")
    submission = {"results": {"a": ranked_proposals("a", hit_rank=10)}}
    result = metrics.evaluate_proposals(ground_truth, submission)
    # Grid point k uses the first k proposals: recalled from k = 10 on.
    assert result["AR@1"] == result["AR@5"] == 0.0
    assert result["AR@10"] == result["AR@100"] == 1.0
    # Trapezoid over 1..100 proposals: half a step at 9..10, then 90 of recall 1.
    assert result["AUC"] == pytest.approx(90.5 / 100, abs=1e-9)
    assert len(result["average_recall"]) == len(result["proposals_per_video"]) == 100
    assert result["proposals_per_video"][-1] == pytest.approx(100.0)


def test_proposals_of_videos_without_ground_truth_shrink_the_ratio():
    ground_truth = segment_ground_truth("a")
    submission = {"results": {"a": ranked_proposals("a", hit_rank=60)}}
    assert metrics.evaluate_proposals(ground_truth, submission)["AR@100"] == 1.0
    # 100 more proposals elsewhere: ratio = 100 * 1 / 200, "a" keeps 50 of its 100.
    submission["results"]["elsewhere"] = ranked_proposals("elsewhere", hit_rank=1)
    assert metrics.evaluate_proposals(ground_truth, submission)["AR@100"] == 0.0


def test_ground_truth_video_without_proposals_is_missed():
    ground_truth = segment_ground_truth("a", "b")
    submission = {"results": {"a": ranked_proposals("a", hit_rank=1)}}
    result = metrics.evaluate_proposals(ground_truth, submission)
    assert result["AR@1"] == result["AR@100"] == 0.5


@pytest.mark.parametrize("seed", range(40))
def test_proposals_match_reference(seed):
    ground_truth, submission = random_fixture(seed)
    thresholds = THRESHOLDS if seed % 4 else np.array([0.0, 0.3, 0.5, 1.0])
    max_avg = [100, 100, 10, 3, None][seed % 5]
    curve = metrics.proposal_curve(
        ground_truth,
        submission,
        max_avg_nr_proposals=max_avg,
        tiou_thresholds=thresholds,
    )
    kept_total = curve.proposals_per_video[-1]
    if kept_total == 0:  # the official code divides by zero here
        return
    average_recall, per_video = reference_proposals(
        ground_truth, submission, thresholds, max_avg
    )
    np.testing.assert_allclose(curve.average_recall, average_recall, rtol=0, atol=1e-9)
    np.testing.assert_allclose(curve.proposals_per_video, per_video, rtol=0, atol=1e-9)
    auc = np.sum(np.diff(per_video) * (average_recall[1:] + average_recall[:-1]) / 2)
    assert curve.auc == pytest.approx(auc / per_video[-1], abs=1e-9)


def test_ar_at_points_off_the_grid():
    ground_truth, submission = random_fixture(1)
    result = metrics.evaluate_proposals(
        ground_truth, submission, max_avg_nr_proposals=10
    )
    # Grid points are k / 10 proposals: 1, 5 and 10 are on it, 100 is not.
    assert set(result) >= {"AR@1", "AR@5", "AR@10"} and "AR@100" not in result
    with pytest.raises(ValueError, match="AR@100"):
        metrics.evaluate_proposals(
            ground_truth, submission, max_avg_nr_proposals=10, ar_at=(100,)
        )


def test_no_proposal_kept_gives_zero_curve():
    ground_truth = segment_ground_truth("a")
    result = metrics.evaluate_proposals(ground_truth, {"results": {}})
    assert result["AUC"] == 0.0 and result["AR@100"] == 0.0


# ---------------------------------------------------------------- imports


def test_metrics_and_detections_import_without_tensorflow_or_pandas():
    code = (
        "import sys; import tal_keras.metrics, tal_keras.detections; "
        "bad = [m for m in ('tensorflow', 'pandas', 'keras', 'jax') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run_python(["-c", code])


def test_default_thresholds_are_the_official_linspace():
    assert np.array_equal(metrics.DEFAULT_TIOU_THRESHOLDS, np.linspace(0.5, 0.95, 10))
