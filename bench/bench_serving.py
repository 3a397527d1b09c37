"""Times serving: Keras (TensorFlow) against onnxruntime in float32 and
int8, at batch 1 and 32, for the demo config and the paper config, with
postprocessing timed apart.

    python bench/bench_serving.py [--configs demo,paper] [--batch_sizes 1,32]
        [--runs 5] [--paper_runs 1] [--threads 0] [--markdown table.md]
        [--exported DIR] [--grouped_tap_bytes BYTES] [--tap_block_bytes BYTES]
        [--frequency_tile T]

Both networks are built with random weights (latency does not depend on
them) and exported with `export.onnx_export.convert` (its defaults: at the
paper config the band conv in the frequency form); the int8 graph is the
same model converted with the band conv's taps over whole bands through
`export.onnx_export.to_int8`, as `--int8` exports. onnxruntime runs with
the session options serving uses (`export.detector.session_options`).
Each engine is warmed up with one call per batch size, then timed over
--runs calls (--paper_runs for the paper config), one call of each engine
in turn, so that both see the same load; the median and the fastest call are reported, and the median
CPU time of a call (all the process's threads; on a machine shared with
other jobs it moves less with their load than the wall time does). --threads gives
both engines the same number of intra-op threads (TensorFlow's inter-op pool
too; 0: each engine's default). Model time is one call on a
batch of random clip features [B, N, D]; postprocessing is the per-video
numpy work serving does after it (class-agnostic proposals, then fusion,
per-class NMS and top-k), on the onnxruntime scores. A row marked
"extrapolated" was not run: its model time is B x the batch-1 time (batches
gain little on a CPU whose cores one video already fills), which the table
says.
"""

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runnable from a checkout without installing the package.
sys.path.insert(0, REPO)

from export.onnx_export import GROUPED_TAP_BYTES, TAP_BLOCK_BYTES
from tal_keras.atomic import write_text_atomic
from tal_keras.config import ModelConfig
from tal_keras.flags import flagfile_run_config

CONFIGS = {
    # The demo's model: demo.flags with its recipe (N 64, scales 16,8,8, D 256,
    # H 64, K 5, L 2, the tuned recipe's layers), and the synthetic data's 20
    # classes.
    "demo": flagfile_run_config(os.path.join(REPO, "demo.flags"), "--num_classes=20")[
        0
    ].model,
    # The report's S-2D-TAN on HACS: N 256, H 512, K 9, L 4, D 2304, 200 classes.
    "paper": ModelConfig(),
}


@dataclasses.dataclass
class Row:
    config: str
    engine: str
    batch: int
    batch_seconds: float  # median
    fastest_seconds: float
    post_seconds: float  # per video
    runs: int
    cpu_seconds: float  # median, all threads of the process
    note: str = ""

    def cells(self):
        per_video = self.batch_seconds / self.batch
        return [
            self.config,
            self.engine,
            str(self.batch),
            _number(1000 * self.batch_seconds),
            _number(1000 * self.fastest_seconds),
            _number(1000 * per_video),
            _number(1000 * self.cpu_seconds / self.batch),
            _number(1 / per_video),
            _number(1000 * self.post_seconds),
            _number(1 / (per_video + self.post_seconds)),
            str(self.runs) if self.runs else "-",
            self.note,
        ]


def _number(value):
    """Three significant digits, thousands separated: 1,540, 48.1, 0.0233."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


HEADER = [
    "config",
    "engine",
    "batch",
    "model ms/batch",
    "fastest ms/batch",
    "model ms/video",
    "model CPU ms/video",
    "model videos/s",
    "post ms/video",
    "end-to-end videos/s",
    "runs",
    "note",
]


def markdown(rows):
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(" --- " for _ in HEADER) + "|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def interleaved_seconds(functions, runs):
    """({name: wall seconds of each call}, {name: CPU seconds of each call, all
    the process's threads}): `runs` rounds, each calling every function once."""
    times = {name: [] for name in functions}
    cpu_times = {name: [] for name in functions}
    for _ in range(runs):
        for name, function in functions.items():
            begin, cpu_begin = time.perf_counter(), time.process_time()
            function()
            cpu_times[name].append(time.process_time() - cpu_begin)
            times[name].append(time.perf_counter() - begin)
    return times, cpu_times


def postprocess_seconds(config, overlap_scores, class_scores, repeats=5):
    """Median per-video seconds of serving's numpy postprocessing
    (`Detector.proposals` + `Detector.detections` with the run defaults),
    over `repeats` passes over the videos of one batch."""
    from export.metadata import Postprocessing
    from tal_keras import detections

    lattice = config.lattice
    settings = Postprocessing()
    class_names = [f"class {index}" for index in range(config.num_classes)]
    duration = 120.0
    times = []
    for _ in range(repeats):
        for overlap, classes in zip(overlap_scores, class_scores):
            begin = time.perf_counter()
            detections.proposals_with(settings, lattice, duration, overlap)
            detections.detections_with(
                settings, lattice, duration, overlap, classes, class_names
            )
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def exported_model(
    config,
    seed=0,
    cache=None,
    grouped_tap_bytes=GROUPED_TAP_BYTES,
    tap_block_bytes=TAP_BLOCK_BYTES,
    frequency_tile=None,
):
    """(Keras inference model with random weights, its onnx.ModelProto as
    `export.onnx_export.convert` writes it).

    cache: an ONNX file; read instead of converting when it exists (the same
    config and seed make the same weights; the timed inputs' max |ONNX -
    Keras| shows a mismatch), else written. grouped_tap_bytes,
    tap_block_bytes, frequency_tile: `convert`'s.
    """
    import keras
    import onnx

    from export.onnx_export import DEFAULT_OPSET, convert
    from tal_keras.models import (
        build_classifier_network,
        build_inference_model,
        build_proposal_network,
    )

    keras.utils.set_random_seed(seed)
    model = build_inference_model(
        build_proposal_network(config), build_classifier_network(config)
    )
    if cache and os.path.exists(cache):
        return model, onnx.load(cache)
    exported = convert(
        model,
        config,
        DEFAULT_OPSET,
        grouped_tap_bytes=grouped_tap_bytes,
        tap_block_bytes=tap_block_bytes,
        frequency_tile=frequency_tile,
    )
    if cache:
        from tal_keras.atomic import atomic_path

        with atomic_path(cache) as temporary:
            onnx.save(exported, temporary)
    return model, exported


KERAS, ORT, ORT_INT8 = "Keras (TF)", "onnxruntime", "onnxruntime int8"


def bench_config(
    name,
    config,
    batch_sizes,
    runs,
    extrapolate_above,
    threads,
    seed=0,
    cache=None,
    grouped_tap_bytes=GROUPED_TAP_BYTES,
    tap_block_bytes=TAP_BLOCK_BYTES,
    frequency_tile=None,
):
    """Rows of one config, and {engine: max |ONNX - Keras|} seen."""
    import onnxruntime as ort

    from export.detector import session_options
    from export.onnx_export import to_int8

    begin = time.perf_counter()
    model, exported = exported_model(
        config, seed, cache, grouped_tap_bytes, tap_block_bytes, frequency_tile
    )
    # int8 quantizes the whole-band taps, as the export does (`to_int8`).
    whole_band = exported
    if tap_block_bytes or frequency_tile != 0:
        _, whole_band = exported_model(
            config,
            seed,
            cache and cache.removesuffix(".onnx") + ".whole-band.onnx",
            grouped_tap_bytes,
            0,
            0,
        )
    print(f"{name}: exported in {time.perf_counter() - begin:.1f} s", flush=True)
    # The session options export.detector.Detector serves with.
    options = session_options()
    options.intra_op_num_threads = threads
    sessions = {
        engine: ort.InferenceSession(
            graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        for engine, graph in ((ORT, exported), (ORT_INT8, to_int8(whole_band)))
    }
    rng = np.random.default_rng(seed)
    rows, batch_one = [], {}
    max_diff = dict.fromkeys(sessions, 0.0)
    for batch in batch_sizes:
        if batch > extrapolate_above:
            for engine in (KERAS, *sessions):
                rows.append(
                    Row(
                        name,
                        engine,
                        batch,
                        batch * batch_one[engine][0],
                        batch * batch_one[engine][1],
                        None,
                        0,
                        batch * batch_one[engine][2],
                        f"extrapolated: {batch} x batch 1",
                    )
                )
            continue
        clips = rng.standard_normal(
            (batch, config.num_clips, config.feature_dim), dtype=np.float32
        )
        feeds = {"clip_features": clips}
        # Warm-up: traces the Keras function, sizes onnxruntime's arenas.
        expected = model.predict_on_batch(clips)
        for engine, session in sessions.items():
            found = session.run(["overlap_scores", "class_scores"], feeds)
            if engine == ORT:
                overlap, classes = found
            max_diff[engine] = max(
                max_diff[engine],
                float(np.abs(found[0] - expected["overlap_scores"]).max()),
                float(np.abs(found[1] - expected["class_scores"]).max()),
            )
        calls = {KERAS: lambda clips=clips: model.predict_on_batch(clips)}
        for engine, session in sessions.items():
            calls[engine] = lambda feeds=feeds, session=session: session.run(
                None, feeds
            )
        times, cpu_times = interleaved_seconds(calls, runs)
        for engine, seconds in times.items():
            median, fastest = statistics.median(seconds), min(seconds)
            cpu = statistics.median(cpu_times[engine])
            rows.append(Row(name, engine, batch, median, fastest, None, runs, cpu))
            if batch == 1:
                batch_one[engine] = median, fastest, cpu
            print(
                f"  {engine:<12} batch {batch:>3}: median {median:.3f} s, "
                f"fastest {fastest:.3f} s",
                flush=True,
            )
    # The same numpy work whatever the batch: timed once, on the last batch run.
    post = postprocess_seconds(config, overlap, classes)
    for row in rows:
        row.post_seconds = post
    return rows, max_diff


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="demo,paper")
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--runs", type=int, default=5, help="Timed calls (demo).")
    parser.add_argument(
        "--paper_runs", type=int, default=1, help="Timed calls (paper config)."
    )
    parser.add_argument(
        "--paper_max_batch",
        type=int,
        default=1,
        help="Larger paper-config batches are extrapolated from batch 1, not run.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="Intra-op threads of each engine (TensorFlow's inter-op pool too); "
        "0: the engines' defaults.",
    )
    parser.add_argument(
        "--grouped_tap_bytes",
        type=int,
        default=GROUPED_TAP_BYTES,
        help="The export's budget per video for grouping a layer's taps "
        "(0: tap by tap).",
    )
    parser.add_argument(
        "--tap_block_bytes",
        type=int,
        default=TAP_BLOCK_BYTES,
        help="The export's budget per video for one tap's gathered rows of a "
        "block of output rows, where taps are not grouped (default the "
        "export's, export.onnx_export.TAP_BLOCK_BYTES: 1,024 rows at H 512; "
        "0: whole bands).",
    )
    parser.add_argument(
        "--frequency_tile",
        type=int,
        default=None,
        help="The export's band conv in the frequency form with tiles of this "
        "side (default the export's choice, MapBand.frequency_tile; 0: taps).",
    )
    parser.add_argument("--markdown", default=None, help="Also write the table here.")
    parser.add_argument(
        "--exported",
        default=None,
        help="Folder of the exported graphs, DIR/CONFIG.onnx: read when present "
        "(the paper config's conversion takes many minutes), else written.",
    )
    args = parser.parse_args()

    import onnxruntime as ort
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    if 1 not in batch_sizes:
        batch_sizes.insert(0, 1)
    load_before = os.getloadavg()
    rows, diffs = [], {}
    for name in args.configs.split(","):
        paper = name == "paper"
        config_rows, diffs[name] = bench_config(
            name,
            CONFIGS[name],
            batch_sizes,
            args.paper_runs if paper else args.runs,
            args.paper_max_batch if paper else max(batch_sizes),
            args.threads,
            cache=os.path.join(args.exported, f"{name}.onnx")
            if args.exported
            else None,
            grouped_tap_bytes=args.grouped_tap_bytes,
            tap_block_bytes=args.tap_block_bytes,
            frequency_tile=args.frequency_tile,
        )
        rows += config_rows
    table = markdown(rows)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    threads = (
        f"{args.threads} intra-op thread(s) each" if args.threads else "default threads"
    )
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other jobs; this process may use {cpus}), {threads}, "
        f"TensorFlow {tf.__version__} (CPU), "
        f"onnxruntime {ort.__version__} (CPUExecutionProvider, threads do not "
        "spin, no buffer-reuse planner, as export.detector.Detector), float32 "
        "and int8 "
        "(export.onnx_export.to_int8)"
    )
    checks = "; ".join(
        f"{name}: "
        + ", ".join(f"{engine} {diff:.1e}" for engine, diff in engines.items())
        for name, engines in diffs.items()
    )
    load = "load average (1, 5, 15 min) {} at the start, {} at the end".format(
        *(
            ", ".join(f"{value:.2f}" for value in values)
            for values in (load_before, os.getloadavg())
        )
    )
    footer = f"{machine}; {load}; max |ONNX - Keras| on the timed inputs: {checks}."
    print()
    print(table)
    print(f"\n{footer}")
    if args.markdown:
        write_text_atomic(args.markdown, f"{table}\n\n{footer}\n")


if __name__ == "__main__":
    main()
