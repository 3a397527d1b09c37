"""What the proposals' NMS costs the AUC: a trained run's proposals, the
content-blind baseline and the IoU oracle under NMS and Gaussian soft-NMS
of several widths (docs/benchmarks.md, "Postprocessing").

    python bench/proposal_nms.py RUN_FOLDER [RUN_FOLDER ...] \
        [--sigmas 0,1,1.5,2,3,5] [--oracle] [--out nms.md]

Each RUN_FOLDER is a train.py run (any dataset; its config's paths are read
from the current directory, as evaluate.py does). Its best proposal network
scores its evaluation videos once; then, for each sigma
(`--proposal_soft_nms_sigma`; 0: NMS at the run's --nms_threshold), the
official proposal AUC (%) is printed for

- "network": the run's proposals;
- "content-blind baseline": the length prior of train.py's baseline;
- "oracle" (with --oracle): P_over = each cell's true max IoU.

Nothing is written into the run folders; `evaluate.py --workdir=RUN
--proposal_soft_nms_sigma=S` writes one sigma's results there.
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tal_keras import atomic


def sweep_rows(run_folder, sigmas, oracle=False):
    """{row name: [AUC (%) per sigma]} of one run."""
    from tal_keras import evaluation, experiment, inference, run

    folder = run.RunFolder(run_folder)
    run_config = folder.read_config()
    lattice = run_config.model.lattice
    annotations, cache = run.open_subset(run_config, run_config.data.eval_subset)
    ground_truth = evaluation.ground_truth_of(annotations, run_config.data.blocklist)
    network = inference.load_network(
        folder.require_best_model("proposal", "train the proposal network first.")
    )
    scores = {
        "network": inference.predict_scores(network, cache, run_config.eval.batch_size)
    }
    if oracle:
        scores["oracle"] = np.asarray(cache.max_iou, np.float32)
    # The length prior reads every training annotation: once, not per sigma.
    prior = experiment.baseline_prior(run_config)

    def auc(results):
        summary = evaluation.proposal_summary(
            evaluation.score_proposals(ground_truth, results)
        )
        return 100 * summary["AUC"]

    rows = {"network": [], "content-blind baseline": []}
    if oracle:
        rows["oracle"] = []
    for sigma in sigmas:
        config = dataclasses.replace(
            run_config,
            eval=dataclasses.replace(run_config.eval, proposal_soft_nms_sigma=sigma),
        )
        for name, values in scores.items():
            rows[name].append(
                auc(inference.proposal_results(config, lattice, cache, values))
            )
        rows["content-blind baseline"].append(
            auc(evaluation.baseline_results(config, lattice, cache, prior))
        )
    return rows


def sigma_list(text):
    sigmas = [float(value) for value in text.split(",") if value.strip()]
    if not sigmas or any(not 0 <= sigma < float("inf") for sigma in sigmas):
        raise argparse.ArgumentTypeError(
            f"--sigmas: finite numbers >= 0, comma separated; got {text!r}"
        )
    return sigmas


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folders", nargs="+")
    parser.add_argument(
        "--sigmas",
        type=sigma_list,
        default=[0.0, 1.0, 1.5, 2.0, 3.0, 5.0],
        help="soft-NMS widths; 0 = NMS",
    )
    parser.add_argument(
        "--oracle", action="store_true", help="also P_over = true max IoU"
    )
    parser.add_argument("--out", default="", help="also write the table here")
    args = parser.parse_args(argv)
    names = ["NMS" if sigma == 0 else f"sigma {sigma:g}" for sigma in args.sigmas]
    lines = [
        "| run | proposals | " + " | ".join(names) + " |",
        "|" + " --- |" * (len(names) + 2),
    ]
    print("\n".join(lines), flush=True)
    for run_folder in args.run_folders:
        for name, values in sweep_rows(run_folder, args.sigmas, args.oracle).items():
            cells = " | ".join(f"{value:.2f}" for value in values)
            lines.append(f"| {run_folder} | {name} | {cells} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        atomic.write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
