"""Pictures: the AR-AN curve, and one video's ground truth and detections on a
timeline above its P_over map (start x end, as in the report's Figure 1)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from tal_keras.atomic import atomic_path


def ar_an_curve(proposal_metrics, path, label="S-2D-TAN", baseline=None):
    """Average recall against average number of proposals per video.

    Args:
        proposal_metrics: `metrics.evaluate_proposals` output, with the curve.
        path: PNG to write.
        baseline: optional second `evaluate_proposals` output drawn dashed.
    """
    figure, axis = plt.subplots(figsize=(5, 4))
    for metrics_, name, style in (
        (proposal_metrics, label, "-"),
        (baseline, "baseline", "--"),
    ):
        if metrics_ is None:
            continue
        axis.plot(
            metrics_["proposals_per_video"],
            100 * np.asarray(metrics_["average_recall"]),
            style,
            label=f"{name} (AUC {100 * metrics_['AUC']:.2f})",
        )
    axis.set_xlabel("average number of proposals per video")
    axis.set_ylabel("average recall (%)")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    _save(figure, path)


def video_figure(lattice, video, class_names, overlap_scores, predictions, path, top=5):
    """Ground truth and the top predictions on a timeline, above the P_over map.

    Args:
        lattice: the `Lattice`.
        video: its `VideoAnnotation` (duration, segments, labels).
        class_names: label of each class index.
        overlap_scores: float [P], P_over of the video in lattice order.
        predictions: list of {"segment", "score"[, "label"]}, best first.
        path: PNG to write.
        top: how many predictions to draw.
    """
    figure, (timeline, heatmap) = plt.subplots(
        2, 1, figsize=(7, 8), gridspec_kw={"height_ratios": [1, 4]}
    )
    duration = video.duration
    for (start, end), label in zip(video.segments, video.labels):
        timeline.barh(1, end - start, left=start, height=0.6, color="tab:green")
        timeline.text(start, 1.4, class_names[label], fontsize=7)
    for rank, prediction in enumerate(predictions[:top]):
        start, end = prediction["segment"]
        timeline.barh(
            -rank * 0.5,
            end - start,
            left=start,
            height=0.35,
            color="tab:blue",
            alpha=0.7,
        )
        text = f"{prediction.get('label', '')} {prediction['score']:.2f}".strip()
        timeline.text(end, -rank * 0.5, " " + text, fontsize=6, va="center")
    timeline.set_xlim(0, duration)
    timeline.set_yticks([1, -(top - 1) * 0.25], ["ground truth", f"top {top}"])
    timeline.set_xlabel("seconds")
    score_map = np.full((lattice.num_clips, lattice.num_clips), np.nan)
    score_map[lattice.starts, lattice.ends] = overlap_scores
    image = heatmap.imshow(
        score_map,
        origin="upper",
        cmap="viridis",
        vmin=0,
        vmax=1,
        extent=(0, duration, duration, 0),
    )
    for start, end in video.segments:
        heatmap.plot(end, start, "r+", markersize=10)
    heatmap.set_xlabel("end (s)")
    heatmap.set_ylabel("start (s)")
    heatmap.set_title(f"{video.video_id}: P_over per proposal (+: ground truth)")
    figure.colorbar(image, ax=heatmap, fraction=0.046)
    _save(figure, path)


def _save(figure, path):
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)


def histograms(panels, path, title=None):
    """One PNG of histograms in a row (tal-check's report).

    Args:
        panels: [(title, values, x label, marked x values)]: values 1-D
            (an empty panel says "no values"); each marked value is drawn as
            a dashed vertical line.
        path: PNG to write.
        title: optional title above the row.
    """
    figure, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False
    )
    for axis, (panel_title, values, x_label, marks) in zip(axes[0], panels):
        values = np.asarray(values, np.float64)
        if values.size:
            axis.hist(values, bins=40, color="tab:blue")
        else:
            axis.text(0.5, 0.5, "no values", ha="center", transform=axis.transAxes)
        for mark in marks:
            axis.axvline(mark, color="tab:red", linestyle="--", linewidth=1)
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel(x_label)
        axis.set_ylabel("count")
    if title:
        figure.suptitle(title, fontsize=10)
    _save(figure, path)
