"""The results of finished runs as one markdown table: recipe, dataset,
proposal AUC against the content-blind baseline's (same postprocessing),
average mAP, and each network's kept and last epoch, with the AUC and
average mAP the last epochs give.

    python bench/recipe_table.py RUN_FOLDER [RUN_FOLDER ...] [--out table.md]

Each RUN_FOLDER is a train.py run (its config.json and metrics.json are
read); the dataset is named by the folder holding its annotations. numpy
and the standard library only.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tal_keras import atomic

HEADER = (
    "| recipe | dataset | AUC | baseline AUC | AUC - baseline | average mAP "
    "| kept / last epoch (proposal) | kept / last epoch (classifier) "
    "| last epochs: AUC | last epochs: average mAP |"
)


def row(run_folder):
    """One table row (markdown) of a finished run."""
    with open(os.path.join(run_folder, "config.json")) as stream:
        config = json.load(stream)
    with open(os.path.join(run_folder, "metrics.json")) as stream:
        metrics = json.load(stream)
    dataset = os.path.basename(os.path.dirname(config["data"]["annotations"]))
    auc = 100 * metrics["proposals"]["AUC"]
    baseline = 100 * metrics["baseline"]["proposals"]["AUC"]
    epochs = metrics.get("epochs", {})
    last = metrics.get("last_epoch", {})

    def average_map(results):
        detection = results.get("detection")
        return "-" if detection is None else f"{100 * detection['average_mAP']:.2f}"

    last_auc = (
        "-" if "proposals" not in last else f"{100 * last['proposals']['AUC']:.2f}"
    )

    def kept(network):
        item = epochs.get(network)
        return "-" if item is None else f"{item['kept']} / {item['last']}"

    return (
        f"| {config.get('recipe', 'paper')} | {dataset} | {auc:.2f} | "
        f"{baseline:.2f} | {auc - baseline:+.2f} | {average_map(metrics)} | "
        f"{kept('proposal')} | {kept('classifier')} | {last_auc} | "
        f"{average_map(last)} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folders", nargs="+")
    parser.add_argument("--out", default="", help="also write the table here")
    args = parser.parse_args(argv)
    lines = [HEADER, "|" + " --- |" * HEADER.count(" | ") + " --- |"]
    lines += [row(folder) for folder in args.run_folders]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        atomic.write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
