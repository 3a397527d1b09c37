"""Trains the S-2D-TAN proposal network and the classifier, then evaluates the
best epochs on the evaluation subset exactly as evaluate.py does.

    python train.py --flagfile=demo.flags          # synthetic demo
    python train.py --flagfile=hacs.flags          # the report's HACS setup
    python train.py --flagfile=demo.flags --resume # continue a stopped run

Flags shared with evaluate.py are defined there.
"""

import json
import os
import sys

from absl import app, flags

import evaluate  # defines the flags shared with evaluate.py
import tal_keras
from tal_keras.config import RunConfig, TrainConfig

FLAGS = flags.FLAGS


def train_config_from_flags():
    return TrainConfig(
        networks=tuple(FLAGS.networks),
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        overlap_t_min=FLAGS.overlap_t_min,
        overlap_t_max=FLAGS.overlap_t_max,
        mixed_precision=FLAGS.mixed_precision,
        seed=FLAGS.seed,
        cache_dtype=FLAGS.cache_dtype,
    )


def main(argv):
    del argv
    tal_keras.configure_logging()
    try:
        run_config, classes_from_data = evaluate.run_config_from_flags(
            train_config_from_flags()
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    from tal_keras import experiment

    try:
        run_config = experiment.prepare_run(run_config, classes_from_data)
        saved = os.path.join(run_config.workdir, "config.json")
        if FLAGS.resume and os.path.exists(saved):
            with open(saved) as stream:
                previous = RunConfig.from_dict(json.load(stream))
            run_config = experiment.check_resume_config(previous, run_config)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    try:
        experiment.train_and_evaluate(
            run_config, resume=FLAGS.resume, evaluate_at_end=FLAGS.evaluate_at_end
        )
    except FileExistsError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    sys.exit(app.run(main))
