"""What a person reads after an evaluation: the metric table and the summary
printed by train.py and evaluate.py. The figures are `tal_keras.plots`."""

from tal_keras import run

# (column title, keys into a metrics.json-style dict), in print order.
COLUMNS = (
    ("AR@1", ("proposals", "AR@1")),
    ("AR@10", ("proposals", "AR@10")),
    ("AR@100", ("proposals", "AR@100")),
    ("AUC", ("proposals", "AUC")),
    ("mAP@0.5", ("detection", "mAP", "0.50")),
    ("mAP@0.75", ("detection", "mAP", "0.75")),
    ("mAP@0.95", ("detection", "mAP", "0.95")),
    ("avg mAP", ("detection", "average_mAP")),
)


def format_metrics_table(rows):
    """A plain-text table, one row per named metrics dict, in percent."""
    present = [
        (title, keys)
        for title, keys in COLUMNS
        if any(_dig(row, keys) is not None for row in rows.values())
    ]
    width = max(len(name) for name in rows) + 2
    lines = ["".ljust(width) + "".join(title.rjust(10) for title, _ in present)]
    for name, row in rows.items():
        cells = []
        for _, keys in present:
            value = _dig(row, keys)
            cells.append(("-" if value is None else f"{100 * value:.2f}").rjust(10))
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)


def print_run_summary(run_config, summary, eval_cache):
    """The evaluation of a run as train.py and evaluate.py print it."""
    print(
        f"\n{run_config.data.eval_subset}: {len(eval_cache)} videos scored ({len(eval_cache.skipped)} skipped)"
    )
    epochs = summary.get("epochs", {})
    rows = {"S-2D-TAN": summary}
    if any(item["kept"] != item["last"] for item in epochs.values()):
        rows["S-2D-TAN, last epochs"] = summary["last_epoch"]
    rows["baseline (content-blind)"] = summary["baseline"]
    print(format_metrics_table(rows))
    for network, item in epochs.items():
        print(
            f"{network} network: epoch {item['kept']} of {item['last']} kept, "
            f"by {item['metric']} on {item['chosen_on']}"
        )
    # detections.json only where the classifier was scored (written).
    detections = (run.DETECTIONS,) if "detection" in summary else ()
    names = (run.PROPOSALS, *detections, run.METRICS, run.AR_AN_PLOT)
    print(f"results in {run_config.workdir}: {', '.join(names)}")


def _dig(mapping, keys):
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping
