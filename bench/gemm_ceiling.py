"""What float32 matrix products reach on this CPU, and what that means for
the paper config's band conv: one table.

    python bench/gemm_ceiling.py [--rows 27064,1024] [--runs 5]

Times one product of the band conv's shape ([rows, 512] x [512, 512]; 27,064
rows: the widest band at batch 1; 1,024: one of the export's blocks of rows,
`export.onnx_export.TAP_BLOCK_BYTES`) in onnxruntime (the serving engine;
the [512, 512] factor a constant, as the kernel slices are in the export,
so that onnxruntime packs it once), TensorFlow (Keras' backend here) and
numpy, and, where PyTorch is installed, that product and a 9 x 9
convolution of 512 channels on a 64 x 64 map (oneDNN's direct convolution,
what 2D-TAN's MapConv runs; not per row count), each with 1 and 2 threads.
"GFLOP/s" counts a multiply-add as 2 FLOPs, median of `--runs` calls after
a warm-up (products of fewer rows are called as many times more in each
timed call, so that each call does the same work). The last columns divide the paper config's
band conv (the proposal network's map conv, `tal_keras.flops.model_cost`:
on the band cells, and on the proposal cells alone, the least any exact
scheme computes; the rest of both networks is under 0.5% of it) by
that rate: the shortest time one video could take at that rate.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path[:0] = [REPO, BENCH]

from bench_compile import load_average

CHANNELS = 512
WIDEST_BAND = 27064  # rows of the paper config's widest band at batch 1


def median_seconds(call, runs):
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def onnxruntime_product(threads, b):
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "product",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, CHANNELS])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return lambda a: session.run(None, {"a": a})


def tensorflow_product(threads):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    product = tf.function(tf.matmul)
    return lambda a, b: product(a, b).numpy()


def measure(engine, threads, rows, runs):
    """GFLOP/s of one engine; run in a fresh process per thread count."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, CHANNELS), dtype=np.float32)
    b = rng.standard_normal((CHANNELS, CHANNELS), dtype=np.float32)
    repeats = max(1, WIDEST_BAND // rows)
    flops = 2.0 * rows * CHANNELS * CHANNELS * repeats

    def rate(product):
        def call():
            for _ in range(repeats):
                product()

        return flops / median_seconds(call, runs) / 1e9

    if engine == "onnxruntime MatMul":
        session_call = onnxruntime_product(threads, b)
        return rate(lambda: session_call(a))
    if engine == "TensorFlow matmul":
        tf_call = tensorflow_product(threads)
        return rate(lambda: tf_call(a, b))
    if engine == "numpy matmul":
        return rate(lambda: a @ b)
    import torch

    torch.set_num_threads(threads)
    if engine == "PyTorch matmul":
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        return rate(lambda: ta @ tb)
    x = torch.randn(1, CHANNELS, 64, 64)
    w = torch.randn(CHANNELS, CHANNELS, 9, 9)
    conv_flops = 2.0 * 64 * 64 * CHANNELS * CHANNELS * 81
    with torch.no_grad():
        seconds = median_seconds(
            lambda: torch.nn.functional.conv2d(x, w, padding=4), max(1, runs // 2)
        )
    return conv_flops / seconds / 1e9


ENGINES = (
    "onnxruntime MatMul",
    "TensorFlow matmul",
    "numpy matmul",
    "PyTorch matmul",
    "PyTorch conv2d 9x9",
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--rows",
        default=f"{WIDEST_BAND},1024",
        help="comma-separated rows of the products",
    )
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        engine, threads, rows = args._child.rsplit(":", 2)
        rate = measure(engine, int(threads), int(rows), args.runs)
        print(f"gflops: {rate}", flush=True)
        return
    import subprocess

    from tal_keras.config import ModelConfig
    from tal_keras.flops import model_cost

    cost = model_cost(ModelConfig())
    band, valid = cost["map_conv_flops_band"], cost["map_conv_flops_valid_cells"]
    print(
        f"paper config band conv per video: {band / 1e12:.2f} TFLOP on the band "
        f"cells, {valid / 1e12:.2f} TFLOP on the proposal cells alone\n"
    )
    print(
        "| engine | rows | threads | GFLOP/s | band conv s at this rate "
        "| valid-cell minimum s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    rows_list = [int(rows) for rows in args.rows.split(",")]
    for engine in ENGINES:
        # The convolution's shape is its own: one row count.
        for rows in rows_list[:1] if engine == "PyTorch conv2d 9x9" else rows_list:
            for threads in (1, 2):
                # OMP_NUM_THREADS: numpy's BLAS reads it at import.
                environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
                environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        f"--_child={engine}:{threads}:{rows}",
                        f"--runs={args.runs}",
                    ],
                    capture_output=True,
                    text=True,
                    env=environment,
                    check=False,
                )
                shown_rows = "64 x 64 map" if engine == "PyTorch conv2d 9x9" else rows
                lines = [
                    line
                    for line in done.stdout.splitlines()
                    if line.startswith("gflops: ")
                ]
                if not lines:
                    why = done.stderr.strip().splitlines()[-1:]
                    print(
                        f"| {engine} | {shown_rows} | {threads} | not run ({why}) | | |"
                    )
                    continue
                rate = float(lines[-1].split()[1]) * 1e9
                print(
                    f"| {engine} | {shown_rows} | {threads} | {rate / 1e9:.0f} "
                    f"| {band / rate:.1f} | {valid / rate:.1f} |"
                )
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
