"""Trains the S-2D-TAN proposal network and the classifier, then evaluates the
best epochs on the evaluation subset exactly as evaluate.py does.

    python train.py --flagfile=demo.flags          # synthetic demo
    python train.py --flagfile=hacs.flags          # the report's HACS setup
    python train.py --flagfile=demo.flags --resume # continue a stopped run

The flags (shared with evaluate.py) are defined in tal_keras/flags.py.
"""

import sys

from absl import app

import tal_keras
from tal_keras.flags import FLAGS, exit_on_user_error, run_config_from_flags


def main(argv):
    del argv
    tal_keras.configure_logging()
    from tal_keras import experiment, run

    # Ctrl-C leaves a consistent run folder.
    with exit_on_user_error(
        "the run folder holds the last finished epoch; continue with --resume."
    ):
        run_config, classes_from_data = run_config_from_flags()
        folder = run.folder_of(run_config)
        with folder.lock():
            run_config = run.prepare_run(run_config, classes_from_data)
            if FLAGS.resume and folder.has_config():
                run_config = run.resumed_config(folder.read_config(), run_config)
            experiment.train_and_evaluate(
                run_config, resume=FLAGS.resume, evaluate_at_end=FLAGS.evaluate_at_end
            )


if __name__ == "__main__":
    sys.exit(app.run(main))
