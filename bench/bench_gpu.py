"""GPU benchmark of the paper config in one call: this project's networks on
Keras 3 / JAX beside 2D-TAN's own PyTorch modules, same run, same card.
Prints one table.

    # on a GPU machine (about 6-8 minutes; see the device notes below)
    python bench/bench_gpu.py --tan_lib=PATH/TO/2D-TAN/lib --out=bench_gpu.json
    # CPU smoke test at a tiny config (about a minute)
    python bench/bench_gpu.py --tiny

Rows, per group: forward at each of `--batch_sizes` (default 1 and 32) and
one training step (forward, backward, Adam update) at the largest batch.
Groups (`--groups`, run in this order, each in its own subprocess):

    keras-band-f32, keras-band-bf16      proposal network, band map convs
                                         (the default: on a GPU by taps)
    keras-frequency-f32                  the same in the frequency form
                                         (the default on CPUs)
    keras-whole-f32, keras-whole-bf16    proposal network, whole maps
    keras-classifier-f32, -bf16          classifier network
    keras-band-f32-autotune0             keras-band-f32 with XLA's GPU
                                         autotuner off (--xla_gpu_autotune_level=0)
    torch-2dtan-f32, torch-2dtan-bf16    2D-TAN's SparsePropMaxPool + MapConv

f32 is float32 (TF32 where the framework uses it by default: PyTorch's cuDNN
convs, XLA's dots and convs at default precision); bf16 is Keras'
"mixed_bfloat16" policy (bfloat16 compute, float32 weights) or
`torch.autocast(dtype=torch.bfloat16)`.

The Keras networks are the library's own (`tal_keras.models`): proposal
features from the range-maximum table (`StackedMaxPool`: 9 levels and two
gathers at the paper's lattice, not 2D-TAN's 128 chained pools) and, in the
band groups, the band conv (`BandMapConv`), so the rows follow the layers.

Keras rows run the functions `model.fit` and `model.predict` run, compiled
ahead of time so that compile and run are timed apart: the forward is
`jax.jit` of `model.stateless_call`, the training step `jax.jit` of
`model.train_step` with its state donated, as Keras' JAX trainer jits it.
"compile s" is tracing + lowering + XLA compilation, before the first call;
"ms/batch" the median of `--runs` calls after one warm-up call. "peak GiB":
the device allocator's peak (`memory_stats()["peak_bytes_in_use"]`) after
the row; it never resets inside a process, and rows run from the smallest to
the largest, so it is each row's peak as long as rows grow (GPU only).
"XLA GiB": what the compiled program needs by XLA's own count (arguments +
outputs - aliased + temporaries; CPU and GPU).

The 2D-TAN rows import microsoft/2D-TAN's modules from `--tan_lib` (its
`lib/` folder; nothing of it is copied here): FrameAvgPool (1x1 conv1d
D -> H + ReLU, pooling of 1), SparsePropMaxPool at `scale_layers`, MapConv
with K x K kernels, H channels, 'same' padding and L layers (its mask step
included), a 1x1 Conv2d head times the map mask, as 2D-TAN's TAN.forward
without the text fusion; the training step is its bce_rescale_loss (t_min
0.5, t_max 1, no bias) and Adam (lr 1e-3). cudnn.benchmark is on, as
2D-TAN's config sets it. "compile s" there is the first call's time minus
the median call's (cuDNN's algorithm search, allocator warm-up). Its map is
one N x N map holding every lattice cell, so the TFLOP column is this
project's `--map=2dtan` whole-map count. On a machine without CUDA the
modules' hard-coded `.cuda()` is made a no-op (the CPU smoke test only).

TFLOP/video counts 2 per multiply-add of the dense and conv layers
(tal_keras.flops; the frequency form's count for its group, at the paper
config a fifth of the taps'); "TFLOP/s" is that times the batch over the time, times 3
for a training step (forward + two backward products): an estimate of how
near the card's matrix throughput a row runs.

Each group has `--group_timeout_s` and the whole run `--budget_s`: a group
that stalls (XLA's GPU autotuner was seen to) is killed, its missing rows are
marked, and the next group runs; groups left when the budget is spent are
listed as not run. Rows are printed as they finish (lines starting "row:"),
then the table.

Device notes: this script imports no TensorFlow and no tal_keras module that
does (the lent GPU machines have none): it needs numpy, jax with CUDA, keras
(with namex, optree) and, for 2D-TAN's rows, torch. XLA flags for every JAX
group: `--xla_flags` (e.g. `--xla_gpu_autotune_level=0`); they are added to
XLA_FLAGS in the group's environment before JAX is imported.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

# Runnable from a checkout without installing the package.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tal_keras.atomic import write_json_atomic
from tal_keras.config import ModelConfig

ALL_GROUPS = (
    "keras-band-f32",
    "torch-2dtan-f32",
    "keras-band-bf16",
    "keras-classifier-f32",
    "torch-2dtan-bf16",
    "keras-band-f32-autotune0",
    "keras-classifier-bf16",
    "keras-frequency-f32",
    "keras-whole-f32",
    "keras-whole-bf16",
)

# The shapes a row's cost depends on. The report's config (hacs.flags) is
# ModelConfig's defaults; a tiny one for the CPU smoke test.
SHAPE_FIELDS = (
    "num_clips",
    "scale_layers",
    "feature_dim",
    "hidden_size",
    "kernel_size",
    "num_conv_layers",
    "num_classes",
)
PAPER = {name: getattr(ModelConfig(), name) for name in SHAPE_FIELDS}
TINY = {
    "num_clips": 16,
    "scale_layers": (4, 2, 2),
    "feature_dim": 32,
    "hidden_size": 16,
    "kernel_size": 3,
    "num_conv_layers": 2,
    "num_classes": 5,
}
# The paper's maps and kernels at narrow widths: N 256 on a CPU in minutes.
NARROW = dict(PAPER, feature_dim=64, hidden_size=16, num_classes=20)
CONFIGS = {"paper": PAPER, "narrow": NARROW, "tiny": TINY}
LEARNING_RATE = 1e-3
T_MIN, T_MAX = 0.5, 1.0

# Targets on one H100 or H200: (what, group, run, field, limit).
TARGETS = (
    (
        "compile of the first training step",
        "keras-band-f32",
        "train",
        "compile_s",
        60.0,
    ),
    ("training step, float32", "keras-band-f32", "train", "ms_batch", 2000.0),
    ("training step, mixed bfloat16", "keras-band-bf16", "train", "ms_batch", 1000.0),
    (
        "forward per video at the largest batch",
        "keras-band-f32",
        "forward",
        "ms_video",
        20.0,
    ),
    ("peak training memory", "keras-band-f32", "train", "peak_gib", 24.0),
)


def parse_group(name):
    """'keras-band-f32-autotune0' -> dict(engine, network, maps, precision, autotune0)."""
    parts = name.split("-")
    if parts[0] not in ("keras", "torch") or len(parts) < 3:
        raise ValueError(f"unknown group {name!r}; known: {', '.join(ALL_GROUPS)}")
    engine, kind, precision = parts[0], parts[1], parts[2]
    extra = parts[3:]
    if precision not in ("f32", "bf16") or extra not in ([], ["autotune0"]):
        raise ValueError(f"unknown group {name!r}; known: {', '.join(ALL_GROUPS)}")
    if engine == "keras" and kind in ("band", "frequency", "whole"):
        network, maps = "proposal", kind
    elif engine == "keras" and kind == "classifier":
        network, maps = "classifier", "-"
    elif engine == "torch" and kind == "2dtan":
        network, maps = "2D-TAN", "whole 2dtan"
    else:
        raise ValueError(f"unknown group {name!r}; known: {', '.join(ALL_GROUPS)}")
    return {
        "engine": engine,
        "network": network,
        "maps": maps,
        "precision": precision,
        "autotune0": bool(extra),
    }


# ---------------------------------------------------------------- children


def _emit(kind, payload):
    print(f"{kind}: {json.dumps(payload)}", flush=True)


# What a row may fail with and still be a result: out of memory (JAX's
# XlaRuntimeError and torch's OutOfMemoryError are RuntimeErrors), a shape or
# compile error.
RUN_ERRORS = (RuntimeError, ValueError, MemoryError)


def _describe(error):
    return f"{type(error).__name__}: {str(error)[:300]}"


def _median_ms(call, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _model_config(spec):
    maps = spec["maps"] if spec["maps"] in ("band", "frequency", "whole") else "band"
    return ModelConfig(**spec["config"], conv_implementation=maps)


def _flops_per_video(spec):
    """Forward FLOPs per video of the row's network, from tal_keras.flops."""
    import dataclasses

    from tal_keras.flops import model_cost

    config = _model_config(spec)
    if spec["engine"] == "torch":
        cost = model_cost(dataclasses.replace(config, map_mode="2dtan"))
        return cost["proposal_flops_whole"]
    cost = model_cost(config)
    if spec["network"] == "classifier":
        return cost["classifier_flops"]
    return cost[f"proposal_flops_{spec['maps']}"]


def run_keras_group(spec):
    import jax
    import keras
    import numpy as np

    from tal_keras import losses, models

    if keras.backend.backend() != "jax":
        raise RuntimeError("the Keras groups need KERAS_BACKEND=jax")
    device = jax.devices()[0]
    _emit(
        "info",
        {
            "group": spec["name"],
            "device": f"{device.platform}: {device.device_kind}",
            "versions": f"jax {jax.__version__}, keras {keras.__version__}",
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        },
    )
    keras.config.set_dtype_policy(
        "mixed_bfloat16" if spec["precision"] == "bf16" else "float32"
    )
    keras.utils.set_random_seed(0)
    config = _model_config(spec)
    if spec["network"] == "proposal":
        model = models.build_proposal_network(config)
        loss = losses.ScaledOverlapLoss(t_min=T_MIN, t_max=T_MAX)
    else:
        model = models.build_classifier_network(config)
        loss = losses.ProposalClassLoss()
    rng = np.random.default_rng(0)
    proposals = config.lattice.num_proposals

    def clip_features(batch):
        return jax.device_put(
            rng.normal(size=(batch, config.num_clips, config.feature_dim)).astype(
                "float32"
            )
        )

    def targets(batch):
        if spec["network"] == "proposal":
            values = rng.uniform(0.0, 1.0, size=(batch, proposals)).astype("float32")
        else:
            values = rng.integers(-1, config.num_classes, size=(batch, proposals))
            values = values.astype("int32")
        return jax.device_put(values)

    def peak_gib():
        stats = device.memory_stats()
        if not stats or "peak_bytes_in_use" not in stats:
            return None
        return stats["peak_bytes_in_use"] / 2**30

    def xla_gib(compiled):
        try:
            memory = compiled.memory_analysis()
            total = (
                memory.argument_size_in_bytes
                + memory.output_size_in_bytes
                - memory.alias_size_in_bytes
                + memory.temp_size_in_bytes
            )
        except (AttributeError, NotImplementedError, RuntimeError):
            return None  # not every backend reports it
        return total / 2**30

    def variables():
        return (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )

    def forward(trainable, non_trainable, features):
        return model.stateless_call(trainable, non_trainable, features, training=False)[
            0
        ]

    def forward_row(batch):
        row = {"run": "forward", "batch": batch}
        trainable, non_trainable = variables()
        features = clip_features(batch)
        start = time.perf_counter()
        compiled = jax.jit(forward).lower(trainable, non_trainable, features)
        compiled = compiled.compile()
        row["compile_s"] = time.perf_counter() - start
        row["xla_gib"] = xla_gib(compiled)
        jax.block_until_ready(compiled(trainable, non_trainable, features))
        row["ms_batch"] = _median_ms(
            lambda: jax.block_until_ready(compiled(trainable, non_trainable, features)),
            spec["runs"],
        )
        row["peak_gib"] = peak_gib()
        return row

    for batch in spec["batch_sizes"]:
        try:
            row = forward_row(batch)
        except RUN_ERRORS as error:  # an OOM or a compile error is a result
            row = {"run": "forward", "batch": batch, "error": _describe(error)}
        _emit("row", row)

    batch = spec["train_batch"]
    row = {"run": "train", "batch": batch}
    try:
        model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss=loss)
        model.optimizer.build(model.trainable_variables)
        data = (clip_features(batch), targets(batch))
        trainable, non_trainable = variables()
        state = (
            trainable,
            non_trainable,
            [v.value for v in model.optimizer.variables],
            [v.value for v in model.metrics_variables],
        )
        start = time.perf_counter()
        step = jax.jit(model.train_step, donate_argnums=0).lower(state, data)
        step = step.compile()
        row["compile_s"] = time.perf_counter() - start
        row["xla_gib"] = xla_gib(step)
        losses_seen = []
        times = []
        for index in range(spec["runs"] + 1):
            start = time.perf_counter()
            logs, state = step(state, data)
            jax.block_until_ready((logs, state))
            if index:  # the first call is the warm-up
                times.append(time.perf_counter() - start)
            losses_seen.append(float(logs["loss"]))
        row["ms_batch"] = 1e3 * statistics.median(times)
        row["peak_gib"] = peak_gib()
        row["losses"] = losses_seen
    except RUN_ERRORS as error:
        row["error"] = _describe(error)
    _emit("row", row)


def _import_tan_modules(tan_lib):
    """2D-TAN's frame, proposal and map modules and its loss, from its lib/.

    lib/models/__init__.py imports the whole TAN model and its yaml config
    (easydict); a bare package object stands in for it so that only the
    modules used here are imported.
    """
    import importlib
    import types

    models_folder = os.path.join(tan_lib, "models")
    if not os.path.isfile(os.path.join(models_folder, "map_modules", "map_conv.py")):
        raise FileNotFoundError(
            f"--tan_lib={tan_lib} is not 2D-TAN's lib/ folder "
            f"(no models/map_modules/map_conv.py in it)."
        )
    package = types.ModuleType("models")
    package.__path__ = [models_folder]
    sys.modules["models"] = package
    return (
        importlib.import_module("models.frame_modules"),
        importlib.import_module("models.prop_modules"),
        importlib.import_module("models.map_modules"),
        importlib.import_module("models.loss"),
    )


def tan_proposal_network(tan_lib, config):
    """2D-TAN's proposal network without the text fusion, from its own modules.

    FrameAvgPool (1x1 conv1d D -> H + ReLU, pooling of 1), SparsePropMaxPool
    at `scale_layers`, MapConv (K x K kernels, H channels, 'same' padding, L
    layers, its mask step included), a 1x1 Conv2d head times the map mask.

    Args:
        tan_lib: 2D-TAN's lib/ folder.
        config: dict with num_clips, scale_layers, feature_dim, hidden_size,
            kernel_size, num_conv_layers.

    Returns:
        (torch module taking clip features [B, N, D] to (scores [B, 1, N, N],
        map mask [B, 1, N, N]), 2D-TAN's `models.loss` module).
    """
    from types import SimpleNamespace

    import torch
    from torch import nn

    frame_modules, prop_modules, map_modules, tan_loss = _import_tan_modules(tan_lib)
    if not torch.cuda.is_available():
        # 2D-TAN's mask step calls .cuda(); on a CPU-only machine tensors
        # stay where they are.
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    hidden, kernel, layers = (
        config["hidden_size"],
        config["kernel_size"],
        config["num_conv_layers"],
    )

    class TanProposalNetwork(nn.Module):
        def __init__(self):
            super().__init__()
            self.frame_layer = frame_modules.FrameAvgPool(
                SimpleNamespace(
                    INPUT_SIZE=config["feature_dim"],
                    HIDDEN_SIZE=hidden,
                    KERNEL_SIZE=1,
                    STRIDE=1,
                )
            )
            self.prop_layer = prop_modules.SparsePropMaxPool(
                SimpleNamespace(NUM_SCALE_LAYERS=list(config["scale_layers"]))
            )
            self.map_layer = map_modules.MapConv(
                SimpleNamespace(
                    INPUT_SIZE=hidden,
                    HIDDEN_SIZES=[hidden] * layers,
                    KERNEL_SIZES=[kernel] * layers,
                    STRIDES=[1] * layers,
                    PADDINGS=[kernel // 2] * layers,
                    DILATIONS=[1] * layers,
                )
            )
            self.pred_layer = nn.Conv2d(hidden, 1, 1, 1)

        def forward(self, clip_features):
            clip_sequence = self.frame_layer(clip_features.transpose(1, 2))
            map_features, map_mask = self.prop_layer(clip_sequence)
            map_features = self.map_layer(map_features, map_mask)
            return self.pred_layer(map_features) * map_mask, map_mask

    return TanProposalNetwork(), tan_loss


def run_torch_group(spec):
    from types import SimpleNamespace

    import numpy as np
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True  # 2D-TAN's config: CUDNN.BENCHMARK
    _emit(
        "info",
        {
            "group": spec["name"],
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "versions": f"torch {torch.__version__}",
            "tf32": f"cudnn {torch.backends.cudnn.allow_tf32}, "
            f"matmul {torch.backends.cuda.matmul.allow_tf32}",
        },
    )
    config = spec["config"]
    torch.manual_seed(0)
    model, tan_loss = tan_proposal_network(spec["tan_lib"], config)
    model = model.to(device)
    rng = np.random.default_rng(0)
    loss_config = SimpleNamespace(MIN_IOU=T_MIN, MAX_IOU=T_MAX, BIAS=0.0)
    clips = config["num_clips"]

    def clip_features(batch):
        values = rng.normal(size=(batch, clips, config["feature_dim"]))
        return torch.tensor(values, dtype=torch.float32, device=device)

    def autocast():
        return torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16"
        )

    def synchronize():
        if cuda:
            torch.cuda.synchronize()

    def measured(call):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        synchronize()
        start = time.perf_counter()
        call()
        synchronize()
        first_s = time.perf_counter() - start
        ms = _median_ms(lambda: (call(), synchronize()), spec["runs"])
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        return {
            "compile_s": max(first_s - ms / 1e3, 0.0),
            "ms_batch": ms,
            "peak_gib": peak,
        }

    def forward_row(batch):
        features = clip_features(batch)

        def forward():
            with torch.inference_mode(), autocast():
                model(features)

        return {"run": "forward", "batch": batch, **measured(forward)}

    for batch in spec["batch_sizes"]:
        try:
            row = forward_row(batch)
        except RUN_ERRORS as error:
            row = {"run": "forward", "batch": batch, "error": _describe(error)}
        if cuda:
            torch.cuda.empty_cache()
        _emit("row", row)

    batch = spec["train_batch"]
    row = {"run": "train", "batch": batch}
    try:
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        features = clip_features(batch)
        max_iou = torch.tensor(
            rng.uniform(0.0, 1.0, size=(batch, 1, clips, clips)),
            dtype=torch.float32,
            device=device,
        )
        losses_seen = []

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                scores, map_mask = model(features)
            loss, _ = tan_loss.bce_rescale_loss(
                scores.float(), map_mask.float(), max_iou, loss_config
            )
            loss.backward()
            optimizer.step()
            losses_seen.append(float(loss.detach()))

        row.update(measured(train_step))
        row["losses"] = losses_seen
    except RUN_ERRORS as error:
        row["error"] = _describe(error)
    _emit("row", row)


def child_main(spec):
    # The lent GPU machines have no TensorFlow: make sure nothing here needs
    # it (Keras then treats it as not installed, as there).
    sys.modules["tensorflow"] = None
    try:
        if spec["engine"] == "keras":
            run_keras_group(spec)
        else:
            run_torch_group(spec)
        spec_flops = _flops_per_video(spec)
        _emit(
            "done",
            {
                "tflop_per_video": spec_flops / 1e12,
                "tensorflow_imported": sys.modules.get("tensorflow") is not None,
            },
        )
    except BaseException as error:
        _emit("failed", {"error": _describe(error)})
        raise


# ---------------------------------------------------------------- parent


def _group_environment(spec, xla_flags):
    environment = dict(os.environ)
    environment["PYTHONUNBUFFERED"] = "1"
    environment["PYTHONPATH"] = os.pathsep.join(
        [REPO, environment.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    if spec["engine"] == "keras":
        environment["KERAS_BACKEND"] = "jax"
        # Allocate as needed, so that the allocator's peak is the program's.
        environment.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        flags = [environment.get("XLA_FLAGS", ""), xla_flags]
        if spec["autotune0"]:
            flags.append("--xla_gpu_autotune_level=0")
        environment["XLA_FLAGS"] = " ".join(flag for flag in flags if flag).strip()
    return environment


def run_group(spec, timeout_s, xla_flags):
    """Runs one group in a subprocess; returns (rows, info, done, problem)."""
    command = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(spec)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_group_environment(spec, xla_flags),
        start_new_session=True,  # so that a kill reaches its compilers too
    )
    rows, info, done, errors = [], {}, {}, []
    stderr_tail = []

    def read_stderr():
        for line in process.stderr:
            stderr_tail.append(line)
            del stderr_tail[:-40]

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    killed = threading.Event()
    timer = threading.Timer(timeout_s, lambda: _kill_group(process, killed))
    timer.start()
    started = time.perf_counter()
    try:
        for line in process.stdout:
            kind, _, payload = line.partition(": ")
            if kind not in ("row", "info", "done", "failed"):
                continue
            payload = json.loads(payload)
            if kind == "row":
                rows.append(payload)
                print(
                    f"row: {spec['name']} {payload['run']} b{payload['batch']} "
                    + json.dumps({k: v for k, v in payload.items() if k != "losses"}),
                    flush=True,
                )
            elif kind == "info":
                info = payload
            elif kind == "done":
                done = payload
            else:
                errors.append(payload["error"])
        process.wait()
    finally:
        timer.cancel()
    elapsed = time.perf_counter() - started
    reader.join(timeout=5)
    problem = None
    if process.returncode != 0:
        if killed.is_set():
            problem = f"killed after {elapsed:.0f} s (--group_timeout_s / --budget_s)"
        else:
            problem = (errors or [""])[0] or "".join(stderr_tail[-5:]).strip()[-400:]
            problem = f"exit {process.returncode}: {problem}"
    return rows, info, done, problem


def _kill_group(process, killed):
    killed.set()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _number(value, digits):
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def format_table(results, header_lines):
    columns = (
        "group",
        "network",
        "maps",
        "prec",
        "run",
        "batch",
        "compile s",
        "ms/batch",
        "ms/video",
        "TFLOP/s",
        "peak GiB",
        "XLA GiB",
        "note",
    )
    lines = list(header_lines)
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + " --- |" * len(columns))
    for result in results:
        spec = result["spec"]
        base = [spec["name"], spec["network"], spec["maps"], spec["precision"]]
        for row in result["rows"]:
            note = row.get("error", "")
            ms_video = row["ms_batch"] / row["batch"] if "ms_batch" in row else None
            tflops = None
            if ms_video and result["done"].get("tflop_per_video"):
                factor = 3.0 if row["run"] == "train" else 1.0
                tflops = factor * result["done"]["tflop_per_video"] / (ms_video / 1e3)
            if row.get("losses") and not note:
                note = f"loss {row['losses'][0]:.4g} -> {row['losses'][-1]:.4g}"
            cells = base + [
                row["run"],
                str(row["batch"]),
                _number(row.get("compile_s"), 3),
                _number(row.get("ms_batch"), 4),
                _number(ms_video, 4),
                _number(tflops, 3),
                _number(row.get("peak_gib"), 3),
                _number(row.get("xla_gib"), 3),
                note.replace("|", "/"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        expected = len(spec["batch_sizes"]) + 1
        if result["problem"] or len(result["rows"]) < expected:
            missing = expected - len(result["rows"])
            lines.append(
                "| "
                + " | ".join(base)
                + f" | {missing} row(s) missing | | | | | | | | | "
                + (result["problem"] or "").replace("|", "/").replace("\n", " ")
                + " |"
            )
    return lines


def target_lines(results):
    found = {}
    for result in results:
        for row in result["rows"]:
            key = (result["spec"]["name"], row["run"])
            if "ms_batch" in row:
                row = dict(row, ms_video=row["ms_batch"] / row["batch"])
            found[key] = row  # the last forward row is the largest batch
    lines = ["Targets (one H100 or H200):"]
    for what, group, run, field, limit in TARGETS:
        value = found.get((group, run), {}).get(field)
        unit = {"compile_s": "s", "ms_batch": "ms", "ms_video": "ms", "peak_gib": "GiB"}
        if value is None:
            verdict = "not measured"
        else:
            verdict = (
                f"{value:.4g} {unit[field]}: {'met' if value <= limit else 'NOT met'}"
            )
        lines.append(f"- {what} ({group} {run}) <= {limit:g} {unit[field]}: {verdict}")
    return lines


def parse_or_run_child(parser, argv, child_main):
    """The parsed `argv` (with --out, where the rows also go as JSON); None
    after running `child_main` when the process is a benchmark's child
    (--_child SPEC), as the bench scripts start their measurements."""
    parser.add_argument("--out", default="", help="also write the rows as JSON")
    parser.add_argument("--_child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        child_main(json.loads(args._child))
        return None
    return args


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS))
    parser.add_argument("--tiny", action="store_true", help="--config=tiny (CPU test)")
    parser.add_argument("--groups", default=",".join(ALL_GROUPS))
    parser.add_argument("--batch_sizes", default=None, help="default 1,32 (tiny 1,4)")
    parser.add_argument("--runs", type=int, default=None, help="default 5 (tiny 2)")
    parser.add_argument("--tan_lib", default="", help="2D-TAN's lib/ folder")
    parser.add_argument("--xla_flags", default="", help="added to XLA_FLAGS")
    parser.add_argument("--budget_s", type=float, default=420.0)
    parser.add_argument("--group_timeout_s", type=float, default=150.0)
    args = parse_or_run_child(parser, argv, child_main)
    if args is None:
        return 0

    batch_sizes = [
        int(size)
        for size in (args.batch_sizes or ("1,4" if args.tiny else "1,32")).split(",")
    ]
    runs = args.runs or (2 if args.tiny else 5)
    config_name = "tiny" if args.tiny else args.config
    config = CONFIGS[config_name]
    names = [name for name in args.groups.split(",") if name]
    specs = []
    for name in names:
        spec = parse_group(name)
        spec.update(
            name=name,
            config=dict(config),
            batch_sizes=sorted(batch_sizes),
            train_batch=max(batch_sizes),
            runs=runs,
            tan_lib=os.path.abspath(args.tan_lib) if args.tan_lib else "",
        )
        specs.append(spec)

    deadline = time.perf_counter() + args.budget_s
    results, skipped = [], []
    for spec in specs:
        if spec["engine"] == "torch" and not spec["tan_lib"]:
            skipped.append(f"{spec['name']}: no --tan_lib")
            continue
        left = deadline - time.perf_counter()
        if left < 20:
            skipped.append(f"{spec['name']}: --budget_s spent")
            continue
        print(
            f"group {spec['name']} (up to {min(left, args.group_timeout_s):.0f} s)",
            flush=True,
        )
        rows, info, done, problem = run_group(
            spec, min(left, args.group_timeout_s), args.xla_flags
        )
        results.append(
            {"spec": spec, "rows": rows, "info": info, "done": done, "problem": problem}
        )

    shape = ", ".join(f"{key} {value}" for key, value in config.items())
    header = [f"config: {config_name}: {shape}"]
    seen = set()
    for result in results:
        info = result["info"]
        for key in ("device", "versions", "xla_flags", "tf32"):
            if info.get(key) is not None:
                text = f"{info['group']}: {key} {info[key]!r}"
                if (key, info[key]) not in seen:
                    seen.add((key, info[key]))
                    header.append(text)
        if result["done"].get("tensorflow_imported"):
            header.append(f"{result['spec']['name']}: WARNING: tensorflow was imported")
    header.append(f"runs: {runs} timed after one warm-up; batch sizes {batch_sizes}")
    lines = format_table(results, header + [""])
    lines += [f"not run: {reason}" for reason in skipped]
    if config_name == "paper":
        lines += [""] + target_lines(results)
    print("\n".join(lines), flush=True)
    if args.out:
        write_json_atomic(
            args.out, {"results": results, "skipped": skipped, "table": lines}, indent=1
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
