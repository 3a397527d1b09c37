"""The report's Table 1 on one dataset: rows 1-4 trained with train.py, plus
the content-blind baseline and the IoU oracle, as one markdown table.

    python bench/table1.py --dataset data/bench/boundary-low --out table1.md \
        [--flagfile demo.flags] [--clips_divisor 4] [--kernel_size 5 --num_conv_layers 2] \
        [--no_classifier] [--workdir_root runs/table1] [-- any train.py flags]

Rows (docs/design.md section 9), with every N and pooling-layer count divided by
--clips_divisor (1: the report's):

    1 S-2D-TAN  N 256, scales 64,32,32, K 9, L 4
    2 2D-TAN    N 128 dense, K 9, L 4
    3 2D-TAN    N 64 dense, K 9, L 4
    4 2D-TAN    N 64 dense, K 1, L 1

--kernel_size / --num_conv_layers replace K 9, L 4 in rows 1-3 (row 4 stays
K 1, L 1). Everything else (width H, epochs, learning rate, ...) comes from
the flagfile and the flags after "--", the same for every row. The data flags
(--annotations, --features, --category_file, --feature_dim,
--synthetic_videos=0) come from --dataset: a folder with annotations.json,
classes.txt and features/ or features.h5 (what tal_keras.data.benchmarks
writes; the feature width is read from benchmark.json or one feature file).

Each row runs `train.py` in its own folder WORKDIR_ROOT/ROW and is skipped
when that folder already holds its metrics.json from the same command (so a
stopped table continues); --overwrite retrains; --table_only writes the
table of the rows found, whatever command trained them. The baseline (every lattice
proposal scored by a length prior from the training videos) and the oracle
(P_over = the true max IoU of each cell) use row 1's lattice, the same NMS and
top-100. Columns: official ActivityNet metrics on the evaluation subset in
percent, the proposal network's parameters and FLOPs per video (band convs,
`tal_keras.flops`), and wall time of the row's train.py (training and
evaluation).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # runnable from a checkout without installing

from tal_keras import detections, metrics
from tal_keras.config import ModelConfig
from tal_keras.data.annotations import load_annotations
from tal_keras.flops import model_cost
from tal_keras.lattice import Lattice
from tal_keras.targets import proposal_targets

# (name, model, N, pooling layers per scale, K, L) of the report's Table 1.
REPORT_ROWS = (
    ("1", "S-2D-TAN", 256, (64, 32, 32), 9, 4),
    ("2", "2D-TAN", 128, (128,), 9, 4),
    ("3", "2D-TAN", 64, (64,), 9, 4),
    ("4", "2D-TAN", 64, (64,), 1, 1),
)
COLUMNS = ("AR@1", "AR@10", "AR@100", "AUC", "avg mAP")


def row_geometry(clips_divisor, kernel_size=None, num_conv_layers=None):
    """[(name, model, N, scale_layers, K, L)] of rows 1-4 at N / clips_divisor."""
    rows = []
    for name, model, clips, scales, kernel, layers in REPORT_ROWS:
        if clips % clips_divisor or any(n % clips_divisor for n in scales):
            raise ValueError(
                f"--clips_divisor {clips_divisor} does not divide row {name}"
            )
        if kernel > 1:
            kernel = kernel_size or kernel
            layers = num_conv_layers or layers
        scaled = tuple(n // clips_divisor for n in scales)
        rows.append((name, model, clips // clips_divisor, scaled, kernel, layers))
    return rows


def dataset_flags(dataset):
    """train.py flags that point at a dataset folder."""
    dataset = os.path.abspath(dataset)
    annotations = os.path.join(dataset, "annotations.json")
    features = os.path.join(dataset, "features")
    if not os.path.isdir(features):
        features = os.path.join(dataset, "features.h5")
    for path in (annotations, features):
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} does not exist (--dataset {dataset})")
    flags = [
        f"--annotations={annotations}",
        f"--features={features}",
        f"--feature_dim={feature_dim_of(dataset, features)}",
        "--synthetic_videos=0",
    ]
    classes = os.path.join(dataset, "classes.txt")
    if os.path.exists(classes):
        flags.append(f"--category_file={classes}")
    return flags


def feature_dim_of(dataset, features):
    parameters = os.path.join(dataset, "benchmark.json")
    if os.path.exists(parameters):
        with open(parameters) as stream:
            return int(json.load(stream)["feature_dim"])
    if os.path.isdir(features):
        name = min(n for n in os.listdir(features) if n.endswith(".npy"))
        return int(np.load(os.path.join(features, name), mmap_mode="r").shape[1])
    import h5py

    with h5py.File(features, "r") as handle:
        return int(handle[min(handle)].shape[1])


def run_row(command, workdir, overwrite, table_only=False):
    """Runs train.py for one row unless its results exist; returns
    (metrics, config, seconds)."""
    done = os.path.join(workdir, "table1_row.json")
    if os.path.exists(done) and not overwrite:
        with open(done) as stream:
            record = json.load(stream)
        if record["command"] == command or table_only:
            return _results(workdir) + (record["seconds"],)
    if table_only:
        raise SystemExit(f"error: --table_only but {done} does not exist")
    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    os.makedirs(workdir)
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    with open(os.path.join(workdir, "train.log"), "w") as log:
        status = subprocess.run(
            command, check=False, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    seconds = time.perf_counter() - started
    if status.returncode != 0:
        raise SystemExit(
            f"error: train.py failed (exit {status.returncode}); see {workdir}/train.log"
        )
    with open(done, "w") as stream:
        json.dump({"command": command, "seconds": seconds}, stream)
    return _results(workdir) + (seconds,)


def _results(workdir):
    with open(os.path.join(workdir, "metrics.json")) as stream:
        result = json.load(stream)
    with open(os.path.join(workdir, "config.json")) as stream:
        config = json.load(stream)
    return result, config


def oracle_proposals(
    annotations_path, subset, lattice, nms_threshold, top_k, soft_nms_sigma=0.0
):
    """Official proposal metrics when P_over is each cell's true max IoU (the
    run's NMS or soft-NMS)."""
    annotations = load_annotations(annotations_path, subset=subset)
    results = {}
    for video in annotations:
        max_iou, _ = proposal_targets(
            lattice, video.duration, video.segments, video.labels
        )
        results[video.video_id] = detections.video_proposals(
            lattice, video.duration, max_iou, nms_threshold, top_k, soft_nms_sigma
        )
    ground_truth = metrics.load_ground_truth(annotations_path, subset=subset)
    return metrics.evaluate_proposals(
        ground_truth, detections.submission(results), subset=subset
    )


def proposal_cost(model_config):
    """(parameters, FLOPs per video) of the proposal network of a saved config."""
    cost = model_cost(ModelConfig.from_dict(model_config))
    return cost["proposal_params"], cost["proposal_flops_band"]


def percent(mapping, *keys):
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return "-"
        mapping = mapping[key]
    return f"{100 * mapping:.2f}"


def table(rows, header):
    titles = ("row", "model", "N", "scales", "K", "L", "P") + COLUMNS
    titles += ("params", "GFLOP/video", "time")
    lines = [header, "", "| " + " | ".join(titles) + " |"]
    lines.append("|" + " --- |" * len(titles))
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines) + "\n"


def metric_cells(result):
    return [
        percent(result, "proposals", "AR@1"),
        percent(result, "proposals", "AR@10"),
        percent(result, "proposals", "AR@100"),
        percent(result, "proposals", "AUC"),
        percent(result, "detection", "average_mAP"),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="python bench/table1.py --dataset DIR --out table1.md [options] [-- train.py flags]",
    )
    parser.add_argument("--dataset", required=True, help="dataset folder")
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument("--flagfile", default=os.path.join(ROOT, "demo.flags"))
    parser.add_argument(
        "--workdir_root", default="", help="default: runs/table1/DATASET"
    )
    parser.add_argument("--clips_divisor", type=int, default=1)
    parser.add_argument("--kernel_size", type=int, default=0, help="K of rows 1-3")
    parser.add_argument("--num_conv_layers", type=int, default=0, help="L of rows 1-3")
    parser.add_argument("--rows", default="1,2,3,4", help="rows to train")
    parser.add_argument(
        "--no_classifier", action="store_true", help="proposal networks only (no mAP)"
    )
    parser.add_argument("--overwrite", action="store_true", help="retrain every row")
    parser.add_argument(
        "--table_only",
        action="store_true",
        help="only write the table of rows trained before (by any command)",
    )
    args, passthrough = parser.parse_known_args(argv)
    passthrough = [flag for flag in passthrough if flag != "--"]
    name = os.path.basename(os.path.normpath(args.dataset))
    workdir_root = os.path.abspath(
        args.workdir_root or os.path.join("runs", "table1", name)
    )
    wanted = set(args.rows.split(","))
    geometry = [
        row
        for row in row_geometry(
            args.clips_divisor, args.kernel_size, args.num_conv_layers
        )
        if row[0] in wanted
    ]
    common = [sys.executable, os.path.join(ROOT, "train.py")]
    common += [f"--flagfile={os.path.abspath(args.flagfile)}"] + dataset_flags(
        args.dataset
    )
    if args.no_classifier:
        common.append("--networks=proposal")
    common += passthrough

    rows, first = [], None
    for row_name, model, clips, scales, kernel, layers in geometry:
        workdir = os.path.join(workdir_root, f"row{row_name}")
        command = common + [
            f"--workdir={workdir}",
            f"--num_clips={clips}",
            f"--scale_layers={','.join(map(str, scales))}",
            f"--map_mode={'s2dtan' if len(scales) > 1 else '2dtan'}",
            f"--kernel_size={kernel}",
            f"--num_conv_layers={layers}",
        ]
        result, config, seconds = run_row(
            command, workdir, args.overwrite, args.table_only
        )
        lattice = Lattice(clips, scales)
        params, flops = proposal_cost(config["model"])
        rows.append(
            [row_name, model, clips, ",".join(map(str, scales)), kernel, layers]
            + [lattice.num_proposals]
            + metric_cells(result)
            + [f"{params / 1e6:.3f} M", f"{flops / 1e9:.3f}", f"{seconds:.0f} s"]
        )
        if first is None:
            first = (result, config, lattice, clips, scales)
        print(rows[-1], flush=True)
    if first is not None:
        result, config, lattice, clips, scales = first
        scale_text = ",".join(map(str, scales))
        baseline = result.get("baseline", {})
        rows.append(
            ["-", "content-blind baseline", clips, scale_text, "-", "-"]
            + [lattice.num_proposals]
            + metric_cells(baseline)
            + ["0", "0", "-"]
        )
        evaluation = config.get("eval", {})
        started = time.perf_counter()
        oracle = oracle_proposals(
            config["data"]["annotations"],
            config["data"]["eval_subset"],
            lattice,
            evaluation.get("nms_threshold", 0.5),
            evaluation.get("proposals_per_video", 100),
            evaluation.get("proposal_soft_nms_sigma", 0.0),
        )
        summary = {
            "proposals": {
                key: float(oracle[key]) for key in oracle if "@" in key or key == "AUC"
            }
        }
        rows.append(
            ["-", "oracle (P_over = true max IoU)", clips, scale_text, "-", "-"]
            + [lattice.num_proposals]
            + metric_cells(summary)
            + ["-", "-", f"{time.perf_counter() - started:.0f} s"]
        )
    header = (
        f"Table 1 on `{args.dataset}` (evaluation subset, percent); flagfile "
        f"`{os.path.relpath(args.flagfile, ROOT)}`, N divided by {args.clips_divisor}"
        + (f", extra flags `{' '.join(passthrough)}`" if passthrough else "")
        + (", proposal networks only" if args.no_classifier else "")
        + "."
    )
    text = table(rows, header)
    with open(args.out, "w") as stream:
        stream.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
