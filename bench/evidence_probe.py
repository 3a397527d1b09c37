"""How much do the prototype scores say about a proposal when a small MLP,
rather than a weighted sum, combines them? (docs/benchmarks.md, "Session 6")

    python bench/evidence_probe.py RUN_FOLDER [RUN_FOLDER ...] [--out probe.md]

Each RUN_FOLDER is a train.py run on one benchmark dataset
(tal_keras.data.benchmarks; only its config and clip caches are read). The
11 evidence numbers of `PrototypeEvidence` (start, end, body and joint
scores, best over classes and of the best-matching class, and the
proposal's position) are computed for every proposal of every video with
two sets of prototypes:

- "class means": each class's mean start and end window and mean body clip
  over the training videos, what --prototype_evidence starts from;
- "generator": the dataset's own onset, body and offset patterns (read back
  from its benchmark.json), what a perfect prototype could give.

On the training videos alone, a scorer of each proposal's max IoU is fitted
to [log length prior, evidence] (binary cross-entropy, Adam, batches of
4096 proposals, --epochs passes): "linear" (no hidden layer) and "MLP" (two
hidden ReLU layers of --hidden). Printed: the official proposal AUC on the
run's evaluation videos after the last pass (no choice on the evaluation
videos), with the same NMS and count as train.py. The network adds the
shared map convs to the MLP; what the MLP alone reaches shows what the
scores carry, and what a weighted sum of them (linear) misses.
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tal_keras import atomic


def evidence_of(layer, clips, batch=64):
    """float32 [V, P, 11]: `layer.evidence` over the videos in batches."""
    import keras

    return np.concatenate(
        [
            keras.ops.convert_to_numpy(layer.evidence(clips[start : start + batch]))
            for start in range(0, len(clips), batch)
        ]
    )


def fitted_auc(inputs, targets, eval_inputs, auc, hidden, layers, epochs, seed):
    """AUC of a scorer of targets [V, P] fitted to inputs [V, P, F]."""
    import keras

    keras.utils.set_random_seed(seed)
    flat = inputs.reshape(-1, inputs.shape[-1])
    mean, std = flat.mean(axis=0), flat.std(axis=0) + 1e-6
    model = keras.Sequential(
        [keras.Input((inputs.shape[-1],))]
        + [keras.layers.Dense(hidden, activation="relu") for _ in range(layers)]
        + [keras.layers.Dense(1)]
    )
    model.compile(
        keras.optimizers.Adam(1e-3),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    model.fit(
        (flat - mean) / std,
        targets.reshape(-1),
        batch_size=4096,
        epochs=epochs,
        verbose=0,
        shuffle=True,
    )
    eval_flat = (eval_inputs.reshape(-1, eval_inputs.shape[-1]) - mean) / std
    logits = model.predict(eval_flat, batch_size=65536, verbose=0)
    # log sigmoid: the scorer's log P_over.
    return auc(-np.logaddexp(0.0, -logits.reshape(eval_inputs.shape[:2])))


def probe_rows(run_folder, hidden, epochs, seed):
    """{row name: AUC %} on the run's evaluation videos."""
    from pattern_ceiling import open_benchmark_run

    from tal_keras import experiment
    from tal_keras.data import benchmarks
    from tal_keras.layers import PrototypeEvidence

    opened = open_benchmark_run(run_folder)
    run_config, model, lattice = (
        opened.run_config,
        opened.run_config.model,
        opened.lattice,
    )
    train_cache, cache = opened.train_cache, opened.cache
    log_prior, auc = opened.log_prior, opened.auc

    means = experiment.initial_prototypes(
        dataclasses.replace(
            run_config, model=dataclasses.replace(model, prototype_evidence=1)
        ),
        opened.train_annotations,
        train_cache,
    )["prototype_evidence"]
    patterns = benchmarks.class_patterns(
        opened.parameters["seed"],
        opened.parameters["num_classes"],
        opened.parameters["feature_dim"],
    )
    zeros = np.zeros_like(patterns["onset"])
    generator = {
        # The layer's windows are (previous, this, next clip).
        "start_prototypes": np.concatenate([zeros, patterns["onset"], zeros], -1),
        "end_prototypes": np.concatenate([zeros, patterns["offset"], zeros], -1),
        "body_prototypes": patterns["body"],
    }
    rows = {"length prior": auc(np.broadcast_to(log_prior, cache.max_iou.shape))}
    targets = np.asarray(train_cache.max_iou, np.float32)
    for name, prototypes in (("class means", means), ("generator", generator)):
        layer = PrototypeEvidence(
            model.num_clips,
            model.scale_layers,
            len(prototypes["body_prototypes"]),
            flank_fraction=model.body_prototype_flank or 0.25,
        )
        layer.build((None, model.num_clips, model.feature_dim))
        for weight_name, value in prototypes.items():
            getattr(layer, weight_name).assign(
                value / np.maximum(np.linalg.norm(value, axis=1, keepdims=True), 1e-12)
            )
        inputs = [
            np.concatenate(
                [
                    np.broadcast_to(
                        log_prior[None, :, None],
                        (len(c.clips), lattice.num_proposals, 1),
                    ),
                    evidence_of(layer, np.asarray(c.clips, np.float32)),
                ],
                axis=-1,
            )
            for c in (train_cache, cache)
        ]
        for label, layers in (("linear", 0), ("MLP", 2)):
            rows[f"{name}: {label}"] = fitted_auc(
                inputs[0], targets, inputs[1], auc, hidden, layers, epochs, seed
            )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folders", nargs="+")
    parser.add_argument("--hidden", type=int, default=64, help="MLP hidden units")
    parser.add_argument(
        "--epochs", type=int, default=3, help="passes over the training proposals"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="also write the table here")
    args = parser.parse_args(argv)
    lines = []
    for run_folder in args.run_folders:
        rows = probe_rows(run_folder, args.hidden, args.epochs, args.seed)
        if not lines:
            lines.append("| run | " + " | ".join(rows) + " |")
            lines.append("|" + " --- |" * (len(rows) + 1))
        cells = [f"{value:.2f}" for value in rows.values()]
        lines.append(f"| {run_folder} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.out:
        atomic.write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
