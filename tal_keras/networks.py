"""The networks a run trains, one `Network` each: how it is built, what it
learns, its loss, and the validation metric that picks its best epoch.
Training (`training.build_and_compile`) and the run driver
(`experiment.train_and_evaluate`) read them from `NETWORKS`.

A new head: its builder in `models.py`, its name in `config.NETWORKS` (the
values --networks accepts; config stays free of Keras) and its entry here.
"""

import dataclasses
import logging
import os
from collections.abc import Callable

from tal_keras import evaluation, models, run
from tal_keras import losses as tal_losses
from tal_keras.config import NETWORKS as NETWORK_NAMES

logger = logging.getLogger("tal_keras")


@dataclasses.dataclass(frozen=True)
class Network:
    """One trainable network.

    Attributes:
        name: its name in --networks and its folder in the run folder.
        target: the clip cache array it learns (`pipeline.TARGETS`).
        build: `ModelConfig` -> uncompiled keras.Model.
        loss: `TrainConfig` -> its Keras loss.
        validation: (run_config, eval_cache, ground_truth, class_names) ->
            (metric name, model -> metric value, higher is better); a None
            scorer keeps the lowest-loss epoch instead.
    """

    name: str
    target: str
    build: Callable
    loss: Callable
    validation: Callable


def _proposal_validation(run_config, eval_cache, ground_truth, class_names):
    del class_names
    return "val_auc", evaluation.proposal_auc_scorer(
        run_config, run_config.model.lattice, eval_cache, ground_truth
    )


def _classifier_validation(run_config, eval_cache, ground_truth, class_names):
    proposal_best = run.folder_of(run_config).best_model("proposal")
    if not os.path.exists(proposal_best):
        logger.info(
            "no trained proposal network: the classifier keeps its lowest-loss epoch"
        )
        return "loss", None
    return "val_average_mAP", evaluation.detection_map_scorer(
        run_config,
        run_config.model.lattice,
        eval_cache,
        ground_truth,
        proposal_best,
        class_names,
    )


NETWORKS = {
    "proposal": Network(
        name="proposal",
        target="max_iou",
        build=models.build_proposal_network,
        loss=lambda train: tal_losses.ScaledOverlapLoss(
            t_min=train.overlap_t_min,
            t_max=train.overlap_t_max,
            positive_weight=train.overlap_positive_weight,
        ),
        validation=_proposal_validation,
    ),
    "classifier": Network(
        name="classifier",
        target="classes",
        build=models.build_classifier_network,
        loss=lambda train: tal_losses.ProposalClassLoss(),
        validation=_classifier_validation,
    ),
}
assert tuple(NETWORKS) == NETWORK_NAMES, "config.NETWORKS and NETWORKS disagree"
