"""Peak memory and time of the ONNX export at the paper's maps and kernels,
per hidden width H: one table.

    python bench/export_memory.py                    # H 512, the paper config
    python bench/export_memory.py --hidden 128,256,512 --check
    python bench/export_memory.py --check --frequency_tile 0    # taps in blocks
    python bench/export_memory.py --check --frequency_tile 0 --tap_block_bytes 0

Each width is converted in its own subprocess (`export.onnx_export.convert`
of the inference model, both networks, random weights): "peak RSS GiB" is
that process's peak resident memory (VmHWM, imports and the Keras model
included), "convert s" the conversion's wall time, "nodes" and "MatMul" the
written graph's. With `--check` the graph's outputs are compared with Keras
on one random video (max |ONNX - Keras|; a paper-config forward takes tens
of seconds on a CPU).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path[:0] = [REPO, BENCH]

from bench_compile import child_rows, load_average
from bench_input import memory_status


def child(hidden, check, tap_block_bytes, frequency_tile=None):
    import keras
    import numpy as np
    from bench_serving import CONFIGS

    from export import onnx_export
    from tal_keras.models import (
        build_classifier_network,
        build_inference_model,
        build_proposal_network,
    )

    config = dataclasses.replace(CONFIGS["paper"], hidden_size=hidden)
    keras.utils.set_random_seed(0)
    model = build_inference_model(
        build_proposal_network(config), build_classifier_network(config)
    )
    start = time.perf_counter()
    if tap_block_bytes is None:
        tap_block_bytes = onnx_export.TAP_BLOCK_BYTES
    graph = onnx_export.convert(
        model,
        config,
        onnx_export.DEFAULT_OPSET,
        tap_block_bytes=tap_block_bytes,
        frequency_tile=frequency_tile,
    )
    seconds = time.perf_counter() - start
    row = {
        "hidden": hidden,
        "peak_rss_gib": memory_status()["peak_rss"] / 2**30,
        "convert_s": seconds,
        "nodes": len(graph.graph.node),
        "matmuls": sum(node.op_type == "MatMul" for node in graph.graph.node),
        "size_gib": graph.ByteSize() / 2**30,
        "max_diff": None,
    }
    if check:
        import onnxruntime

        from export.detector import session_options

        session = onnxruntime.InferenceSession(
            graph.SerializeToString(),
            session_options(),
            providers=["CPUExecutionProvider"],
        )
        clips = np.random.default_rng(0).standard_normal(
            (1, config.num_clips, config.feature_dim), dtype=np.float32
        )
        found = onnx_export.onnx_scores(session, clips)
        expected = onnx_export.keras_scores(model, clips, 1)
        row["max_diff"] = max(
            float(np.abs(found[name] - expected[name]).max()) for name in found
        )
    print("row: " + json.dumps(row), flush=True)


def describe(row):
    return f"H {row['hidden']}: peak RSS {row['peak_rss_gib']:.2f} GiB"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", default="512", help="comma-separated H")
    parser.add_argument("--check", action="store_true")
    parser.add_argument(
        "--tap_block_bytes",
        type=int,
        default=None,
        help="convert's budget for the band conv's blocks of rows (default "
        "the export's, export.onnx_export.TAP_BLOCK_BYTES; 0: whole bands)",
    )
    parser.add_argument(
        "--frequency_tile",
        type=int,
        default=None,
        help="convert's tile of the band conv's frequency form (default the "
        "export's choice, MapBand.frequency_tile; 0: the taps)",
    )
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child is not None:
        child(**json.loads(args._child))
        return
    rows = []
    for hidden in [int(value) for value in args.hidden.split(",")]:
        spec = {
            "hidden": hidden,
            "check": args.check,
            "tap_block_bytes": args.tap_block_bytes,
            "frequency_tile": args.frequency_tile,
        }
        try:
            rows += child_rows(__file__, spec, "tensorflow", describe)
        except RuntimeError as error:
            print(f"H {hidden}: the export failed: {error}")
    print(
        "paper maps and kernels (N 256, scales 64,32,32, D 2304, K 9, L 4), "
        f"both networks, opset default; load average after: {load_average()}\n"
    )
    print(
        "| H | peak RSS GiB | convert s | nodes | MatMul | file GiB | "
        "max abs ONNX - Keras |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        diff = "-" if row["max_diff"] is None else f"{row['max_diff']:.1e}"
        print(
            f"| {row['hidden']} | {row['peak_rss_gib']:.2f} | {row['convert_s']:.1f} "
            f"| {row['nodes']} | {row['matmuls']} | {row['size_gib']:.2f} | {diff} |"
        )


if __name__ == "__main__":
    main()
