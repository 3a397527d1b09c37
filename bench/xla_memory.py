"""XLA's own count of the memory of the proposal network's training step
(JAX), per band conv form and batch size, compiled only, never run: what a
GPU's batch would need, counted on a CPU. Prints one table.

    python bench/xla_memory.py                       # paper config, batch 2 and 32
    python bench/xla_memory.py --config=tiny --batch_sizes=2

A training step here is `jax.value_and_grad` of the network's training loss
(`ScaledOverlapLoss` on the valid cells) with respect to its weights, as
`bench_compile.py` times it. "temp GiB" is XLA's temporaries
(`Compiled.memory_analysis().temp_size_in_bytes`), "total GiB" adds the
arguments and outputs (weights, batch, gradients). Forms: "taps" and
"frequency" (`--conv_implementation`, `BandMapConv`). XLA's CPU compiler
counts them; a GPU's buffer assignment differs, so these are an estimate
for a GPU, not its measurement.
"""

import argparse
import os
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCH), BENCH]

from bench_compile import child_rows, load_average
from bench_gpu import PAPER, TINY, parse_or_run_child

CONFIGS = {"paper": PAPER, "tiny": TINY}
FORMS = ("taps", "frequency")


def child_main(spec):
    import json

    import jax
    import jax.numpy as jnp

    from tal_keras import losses, models
    from tal_keras.config import ModelConfig

    for form in spec["forms"]:
        config = ModelConfig(**spec["config"], conv_implementation=form)
        model = models.build_proposal_network(config)
        loss = losses.ScaledOverlapLoss(t_min=0.5, t_max=1.0)
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def training_loss(
            trainable, non_trainable, clips, max_iou, model=model, loss=loss
        ):
            scores = model.stateless_call(
                trainable, non_trainable, clips, training=True
            )[0]
            return loss(max_iou, scores)

        for batch in spec["batch_sizes"]:
            clips = jax.ShapeDtypeStruct(
                (batch, config.num_clips, config.feature_dim), jnp.float32
            )
            max_iou = jax.ShapeDtypeStruct(
                (batch, config.lattice.num_proposals), jnp.float32
            )
            start = time.perf_counter()
            compiled = (
                jax.jit(jax.value_and_grad(training_loss))
                .lower(trainable, non_trainable, clips, max_iou)
                .compile()
            )
            memory = compiled.memory_analysis()
            row = {
                "form": form,
                "batch": batch,
                "compile_s": time.perf_counter() - start,
                "temp_gib": memory.temp_size_in_bytes / 2**30,
                "total_gib": (
                    memory.temp_size_in_bytes
                    + memory.argument_size_in_bytes
                    + memory.output_size_in_bytes
                    - memory.alias_size_in_bytes
                )
                / 2**30,
            }
            print("row: " + json.dumps(row), flush=True)


def format_table(rows):
    lines = [
        "| form | batch | temp GiB | total GiB | compile s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['form']} | {row['batch']} | {row['temp_gib']:.2f} "
            f"| {row['total_gib']:.2f} | {row['compile_s']:.1f} |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS))
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--batch_sizes", default="2,32")
    args = parse_or_run_child(parser, argv, child_main)
    if args is None:
        return 0
    forms = [name for name in args.forms.split(",") if name]
    for name in forms:
        if name not in FORMS:
            parser.error(f"unknown form {name!r}; known: {', '.join(FORMS)}")
    spec = {
        "config": CONFIGS[args.config],
        "forms": forms,
        "batch_sizes": [int(size) for size in args.batch_sizes.split(",")],
    }
    load_before = load_average()
    rows = child_rows(
        __file__,
        spec,
        "jax",
        lambda row: f"{row['form']} batch {row['batch']}: {row['temp_gib']:.2f} GiB",
    )
    shape = ", ".join(f"{key} {value}" for key, value in spec["config"].items())
    lines = [
        (
            f"config: {args.config}: {shape}; JAX, XLA's CPU compiler; load "
            f"average {load_before} before, {load_average()} after"
        ),
        "",
        *format_table(rows),
    ]
    print("\n".join(lines), flush=True)
    if args.out:
        from tal_keras.atomic import write_json_atomic

        write_json_atomic(args.out, {"rows": rows, "table": lines}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
