"""The proposal network's training step on this CPU beside 2D-TAN's own
PyTorch modules, in one run: step time medians and peak memory (RSS).

    python bench/bench_train_step.py \\
        --tan_git_dir=PATH/TO/2D-TAN/.git          # the paper config
    python bench/bench_train_step.py --tan_lib=PATH/TO/2D-TAN/lib --config=narrow

Engines (`--engines`, each in its own subprocess, in this order):

    tensorflow      this project's proposal network (band conv), Keras on
                    TensorFlow as train.py runs it on a machine without a
                    GPU: a tf.function graph (Keras' jit_compile="auto" turns
                    XLA off there), its matrix products in oneDNN
    tensorflow-xla  the same, `model.compile(jit_compile=True)` (what
                    "auto" picks where TensorFlow sees a GPU)
    jax             the same on JAX (Keras jits its train step)
    torch-2dtan     2D-TAN's SparsePropMaxPool and MapConv (microsoft/2D-TAN
                    lib/models), a 1x1 conv D -> H before and a 1x1 head
                    after (`bench_gpu.tan_proposal_network`)

The band conv is computed as `--conv_implementation=band` computes it on
CPUs: in the frequency form where `MapBand.frequency_tile` picks it (the
paper, h128 and narrow configs), else by taps. A Keras engine's name followed by
-taps or -frequency (tensorflow-taps, jax-frequency, ...) forces that form.

Every engine trains one step of Adam (lr 1e-3) on the BCE of the overlap
scores against a max IoU rescaled from [0.5, 1] (2D-TAN's bce_rescale_loss,
on the valid cells; this project's `ScaledOverlapLoss`), on the same shapes:
batch `--batch` of random clip features [N, D] and random max IoU. "first s"
is the first step (Keras: tracing and compiling included), "step s" the
median of `--runs` later steps (with `--runs=0`, the first step itself:
at the paper config one step takes minutes on a CPU and the compile a few
seconds, `bench/bench_compile.py`), "peak RSS GiB" the subprocess's peak resident
memory (ru_maxrss, imports included) and "RSS before GiB" its resident memory
after building the model and data, before the first step.

2D-TAN's code is read from `--tan_lib` (its lib/ folder) or written out of a
git directory of microsoft/2D-TAN (`--tan_git_dir`, its HEAD's lib/ by `git
archive`) into a temporary folder; none of it is copied into this project.
Configs: "paper" (N 256, scales 64,32,32, D 2304, H 512, K 9, L 4),
"h128" (the paper's at H 128), "narrow" (the paper's maps and kernels at D
256, H 64), "tiny". The load
average is printed beside the table; the machine may be shared.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path[:0] = [REPO, BENCH]

from bench_compile import child_rows, load_average, print_table
from bench_gpu import PAPER, TINY, parse_or_run_child

KERAS_ENGINES = ("tensorflow", "tensorflow-xla", "jax")
ENGINES = (*KERAS_ENGINES, "torch-2dtan")
FORMS = ("taps", "frequency")  # engine name suffixes: the band conv's form
# The paper's config (hacs.flags), at H 128 (1/16 of its map-conv FLOPs), at
# narrow widths (D 256, H 64), and bench_gpu.py's tiny one.
CONFIGS = {
    "paper": PAPER,
    "h128": dict(PAPER, hidden_size=128),
    "narrow": dict(PAPER, feature_dim=256, hidden_size=64),
    "tiny": TINY,
}
LEARNING_RATE = 1e-3
T_MIN, T_MAX = 0.5, 1.0


def rss_gib():
    """Resident memory of this process now (Linux /proc), in GiB."""
    with open("/proc/self/statm") as stream:
        pages = int(stream.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB


def timed_steps(step, runs):
    """(first step s, median of `runs` later steps s, losses); with `runs`
    0 the first step is both (the compile included)."""
    times, losses = [], []
    for _ in range(runs + 1):
        start = time.perf_counter()
        losses.append(step())  # returns a float: the step has finished
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:] or times), losses


def engine_and_form(name):
    """'jax-taps' -> ('jax', 'taps'), 'tensorflow' -> ('tensorflow', 'band');
    ValueError for a name that is neither an engine nor a Keras engine with
    a form."""
    engine, _, form = name.rpartition("-")
    if engine in KERAS_ENGINES and form in FORMS:
        return engine, form
    if name in ENGINES:
        return name, "band"
    raise ValueError(
        f"unknown engine {name!r}; known: {', '.join(ENGINES)}, or a Keras "
        f"engine followed by -{' or -'.join(FORMS)}"
    )


def run_keras(spec):
    import keras
    import numpy as np

    from tal_keras import losses, models
    from tal_keras.config import ModelConfig

    engine, form = engine_and_form(spec["engine"])
    config = ModelConfig(**spec["config"], conv_implementation=form)
    keras.utils.set_random_seed(0)
    model = models.build_proposal_network(config)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=losses.ScaledOverlapLoss(t_min=T_MIN, t_max=T_MAX),
        jit_compile=engine != "tensorflow",
    )
    rng = np.random.default_rng(0)
    batch = spec["batch"]
    clip_features = rng.normal(size=(batch, config.num_clips, config.feature_dim))
    clip_features = clip_features.astype("float32")
    max_iou = rng.uniform(size=(batch, config.lattice.num_proposals)).astype("float32")
    rss_before = rss_gib()
    first, median, losses_seen = timed_steps(
        lambda: float(model.train_on_batch(clip_features, max_iou)), spec["runs"]
    )
    return rss_before, first, median, losses_seen


def run_torch(spec):
    from types import SimpleNamespace

    import numpy as np
    import torch
    from bench_gpu import tan_proposal_network

    config = spec["config"]
    torch.manual_seed(0)
    model, tan_loss = tan_proposal_network(spec["tan_lib"], config)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_config = SimpleNamespace(MIN_IOU=T_MIN, MAX_IOU=T_MAX, BIAS=0.0)
    rng = np.random.default_rng(0)
    batch, clips = spec["batch"], config["num_clips"]
    clip_features = torch.tensor(
        rng.normal(size=(batch, clips, config["feature_dim"])), dtype=torch.float32
    )
    max_iou = torch.tensor(
        rng.uniform(size=(batch, 1, clips, clips)), dtype=torch.float32
    )

    def step():
        optimizer.zero_grad(set_to_none=True)
        scores, map_mask = model(clip_features)
        loss, _ = tan_loss.bce_rescale_loss(scores, map_mask, max_iou, loss_config)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    rss_before = rss_gib()
    first, median, losses_seen = timed_steps(step, spec["runs"])
    return rss_before, first, median, losses_seen


def child_main(spec):
    load_before = load_average()
    run = run_torch if spec["engine"] == "torch-2dtan" else run_keras
    rss_before, first, median, losses_seen = run(spec)
    row = {
        "engine": spec["engine"],
        "first_s": first,
        "step_s": median,
        "rss_before_gib": rss_before,
        "peak_rss_gib": peak_rss_gib(),
        "losses": losses_seen,
        "load_before": load_before,
        "load_after": load_average(),
    }
    print("row: " + json.dumps(row), flush=True)


def run_engine(spec):
    backend = "tensorflow" if spec["engine"].startswith("tensorflow") else "jax"

    def describe(row):
        return (
            f"{row['engine']} first {row['first_s']:.2f} s, step "
            f"{row['step_s']:.3f} s, peak RSS {row['peak_rss_gib']:.2f} GiB"
        )

    return child_rows(__file__, spec, backend, describe)[0]


def format_table(rows):
    lines = [
        (
            "| engine | first s | step s | step / 2D-TAN's | RSS before GiB "
            "| peak RSS GiB | loss first -> last | load avg before | load avg after |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    reference = next(
        (row["step_s"] for row in rows if row["engine"] == "torch-2dtan"), None
    )
    for row in rows:
        ratio = f"{row['step_s'] / reference:.3f}" if reference else "-"
        lines.append(
            f"| {row['engine']} | {row['first_s']:.2f} | {row['step_s']:.3f} | "
            f"{ratio} | {row['rss_before_gib']:.2f} | {row['peak_rss_gib']:.2f} | "
            f"{row['losses'][0]:.4g} -> {row['losses'][-1]:.4g} | "
            f"{row['load_before']} | {row['load_after']} |"
        )
    return lines


def tan_lib_from_git(git_dir, folder):
    """Writes the lib/ folder of the git directory's HEAD into `folder`."""
    archive = subprocess.run(
        ["git", "--git-dir", git_dir, "archive", "HEAD", "lib"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise FileNotFoundError(
            f"--tan_git_dir={git_dir}: git archive HEAD lib failed: "
            f"{archive.stderr.decode(errors='replace').strip()}"
        )
    subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
    return os.path.join(folder, "lib")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="steps after the first")
    parser.add_argument("--tan_lib", default="", help="2D-TAN's lib/ folder")
    parser.add_argument(
        "--tan_git_dir", default="", help="a git directory of microsoft/2D-TAN"
    )
    args = parse_or_run_child(parser, argv, child_main)
    if args is None:
        return 0
    engines = [name for name in args.engines.split(",") if name]
    for name in engines:
        try:
            engine_and_form(name)
        except ValueError as error:
            parser.error(str(error))
    if "torch-2dtan" in engines and not (args.tan_lib or args.tan_git_dir):
        parser.error("torch-2dtan needs --tan_lib or --tan_git_dir")
    if args.runs < 0:
        parser.error("--runs must be at least 0")
    with tempfile.TemporaryDirectory() as folder:
        tan_lib = args.tan_lib
        if args.tan_git_dir and "torch-2dtan" in engines:
            tan_lib = tan_lib_from_git(args.tan_git_dir, folder)
        rows = []
        for engine in engines:
            spec = {
                "engine": engine,
                "config": CONFIGS[args.config],
                "batch": args.batch,
                "runs": args.runs,
                "tan_lib": os.path.abspath(tan_lib) if tan_lib else "",
            }
            rows.append(run_engine(spec))
    print_table(args, CONFIGS[args.config], rows, format_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
