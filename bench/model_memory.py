"""Peak memory of serving an exported graph, per batch size: one table.

    python bench/model_memory.py --model RUN/s2dtan.onnx [--batch_sizes 1,4]

Each batch size runs in its own subprocess: the graph loaded with the
session options serving uses (`export.detector.session_options`), then one
call on random clip features [B, N, D] after a warm-up call. "peak RSS
after load" and "peak RSS" are the process's peak resident memory (VmHWM,
imports included) after loading and after the calls; "per added video" is
the growth of the peak from the smallest batch, per video.
"""

import argparse
import json
import os
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path[:0] = [REPO, BENCH]

from bench_compile import child_rows, load_average
from bench_input import memory_status


def child(model, batch):
    """Prints the row {batch, load_s, load_gib, call_s, peak_gib} of this
    process."""
    import numpy as np
    import onnxruntime as ort

    from export.detector import session_options

    begin = time.perf_counter()
    session = ort.InferenceSession(
        model, session_options(), providers=["CPUExecutionProvider"]
    )
    load_s = time.perf_counter() - begin
    load_gib = memory_status()["peak_rss"] / 2**30
    shape = session.get_inputs()[0].shape
    clips = np.random.default_rng(0).standard_normal(
        (batch, shape[1], shape[2]), dtype=np.float32
    )
    name = session.get_inputs()[0].name
    session.run(None, {name: clips})
    begin = time.perf_counter()
    session.run(None, {name: clips})
    call_s = time.perf_counter() - begin
    row = {
        "batch": batch,
        "load_s": load_s,
        "load_gib": load_gib,
        "call_s": call_s,
        "peak_gib": memory_status()["peak_rss"] / 2**30,
    }
    print("row: " + json.dumps(row), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="An ONNX file the export wrote.")
    parser.add_argument("--batch_sizes", default="1,4")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child is not None:
        child(**json.loads(args._child))
        return
    if not args.model:
        parser.error("--model is required")
    before = load_average()
    rows = []
    for batch in [int(size) for size in args.batch_sizes.split(",")]:
        (row,) = child_rows(
            __file__,
            {"model": os.path.abspath(args.model), "batch": batch},
            "tensorflow",  # unused: the child runs onnxruntime only
            lambda row: f"batch {row['batch']}: peak {row['peak_gib']:.2f} GiB",
        )
        rows.append((batch, row))
    first_batch, first = rows[0]
    print(
        "| batch | load s | peak RSS after load GiB | call s | peak RSS GiB "
        "| per added video GiB |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for batch, row in rows:
        added = (
            f"{(row['peak_gib'] - first['peak_gib']) / (batch - first_batch):.2f}"
            if batch > first_batch
            else "-"
        )
        print(
            f"| {batch} | {row['load_s']:.1f} | {row['load_gib']:.2f} | "
            f"{row['call_s']:.2f} | {row['peak_gib']:.2f} | {added} |"
        )
    print(
        f"\n{os.path.basename(args.model)}, {os.path.getsize(args.model) / 2**30:.2f} "
        f"GiB; load average {before} at the start, {load_average()} at the end."
    )


if __name__ == "__main__":
    main()
