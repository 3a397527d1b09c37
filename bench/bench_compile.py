"""Compile time and step time of a training step, per component and per
network, on TensorFlow with XLA and on JAX. Prints one table.

    python bench/bench_compile.py                      # the paper config
    python bench/bench_compile.py --backends=jax --runs=0   # compile only
    python bench/bench_compile.py --config=narrow      # D 256, H 64
    python bench/bench_compile.py --config=tiny --runs=1

A training step here is the value and gradient of a loss (no optimizer
update): for a component, sum(output * upstream) / size with respect to its
weights and its input; for a network, its training loss
(`ScaledOverlapLoss` on random max IoU, `ProposalClassLoss` on random labels)
with respect to its weights. Components (`--components`, in this order):

    encoder      ClipEncoder, [B, N, D] -> [B, N, H]
    pool         StackedMaxPool (range-max table), [B, N, H] -> [B, P, H]
    band_conv    SubMapNetwork with the band conv, [B, P, H] -> [B, P, H]
    heads        OverlapHead and ClassHead, [B, P, H] -> [B, P], [B, P, C]
    proposal     the proposal network (the paper recipe, no prototypes)
    classifier   the classifier network (the paper recipe, no prototypes)

JAX: `jax.jit(jax.value_and_grad(...))`, compiled ahead of time, so "compile
s" is tracing + lowering + XLA compilation, before the first call, and "XLA
s" the XLA compilation alone (`Lowered.compile`).
TensorFlow: `tf.function(jit_compile=True)` of a GradientTape step; its first
call traces, compiles and runs, so "compile s" is the first call's time minus
the median call's, and "XLA s" is the compile time TensorFlow's XLA logs
itself for the step's clusters (device_compilation_profiler), which holds
neither the tracing nor the first run's allocations. "step s" is the median
of `--runs` calls after the first.
Each backend runs in its own subprocess; the load average (1, 5, 15 min) is
printed before and after each, since the machine may be shared.
"""

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path[:0] = [REPO, BENCH]

from bench_gpu import PAPER, TINY, parse_or_run_child

COMPONENTS = ("encoder", "pool", "band_conv", "heads", "proposal", "classifier")
BACKENDS = ("tensorflow", "jax")
# The paper's config (hacs.flags) and the tiny one of bench_gpu.py, and the
# paper's maps and kernels at narrow widths: steps in seconds here.
CONFIGS = {
    "paper": PAPER,
    "narrow": dict(PAPER, feature_dim=256, hidden_size=64),
    "tiny": TINY,
}


def load_average():
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def component_model(name, config):
    """(keras.Model, loss(target, output), input shape without batch, target maker)."""
    import keras
    import numpy as np

    from tal_keras import layers, losses, models

    lattice = config.lattice
    rng = np.random.default_rng(0)
    if name == "proposal":
        loss = losses.ScaledOverlapLoss()

        def targets(batch):
            return rng.uniform(size=(batch, lattice.num_proposals)).astype("float32")

        return (
            models.build_proposal_network(config),
            loss,
            (config.num_clips, config.feature_dim),
            targets,
        )
    if name == "classifier":
        loss = losses.ProposalClassLoss()

        def labels(batch):
            values = rng.integers(
                -1, config.num_classes, (batch, lattice.num_proposals)
            )
            return values.astype("int32")

        return (
            models.build_classifier_network(config),
            loss,
            (config.num_clips, config.feature_dim),
            labels,
        )
    hidden = config.hidden_size
    if name == "encoder":
        shape = (config.num_clips, config.feature_dim)
        inputs = keras.Input(shape)
        outputs = layers.ClipEncoder(hidden)(inputs)
    elif name == "pool":
        shape = (config.num_clips, hidden)
        inputs = keras.Input(shape)
        outputs = layers.StackedMaxPool(config.num_clips, config.scale_layers)(inputs)
    elif name == "band_conv":
        shape = (lattice.num_proposals, hidden)
        inputs = keras.Input(shape)
        outputs = layers.SubMapNetwork(
            config.num_clips,
            config.scale_layers,
            hidden,
            kernel_size=config.kernel_size,
            num_conv_layers=config.num_conv_layers,
            map_mode=config.map_mode,
            conv_implementation="band",
        )(inputs)
    elif name == "heads":
        shape = (lattice.num_proposals, hidden)
        inputs = keras.Input(shape)
        outputs = keras.layers.Concatenate()(
            [
                keras.ops.expand_dims(layers.OverlapHead()(inputs), -1),
                layers.ClassHead(config.num_classes)(inputs),
            ]
        )
    else:
        raise ValueError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
    model = keras.Model(inputs, outputs)
    upstream = {}

    def upstream_loss(target, output):
        return keras.ops.sum(output * target) / keras.ops.cast(
            keras.ops.size(output), output.dtype
        )

    def upstream_values(batch):
        if batch not in upstream:
            size = (batch, *model.outputs[0].shape[1:])
            upstream[batch] = rng.normal(size=size).astype("float32")
        return upstream[batch]

    return model, upstream_loss, shape, upstream_values


def run_jax(model, loss, inputs, target, runs, input_gradient):
    import jax

    def value(trainable, non_trainable, inputs, target):
        output, _ = model.stateless_call(
            trainable, non_trainable, inputs, training=True
        )
        return loss(target, output)

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    argnums = (0, 2) if input_gradient else 0
    step = jax.jit(jax.value_and_grad(value, argnums=argnums))
    start = time.perf_counter()
    lowered = step.lower(trainable, non_trainable, inputs, target)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    xla_s = time.perf_counter() - lowered_at
    times, values = [], []
    for _ in range(runs + 1 if runs else 0):  # --runs=0: compile only
        start = time.perf_counter()
        result = jax.block_until_ready(
            compiled(trainable, non_trainable, inputs, target)
        )
        times.append(time.perf_counter() - start)
        values.append(float(result[0]))
    return compile_s, xla_s, _median(times[1:]), values


def _median(times):
    return statistics.median(times) if times else None


def run_tensorflow(model, loss, inputs, target, runs, input_gradient):
    import tensorflow as tf

    inputs, target = tf.constant(inputs), tf.constant(target)
    variables = list(model.trainable_variables)

    @tf.function(jit_compile=True)
    def step(inputs, target):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            value = loss(target, model(inputs, training=True))
        sources = variables + ([inputs] if input_gradient else [])
        return value, tape.gradient(value, sources)

    times, values = [], []
    for run in range(runs + 1):
        with xla_compile_log() if run == 0 else contextlib.nullcontext([]) as logged:
            start = time.perf_counter()
            value, _gradients = step(inputs, target)
            value = float(value)  # waits for the step
            times.append(time.perf_counter() - start)
        values.append(value)
        if run == 0:  # None where nothing was logged (another environment)
            xla_s = sum(logged) if logged else None
    median = _median(times[1:])
    # Without a timed call, the first call's time bounds the compile's.
    compile_s = times[0] if median is None else max(times[0] - median, 0.0)
    return compile_s, xla_s, median, values


# TensorFlow's line per compiled XLA cluster (device_compilation_profiler.cc).
_XLA_COMPILE_LINE = re.compile(r"Compiled \S+ \d+ times, compile time: (\d+) us")
# The environment under which TensorFlow logs that line (read when it loads).
XLA_LOG_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "0",
    "TF_CPP_VMODULE": "device_compilation_profiler=1",
}


@contextlib.contextmanager
def xla_compile_log():
    """Captures the process's standard error (file descriptor 2) while the
    block runs; after it, the yielded list holds the seconds of each XLA
    compile TensorFlow logged meanwhile, and the captured lines that are not
    TensorFlow's info lines are written back to standard error."""
    compiles = []
    with tempfile.TemporaryFile(mode="w+") as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield compiles
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            for line in log:
                match = _XLA_COMPILE_LINE.search(line)
                if match:
                    compiles.append(int(match.group(1)) / 1e6)
                elif not line.startswith("I0000"):
                    sys.stderr.write(line)


def child_main(spec):
    import keras
    import numpy as np

    from tal_keras.config import ModelConfig

    config = ModelConfig(**CONFIGS[spec["config"]], conv_implementation="band")
    backend = keras.backend.backend()
    run = run_jax if backend == "jax" else run_tensorflow
    rng = np.random.default_rng(1)
    for name in spec["components"]:
        keras.utils.set_random_seed(0)
        model, loss, shape, targets = component_model(name, config)
        inputs = rng.normal(size=(spec["batch"], *shape)).astype("float32")
        input_gradient = name not in ("proposal", "classifier")
        row = {"backend": backend, "component": name, "load_before": load_average()}
        row["compile_s"], row["xla_s"], row["step_s"], row["losses"] = run(
            model, loss, inputs, targets(spec["batch"]), spec["runs"], input_gradient
        )
        row["load_after"] = load_average()
        print("row: " + json.dumps(row), flush=True)


def run_backend(backend, spec):
    def describe(row):
        return (
            f"{row['backend']} {row['component']} compile "
            f"{row['compile_s']:.2f} s (XLA {_seconds(row['xla_s'])} s), "
            f"step {_seconds(row['step_s'])} s"
        )

    logging = XLA_LOG_ENVIRONMENT if backend == "tensorflow" else {}
    return child_rows(__file__, spec, backend, describe, logging)


def child_rows(script, spec, backend, describe, environment=None):
    """Runs `python SCRIPT --_child SPEC` with KERAS_BACKEND=`backend` (and
    the variables of `environment`, a dict); returns the rows it prints as
    "row: JSON" lines, each shown by `describe(row)` as it comes. Raises
    RuntimeError if it fails."""
    environment = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [REPO, os.environ.get("PYTHONPATH")])
        ),
        **(environment or {}),
    }
    command = [sys.executable, os.path.abspath(script), "--_child", json.dumps(spec)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=environment
    )
    rows = []
    for line in process.stdout:
        if line.startswith("row: "):
            rows.append(json.loads(line[len("row: ") :]))
            print(f"row: {describe(rows[-1])}", flush=True)
    if process.wait() != 0 or not rows:
        raise RuntimeError(
            f"{os.path.basename(script)} on {backend} failed (exit "
            f"{process.returncode}): {json.dumps(spec)}"
        )
    return rows


def header_lines(config_name, config, batch, runs):
    """The lines above a table: config, batch, CPUs, what the medians are."""
    shape = ", ".join(f"{key} {value}" for key, value in config.items())
    return [
        (
            f"config: {config_name}: {shape}; band conv as computed by default "
            "(on CPUs the frequency form where MapBand.frequency_tile picks it, "
            "on GPUs the taps; engines named -taps or -frequency: that form); "
            f"batch {batch}"
        ),
        (
            f"{os.cpu_count()} CPUs; step s: median of {runs} steps after the first; "
            "load average 1/5/15 min"
        ),
        "",
    ]


def print_table(args, config, rows, format_rows):
    """Prints the table of `rows` (`format_rows`) under `header_lines` of the
    parsed `args` and `config`; with --out, also writes rows and lines as JSON."""
    lines = header_lines(args.config, config, args.batch, args.runs)
    lines += format_rows(rows)
    print("\n".join(lines), flush=True)
    if args.out:
        from tal_keras.atomic import write_json_atomic

        write_json_atomic(args.out, {"rows": rows, "table": lines}, indent=1)


def _seconds(value):
    return "-" if value is None else f"{value:.3f}"


def format_table(rows):
    lines = [
        (
            "| backend | component | compile s | XLA s | step s | load avg before "
            "| load avg after |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"tensorflow": "TF-XLA", "jax": "JAX"}
    for row in rows:
        lines.append(
            f"| {names[row['backend']]} | {row['component']} | {row['compile_s']:.2f} "
            f"| {_seconds(row['xla_s'])} | {_seconds(row['step_s'])} "
            f"| {row['load_before']} | {row['load_after']} |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--components", default=",".join(COMPONENTS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="timed calls per row; 0: JAX compiles only, TensorFlow's compile "
        "row is then its first call (compile and one step)",
    )
    args = parse_or_run_child(parser, argv, child_main)
    if args is None:
        return 0
    components = [name for name in args.components.split(",") if name]
    backends = [name for name in args.backends.split(",") if name]
    for name in components:
        if name not in COMPONENTS:
            parser.error(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
    for name in backends:
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    spec = {
        "config": args.config,
        "components": components,
        "batch": args.batch,
        "runs": args.runs,
    }
    rows = []
    for backend in backends:
        rows += run_backend(backend, spec)
    print_table(args, CONFIGS[args.config], rows, format_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
