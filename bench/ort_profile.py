"""Where onnxruntime spends its time on the exported graph: per-op time from
onnxruntime's profiler, summed by op type and by node, printed as tables.

    python bench/ort_profile.py [--config paper] [--batch 1] [--runs 1]
        [--threads 0] [--top 15] [--model FILE.onnx] [--save FILE.onnx]

Without --model the config's networks are built with random weights (as in
bench/bench_serving.py) and exported with `export.onnx_export.convert`;
--save keeps that file for the next call (the paper config's export takes
minutes). One warm-up call, then --runs profiled calls; the tables are the
sums over the profiled calls, divided by --runs. The session has the options
`export.detector.Detector` serves with (--threads sets its intra-op
threads, 0: onnxruntime's default).
"""

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_serving import CONFIGS, exported_model


def node_times(events, since):
    """[(node name, op type, microseconds)] of the node kernels that started
    at or after `since` (microseconds from the profile's start)."""
    return [
        (
            event["name"].removesuffix("_kernel_time"),
            event.get("args", {}).get("op_name", "?"),
            event["dur"],
        )
        for event in events
        if event.get("cat") == "Node"
        and event["name"].endswith("_kernel_time")
        and event["ts"] >= since
    ]


def profile(model_bytes, clips, runs, threads):
    """(node times of the profiled calls, [seconds of each profiled call])."""
    import onnxruntime as ort

    from export.detector import session_options

    options = session_options()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = os.path.join(folder, "ort")
        session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        feeds = {"clip_features": clips}
        session.run(None, feeds)  # warm-up: sizes the arenas, packs weights
        started = session.get_profiling_start_time_ns()
        since = (time.perf_counter_ns() - started) / 1000 if started else 0.0
        seconds = []
        for _ in range(runs):
            begin = time.perf_counter()
            session.run(None, feeds)
            seconds.append(time.perf_counter() - begin)
        with open(session.end_profiling()) as stream:
            events = json.load(stream)
    # The profiler's clock starts when the session does; keep the calls
    # after the warm-up (the last `runs` model_run events).
    runs_started = sorted(
        event["ts"]
        for event in events
        if event.get("cat") == "Session" and event["name"] == "model_run"
    )
    since = runs_started[-runs] if len(runs_started) >= runs else since
    return node_times(events, since), seconds


def table(rows, header):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def summarize(times, runs, top):
    """(by op type table, top nodes table) in markdown; ms per call."""
    total = sum(duration for _, _, duration in times) or 1
    by_type = collections.defaultdict(lambda: [0, 0])
    by_node = collections.defaultdict(lambda: [0, ""])
    for name, op_type, duration in times:
        by_type[op_type][0] += duration
        by_type[op_type][1] += 1
        by_node[name][0] += duration
        by_node[name][1] = op_type
    type_rows = [
        (
            op_type,
            count // runs,
            f"{duration / runs / 1000:,.1f}",
            f"{100 * duration / total:.1f}",
        )
        for op_type, (duration, count) in sorted(
            by_type.items(), key=lambda item: -item[1][0]
        )[:top]
    ]
    node_rows = [
        (
            _short(name),
            op_type,
            f"{duration / runs / 1000:,.1f}",
            f"{100 * duration / total:.1f}",
        )
        for name, (duration, op_type) in sorted(
            by_node.items(), key=lambda item: -item[1][0]
        )[:top]
    ]
    # The written-out iterations of one Loop (export/unroll.py names them
    # LOOP/unrolled<i>/..., its groups of taps LOOP/unrolled/taps<a>-<b>/...)
    # summed: one row per band conv layer and op.
    by_loop = collections.defaultdict(lambda: [0, 0])
    for name, op_type, duration in times:
        found = re.match(r"(.*)/unrolled(\d+|/taps\d+-\d+)/", name)
        if found:
            by_loop[(found.group(1), op_type)][0] += duration
            by_loop[(found.group(1), op_type)][1] += 1
    loop_rows = [
        (
            _short(loop),
            op_type,
            count // runs,
            f"{duration / runs / 1000:,.1f}",
            f"{100 * duration / total:.1f}",
        )
        for (loop, op_type), (duration, count) in sorted(
            by_loop.items(), key=lambda item: -item[1][0]
        )[:top]
    ]
    header = ["ms per call", "% of op time"]
    return (
        table(type_rows, ["op type", "nodes per call", *header]),
        table(node_rows, ["node", "op type", *header]),
        table(loop_rows, ["written-out loop", "op type", "nodes per call", *header])
        if loop_rows
        else "",
        total / runs / 1000,
    )


def _short(name, width=72):
    """The name, its middle elided to fit `width` characters."""
    if len(name) <= width:
        return name
    keep = (width - 3) // 2
    return f"{name[:keep]}...{name[-keep:]}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1, help="Profiled calls.")
    parser.add_argument(
        "--threads", type=int, default=0, help="Intra-op threads (0: default)."
    )
    parser.add_argument("--top", type=int, default=15, help="Rows per table.")
    parser.add_argument(
        "--model", default=None, help="Profile this ONNX file (of --config)."
    )
    parser.add_argument("--save", default=None, help="Keep the exported file here.")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.batch < 1:
        parser.error("--runs and --batch must be >= 1.")

    config = CONFIGS[args.config]
    if args.model:
        with open(args.model, "rb") as stream:
            model_bytes = stream.read()
        source = args.model
    else:
        begin = time.perf_counter()
        _, model = exported_model(config)
        model_bytes = model.SerializeToString()
        source = f"exported in {time.perf_counter() - begin:.1f} s"
        if args.save:
            from tal_keras.atomic import atomic_path

            with atomic_path(args.save) as temporary, open(temporary, "wb") as stream:
                stream.write(model_bytes)
            source += f", saved to {args.save}"
    rng = np.random.default_rng(0)
    clips = rng.standard_normal(
        (args.batch, config.num_clips, config.feature_dim), dtype=np.float32
    )
    times, seconds = profile(model_bytes, clips, args.runs, args.threads)
    by_type, by_node, by_loop, op_ms = summarize(times, args.runs, args.top)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"{args.config} config, batch {args.batch}, {args.runs} profiled call(s) "
        f"after one warm-up ({source}); threads {args.threads or 'default'}; "
        f"call seconds {', '.join(f'{value:.3f}' for value in seconds)}; "
        f"op time {op_ms:,.1f} ms per call; load average {load} "
        f"({os.cpu_count()} CPUs).\n"
    )
    print(by_type)
    print()
    print(by_node)
    if by_loop:
        print()
        print(by_loop)


if __name__ == "__main__":
    main()
