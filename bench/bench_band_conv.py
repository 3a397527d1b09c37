"""Whole-map vs band-limited map convs: per-video forward time and
peak memory through Keras on TensorFlow and through onnxruntime on the CPU,
FLOPs against the valid-cell minimum, and one training step, for the demo
config and the paper config. Prints one table.

    python bench/bench_band_conv.py [--configs demo,paper_maps,paper]
        [--runs 3] [--slow_runs 1] [--skip_onnx paper:whole]
        [--train_configs demo,paper_maps] [--train_steps 3]
        [--workdir /tmp/bench_band_conv]

Every figure comes from fresh subprocesses: each builds the model (or the
onnxruntime session) and makes one warm-up call (tracing, first
allocations). Times: `--runs` further calls (`--slow_runs` for whole maps at
the paper config, which take minutes per call) under default settings;
"median s" is their median. Memory: one further call in a second process
whose peak-RSS counter was reset after the warm-up (/proc/self/clear_refs).
"peak MiB" is that process's peak resident set size during the call; "+run
MiB" the memory the call adds on top of what was live before it (weights,
traced graph, runtime): for Keras, the peak of TensorFlow's CPU allocator
(its BFC allocator, switched on for this) minus its use before the call; for
onnxruntime (its arena off, glibc returning freed blocks of 1 MiB and more at
once), the RSS peak minus the RSS before the call. These allocator settings
slow onnxruntime's many small allocations, hence the separate timing runs.

Forward passes use batch 1 (one video); the training step (forward, backward
and Adam update through `train_on_batch`) uses demo.flags' batch size.
Configs: "demo" (demo.flags' maps and widths, the paper recipe), "paper" (the report's) and "paper_maps" (the
paper's maps and kernels at the demo's widths D and H, so that whole maps
train in minutes). Training rows with path "none" run the same network
without its map convs: the memory and time both paths share. The machine is shared: timings vary with its load, so
compare rows of one run of this script.
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# Runnable from a checkout without installing the package.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tal_keras.config import ModelConfig
from tal_keras.flags import flagfile_run_config
from tal_keras.flops import model_cost

# The demo's maps, widths and batch size are read from demo.flags, around
# the paper recipe's network with the report's classes; the paper's config is
# the report's (hacs.flags, ModelConfig's defaults).
_DEMO_RUN = flagfile_run_config(
    os.path.join(REPO, "demo.flags"),
    "--recipe=paper",
    f"--num_classes={ModelConfig.num_classes}",
)[0]
DEMO_CONFIG, TRAIN_BATCH = _DEMO_RUN.model, _DEMO_RUN.train.batch_size
CONFIGS = {
    "demo": DEMO_CONFIG,
    "paper": ModelConfig(),
    # The paper's maps (N 256, K 9, L 4) at the demo's widths: a training
    # step whose whole-map version fits minutes on 2 cores.
    "paper_maps": dataclasses.replace(
        ModelConfig(),
        feature_dim=DEMO_CONFIG.feature_dim,
        hidden_size=DEMO_CONFIG.hidden_size,
    ),
}
PATHS = ("whole", "band")


def memory_mib(field):
    """VmRSS (current) or VmHWM (peak since the last reset) of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def timed(function, runs, allocator_stats=None):
    """Times `runs` calls after a warm-up; peak memory during them.

    allocator_stats: None, or a function that resets the framework
    allocator's peak and returns (current, peak) bytes; then "plus" is that
    allocator's peak minus its current use before the runs, else the RSS
    peak minus the RSS before the runs.
    """
    function()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    rss_before = memory_mib("VmRSS")
    if allocator_stats:
        allocated_before, _ = allocator_stats(reset=True)
    seconds = []
    for _ in range(runs):
        begin = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - begin)
    peak = memory_mib("VmHWM")
    if allocator_stats:
        _, allocated_peak = allocator_stats(reset=False)
        plus = (allocated_peak - allocated_before) / 2**20
    else:
        plus = peak - rss_before
    return {"seconds": seconds, "peak": peak, "plus": plus}


def tensorflow_allocator_stats(reset):
    """(current, peak) bytes of TensorFlow's CPU allocator (BFC, see run_child)."""
    import tensorflow as tf

    if reset:
        tf.config.experimental.reset_memory_stats("CPU:0")
    info = tf.config.experimental.get_memory_info("CPU:0")
    return info["current"], info["peak"]


def clip_features(config, batch, seed=1):
    shape = (batch, config.num_clips, config.feature_dim)
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def build_network(config, path):
    """The proposal network with `path` map convs; "none": without map convs
    (SubMapNetwork stops after its projection and L2 norm), what both paths
    share."""
    import keras

    from tal_keras.models import build_proposal_network

    if path == "none":
        from tal_keras.layers import sub_map_network

        def projection_only(network, proposal_features):
            projected = network.projection(proposal_features)
            return sub_map_network._l2_normalize(projected)

        sub_map_network.SubMapNetwork.call = projection_only
        path = "band"
    keras.utils.set_random_seed(0)  # same weights for both paths
    return build_proposal_network(dataclasses.replace(config, conv_implementation=path))


def task_keras(args):
    config = CONFIGS[args.config]
    model = build_network(config, args.path)
    features = clip_features(config, 1)
    outputs = []

    def forward():
        outputs[:] = [model.predict_on_batch(features)]

    result = timed(forward, args.runs, args.memory and tensorflow_allocator_stats)
    if args.output:
        np.save(args.output, np.asarray(outputs[0]))
    if args.onnx:
        model.export(args.onnx, format="onnx", verbose=False)
    return result


def task_onnx(args):
    import onnxruntime

    config = CONFIGS[args.config]
    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = not args.memory  # off: the RSS follows tensors
    session = onnxruntime.InferenceSession(
        args.onnx, options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    features = clip_features(config, 1)
    outputs = []

    def forward():
        outputs[:] = session.run(None, {name: features})

    result = timed(forward, args.runs)
    if args.output:
        np.save(args.output, outputs[0])
    return result


def task_train(args):
    import keras

    from tal_keras.losses import ScaledOverlapLoss

    config = CONFIGS[args.config]
    model = build_network(config, args.path)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ScaledOverlapLoss())
    features = clip_features(config, TRAIN_BATCH)
    max_iou = np.random.default_rng(2).uniform(
        size=(TRAIN_BATCH, config.lattice.num_proposals)
    )
    return timed(
        lambda: model.train_on_batch(features, max_iou),
        args.runs,
        args.memory and tensorflow_allocator_stats,
    )


TASKS = {"keras": task_keras, "onnx": task_onnx, "train": task_train}


def run_child(task, memory=False, **options):
    """One measurement in a fresh process; with `memory`, under allocators
    that count (TensorFlow's BFC allocator; onnxruntime without its arena and
    glibc returning blocks of 1 MiB and more at once), which slow some runs,
    so times come from a run without them."""
    command = [sys.executable, os.path.abspath(__file__), "--task", task]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    if memory:
        command += ["--memory"]
        environment.update(
            MALLOC_MMAP_THRESHOLD_=str(1 << 20), TF_CPU_ALLOCATOR_USE_BFC="true"
        )
    result = subprocess.run(
        command, capture_output=True, text=True, env=environment, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(task, runs, output="", onnx="", **options):
    """Median-worthy times from one child, peak memory from another (1 run)."""
    timing = run_child(task, runs=runs, output=output, onnx=onnx, **options)
    onnx_input = onnx if task == "onnx" else ""
    memory = run_child(task, memory=True, runs=1, onnx=onnx_input, **options)
    return {
        "seconds": timing["seconds"],
        "peak": memory["peak"],
        "plus": memory["plus"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="demo,paper_maps,paper")
    parser.add_argument(
        "--skip_onnx",
        default="paper:whole",
        help="config:path pairs not exported (tf2onnx needs more than 20 GiB "
        "to export the whole-map network at the paper config)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slow_runs", type=int, default=1)
    parser.add_argument("--train_steps", type=int, default=3)
    parser.add_argument("--train_configs", default="demo,paper_maps")
    parser.add_argument("--workdir", default="/tmp/bench_band_conv")
    # Internal: one measurement in this process.
    parser.add_argument("--task", choices=sorted(TASKS))
    parser.add_argument("--config")
    parser.add_argument("--path")
    parser.add_argument("--onnx", default="")
    parser.add_argument("--output", default="")
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()
    if args.task:
        print(json.dumps(TASKS[args.task](args)))
        return

    os.makedirs(args.workdir, exist_ok=True)
    rows, notes = [], []
    for name in args.configs.split(","):
        config = CONFIGS[name]
        cost = model_cost(config)
        valid = cost["map_conv_flops_valid_cells"]
        outputs = {}
        for path in PATHS:
            flops = cost[f"map_conv_flops_{path}"]
            runs = args.slow_runs if (name, path) == ("paper", "whole") else args.runs
            stem = os.path.join(args.workdir, f"{name}_{path}")
            for engine, task in (("keras-tf", "keras"), ("onnxruntime", "onnx")):
                skipped = f"{name}:{path}" in args.skip_onnx.split(",")
                run = f"{engine} forward b1"
                if task == "onnx" and skipped:
                    rows.append((name, path, run, None, flops, valid))
                    print(_row(*rows[-1]), flush=True)
                    continue
                output = f"{stem}_{task}.npy"
                result = measure(
                    task,
                    runs,
                    output=output,
                    onnx="" if skipped else stem + ".onnx",
                    config=name,
                    path=path,
                )
                outputs[path, engine] = np.load(output)
                rows.append((name, path, run, result, flops, valid))
                print(_row(*rows[-1]), flush=True)
        band_vs_whole = np.abs(
            outputs["band", "keras-tf"] - outputs["whole", "keras-tf"]
        ).max()
        onnx_vs_keras = np.abs(
            outputs["band", "onnxruntime"] - outputs["band", "keras-tf"]
        ).max()
        notes.append(
            f"{name}: max |P_over band - whole| (Keras) {band_vs_whole:.2e}, "
            f"max |P_over onnxruntime - Keras| (band) {onnx_vs_keras:.2e}"
        )
    for pair in args.skip_onnx.split(","):
        if pair.split(":")[0] in args.configs.split(","):
            notes.append(f"{pair}: not exported to ONNX (--skip_onnx)")
    for name in args.train_configs.split(","):
        for path in (*PATHS, "none"):
            result = measure("train", args.train_steps, config=name, path=path)
            rows.append((name, path, f"keras-tf train b{TRAIN_BATCH}", result, None, 1))
            print(_row(*rows[-1]), flush=True)
    print()
    for name in dict.fromkeys(args.configs.split(",") + args.train_configs.split(",")):
        config = CONFIGS[name]
        print(
            f"{name}: N {config.num_clips}, scales {config.scale_layers}, "
            f"D {config.feature_dim}, H {config.hidden_size}, K {config.kernel_size}, "
            f"L {config.num_conv_layers}, {config.map_mode}, "
            f"{config.lattice.num_proposals} proposals"
            + (
                f", training batch {TRAIN_BATCH}"
                if name in args.train_configs.split(",")
                else ""
            )
        )
    print(_header())
    for row in rows:
        print(_row(*row))
    for note in notes:
        print(note)


def _header():
    header = (
        f"{'config':<11}{'path':<6}{'run':<24}{'median s':>10}{'runs':>6}"
        f"{'peak MiB':>10}{'+run MiB':>10}{'conv GFLOP':>12}{'x valid':>9}"
    )
    return header + "\n" + "-" * len(header)


def _row(name, path, run, result, flops, valid):
    if result is None:
        return f"{name:<11}{path:<6}{run:<24}{'not run':>10}"
    flop_columns = (
        f"{flops / 1e9:>12.1f}{flops / valid:>9.2f}"
        if flops is not None
        else f"{'':>12}{'':>9}"
    )
    return (
        f"{name:<11}{path:<6}{run:<24}{statistics.median(result['seconds']):>10.3f}"
        f"{len(result['seconds']):>6}{result['peak']:>10.0f}"
        f"{result['plus']:>10.0f}{flop_columns}"
    )


if __name__ == "__main__":
    main()
