"""One run, from a `RunConfig`: data preparation, training both networks, and
the final evaluation. The entry points (train.py, evaluate.py) call these."""

import dataclasses
import functools
import logging
import os

from tal_keras import evaluation, pipeline, training
from tal_keras.atomic import write_json_atomic
from tal_keras.data.annotations import load_annotations
from tal_keras.data.cache import build_or_open_cache
from tal_keras.data.features import FeatureTiming, open_feature_store

logger = logging.getLogger("tal_keras")

# Settings that may change when a run is resumed: how long it trains, which
# networks, and how it is evaluated; never what the networks are.
_RESUMABLE_TRAIN_FIELDS = ("epochs", "networks")


def ensure_data(data_config):
    """Generates the synthetic dataset where the config asks for it and it is missing."""
    if data_config.synthetic_videos <= 0 or os.path.exists(data_config.annotations):
        return
    from tal_keras.data import synthetic

    root = os.path.dirname(os.path.abspath(data_config.annotations))
    logger.info(
        "generating the synthetic dataset (%d videos) in %s",
        data_config.synthetic_videos,
        root,
    )
    synthetic.ensure_synthetic(root, num_videos=data_config.synthetic_videos)


@functools.lru_cache(maxsize=8)
def class_names_of(data_config):
    """The class list of the run: the category file's, else the sorted labels."""
    annotations = load_annotations(
        data_config.annotations, category_file=data_config.category_file or None
    )
    return annotations.class_names


def prepare_run(run_config, classes_from_data):
    """Makes the data available and resolves num_classes from it; checks the
    config against the data before any training starts."""
    ensure_data(run_config.data)
    class_names = class_names_of(run_config.data)
    model = run_config.model
    if classes_from_data:
        model = dataclasses.replace(model, num_classes=len(class_names))
    elif model.num_classes != len(class_names):
        raise ValueError(
            f"--num_classes={model.num_classes} but {run_config.data.annotations} "
            f"has {len(class_names)} classes; pass --num_classes=0 to take them from the data."
        )
    return dataclasses.replace(run_config, model=model)


def check_resume_config(previous, current):
    """The config a resumed run continues with: the saved one, with only the
    resumable settings and the evaluation settings taken from `current`;
    anything else differing is an error."""
    train = dataclasses.replace(
        previous.train,
        **{name: getattr(current.train, name) for name in _RESUMABLE_TRAIN_FIELDS},
    )
    resumed = dataclasses.replace(previous, train=train, eval=current.eval)
    differing = [
        f"{section}.{field.name}"
        for section in ("data", "model", "train")
        for field in dataclasses.fields(getattr(resumed, section))
        if getattr(getattr(resumed, section), field.name)
        != getattr(getattr(current, section), field.name)
    ]
    if resumed.workdir != current.workdir:
        differing.append("workdir")
    if differing:
        raise ValueError(
            f"--resume with settings that differ from the saved config.json: {differing}."
        )
    return resumed


def open_subset(run_config, subset, class_names=None):
    """(annotations, cache) of the usable videos of `subset`."""
    data = run_config.data
    annotations = load_annotations(
        data.annotations,
        subset=subset,
        category_file=data.category_file or None,
        blocklist=data.blocklist,
    )
    store = open_feature_store(data.features)
    timing = FeatureTiming(data.fps, data.stride, data.window)
    stat = os.stat(data.annotations)
    cache = build_or_open_cache(
        os.path.join(run_config.workdir, "cache"),
        subset,
        annotations,
        store,
        run_config.model.lattice,
        timing,
        run_config.model.feature_dim,
        dtype=run_config.train.cache_dtype,
        key_fields={
            "features": os.path.abspath(data.features),
            "annotations_mtime": stat.st_mtime,
        },
    )
    logger.info(
        "%s: %d videos usable, %d skipped", subset, len(cache), len(cache.skipped)
    )
    return annotations, cache


def write_config(run_config):
    write_json_atomic(
        os.path.join(run_config.workdir, "config.json"), run_config.to_dict(), indent=2
    )


def train_and_evaluate(run_config, resume=False, evaluate_at_end=True):
    if not resume:
        for network in run_config.train.networks:
            if (
                training.read_state(os.path.join(run_config.workdir, network))
                is not None
            ):
                raise FileExistsError(
                    f"{run_config.workdir}/{network} already holds a training state; pass "
                    "--resume to continue it or choose another --workdir."
                )
    os.makedirs(run_config.workdir, exist_ok=True)
    write_config(run_config)
    train_config = run_config.train
    _, train_cache = open_subset(run_config, run_config.data.train_subset)
    eval_annotations, eval_cache = open_subset(run_config, run_config.data.eval_subset)
    if train_cache.clips.nbytes < 4 << 30:
        train_cache.load_into_memory()
        eval_cache.load_into_memory()
    lattice = run_config.model.lattice
    ground_truth = evaluation.ground_truth_of(
        eval_annotations, run_config.data.blocklist
    )
    proposal_best = os.path.join(run_config.workdir, "proposal", "best.keras")
    for network in train_config.networks:
        if network == "proposal":
            target = "max_iou"
            metric_name = "val_auc"
            score_fn = evaluation.proposal_auc_scorer(
                run_config, lattice, eval_cache, ground_truth
            )
        else:
            target = "classes"
            if os.path.exists(proposal_best):
                metric_name = "val_average_mAP"
                score_fn = evaluation.detection_map_scorer(
                    run_config, lattice, eval_cache, ground_truth, proposal_best
                )
            else:
                logger.info(
                    "no trained proposal network: the classifier keeps its lowest-loss epoch"
                )
                metric_name, score_fn = "loss", None
        dataset = pipeline.make_dataset(
            train_cache,
            target,
            train_config.batch_size,
            shuffle=True,
            seed=train_config.seed,
        )
        training.train_network(
            network,
            run_config,
            dataset,
            score_fn=score_fn,
            metric_name=metric_name,
            resume=resume,
        )
    if evaluate_at_end:
        evaluation.evaluate_run(
            run_config, eval_annotations=eval_annotations, eval_cache=eval_cache
        )
