"""What float32 matrix products reach on this CPU, and what that means for
the paper config's band conv: one table.

    python bench/gemm_ceiling.py

Times one product of the band conv's shape ([27,064, 512] x [512, 512], the
rows of its widest band at batch 1) in onnxruntime (the serving engine),
TensorFlow (Keras' backend here) and numpy, and, where PyTorch is
installed, that product and a 9 x 9 convolution of 512 channels on a
64 x 64 map (oneDNN's direct convolution, what 2D-TAN's MapConv runs), each
with 1 and 2 threads. "GFLOP/s" counts a multiply-add as 2 FLOPs, median of
`--runs` calls after a warm-up. The last columns divide the paper config's
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

ROWS, CHANNELS = 27064, 512


def median_seconds(call, runs):
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def onnxruntime_product(threads):
    import onnxruntime
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "product",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, CHANNELS]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [CHANNELS, CHANNELS]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return lambda a, b: session.run(None, {"a": a, "b": b})


def tensorflow_product(threads):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    product = tf.function(tf.matmul)
    return lambda a, b: product(a, b).numpy()


def measure(engine, threads, runs):
    """GFLOP/s of one engine; run in a fresh process per thread count."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((ROWS, CHANNELS), dtype=np.float32)
    b = rng.standard_normal((CHANNELS, CHANNELS), dtype=np.float32)
    flops = 2.0 * ROWS * CHANNELS * CHANNELS
    if engine == "onnxruntime MatMul":
        call = onnxruntime_product(threads)
        return flops / median_seconds(lambda: call(a, b), runs) / 1e9
    if engine == "TensorFlow matmul":
        call = tensorflow_product(threads)
        return flops / median_seconds(lambda: call(a, b), runs) / 1e9
    if engine == "numpy matmul":
        return flops / median_seconds(lambda: a @ b, runs) / 1e9
    import torch

    torch.set_num_threads(threads)
    if engine == "PyTorch matmul":
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        return flops / median_seconds(lambda: ta @ tb, runs) / 1e9
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
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        engine, threads = args._child.rsplit(":", 1)
        print(f"gflops: {measure(engine, int(threads), args.runs)}", flush=True)
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
        "| engine | threads | GFLOP/s | band conv s at this rate | valid-cell minimum s |"
    )
    print("| --- | --- | --- | --- | --- |")
    for engine in ENGINES:
        for threads in (1, 2):
            # OMP_NUM_THREADS: numpy's BLAS reads it at import.
            environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
            environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    f"--_child={engine}:{threads}",
                    f"--runs={args.runs}",
                ],
                capture_output=True,
                text=True,
                env=environment,
                check=False,
            )
            lines = [
                line for line in done.stdout.splitlines() if line.startswith("gflops: ")
            ]
            if not lines:
                print(
                    f"| {engine} | {threads} | not run ({done.stderr.strip().splitlines()[-1:]}) | | |"
                )
                continue
            rate = float(lines[-1].split()[1]) * 1e9
            print(
                f"| {engine} | {threads} | {rate / 1e9:.0f} | {band / rate:.1f} "
                f"| {valid / rate:.1f} |"
            )
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
