"""Evaluates a trained run, or scores any ActivityNet-format file.

Run mode (after train.py):
    python evaluate.py --flagfile=demo.flags
writes WORKDIR/proposals.json, detections.json, metrics.json, ar_an.png, and
prints the metrics next to a content-blind baseline's.

Scoring mode:
    python evaluate.py --ground_truth GT.json --predictions PRED.json \
        --subset validation --task detection|proposals --metrics_out M.json

The flags (shared with train.py) are defined in tal_keras/flags.py.
"""

import sys

from absl import app

import tal_keras
from tal_keras.flags import FLAGS, exit_on_user_error, run_config_from_flags


def main(argv):
    del argv
    tal_keras.configure_logging()
    if FLAGS.predictions or FLAGS.ground_truth:
        if not (FLAGS.predictions and FLAGS.ground_truth):
            raise SystemExit(
                "error: scoring mode needs both --ground_truth and --predictions."
            )
        from tal_keras.scoring import score_and_print

        with exit_on_user_error("nothing written."):
            score_and_print(
                FLAGS.ground_truth,
                FLAGS.predictions,
                FLAGS.subset,
                FLAGS.task,
                FLAGS.metrics_out,
            )
        return
    from tal_keras import experiment, run

    with exit_on_user_error("the previous results are left as they were."):
        # The networks' shapes are the trained ones; data and evaluation
        # settings come from the flags.
        run_config = run.trained_config(run_config_from_flags()[0])
        with run.folder_of(run_config).lock():
            experiment.evaluate_run(
                run_config, video_labels=FLAGS.video_labels, show=FLAGS.show
            )


if __name__ == "__main__":
    sys.exit(app.run(main))
