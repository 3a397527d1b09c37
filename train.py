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
from tal_keras.flags import FLAGS, run_config_from_flags


def main(argv):
    del argv
    tal_keras.configure_logging()
    from tal_keras import experiment, run

    # One line for what a user can cause (bad data, flags, paths, a full
    # disk, a run folder in use); Ctrl-C leaves a consistent run folder.
    try:
        run_config, classes_from_data = run_config_from_flags()
        folder = run.folder_of(run_config)
        with folder.lock():
            run_config = run.prepare_run(run_config, classes_from_data)
            if FLAGS.resume and folder.has_config():
                run_config = run.resumed_config(folder.read_config(), run_config)
            experiment.train_and_evaluate(
                run_config, resume=FLAGS.resume, evaluate_at_end=FLAGS.evaluate_at_end
            )
    except (ValueError, OSError) as error:
        raise SystemExit(f"error: {error}") from None
    except KeyboardInterrupt:
        print(
            "interrupted: the run folder holds the last finished epoch; continue "
            "with --resume.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


if __name__ == "__main__":
    sys.exit(app.run(main))
