"""The networks a run trains, one `Network` each: how it is built, how it
starts from the training data, what it learns, its loss, and the validation
metric that picks its kept epoch.
Training (`training.build_and_compile`) and the run driver
(`experiment.train_and_evaluate`) read them from `NETWORKS`.

A new head: its builder in `models.py`, its name in `config.NETWORKS` (the
values --networks accepts; config stays free of Keras) and its entry here.
"""

import dataclasses
import functools
import logging
import os
from collections.abc import Callable

import numpy as np

from tal_keras import evaluation, models, run
from tal_keras import losses as tal_losses
from tal_keras.class_means import class_means
from tal_keras.config import NETWORKS as NETWORK_NAMES
from tal_keras.layers import ClassMeanMatches, OverlapHead
from tal_keras.targets import scaled_overlap

logger = logging.getLogger("tal_keras")


@dataclasses.dataclass(frozen=True)
class Network:
    """One trainable network.

    Attributes:
        name: its name in --networks and its folder in the run folder.
        target: the clip cache array it learns (`pipeline.TARGETS`).
        build: `ModelConfig` -> uncompiled keras.Model.
        initialize: (model, `TrainingData`) -> None: sets a new model's
            weights that start from the training data.
        loss: `TrainConfig` -> its Keras loss.
        validation: (run_config, eval_cache, ground_truth, class_names) ->
            (metric name, model -> metric value, higher is better); a None
            scorer keeps the lowest-loss epoch instead.
    """

    name: str
    target: str
    build: Callable
    initialize: Callable
    loss: Callable
    validation: Callable


class TrainingData:
    """The training videos both networks start from; each value is computed
    on first use, once per run.

    Args:
        run_config: the `RunConfig`.
        annotations: `Annotations` of the training subset.
        cache: the clip cache of the videos that train (a `ClipCache` or a
            `CacheSubset`).
    """

    def __init__(self, run_config, annotations, cache):
        self.run_config = run_config
        self.annotations = annotations
        self.cache = cache

    @functools.cached_property
    def class_means(self):
        """`class_means.ClassMeans` of the training videos."""
        videos = [
            (
                self.annotations.videos[video_id].segments,
                self.annotations.videos[video_id].labels,
            )
            for video_id in self.cache.video_ids
        ]
        return class_means(
            self.cache.clips,
            self.cache.durations,
            videos,
            self.run_config.model.num_classes,
        )

    @functools.cached_property
    def length_prior(self):
        """float64 [P]: per proposal, the mean overlap target of the
        proposals of its length over the training videos (the content-blind
        baseline's length prior, in target units; per length rather than per
        cell, which generalises better)."""
        train = self.run_config.train
        targets = scaled_overlap(
            np.asarray(self.cache.max_iou), train.overlap_t_min, train.overlap_t_max
        )
        lengths = self.run_config.model.lattice.lengths
        mean = targets.astype(np.float64).mean(axis=0)
        by_length = np.bincount(lengths, weights=mean) / np.maximum(
            np.bincount(lengths), 1
        )
        return by_length[lengths]


def _set_class_means(model, training_data):
    for layer in model.layers:
        if isinstance(layer, ClassMeanMatches):
            layer.set_class_means(training_data.class_means)


def _initialize_proposal(model, training_data):
    """The class means, and the per-cell overlap biases at the logits of the
    length prior."""
    _set_class_means(model, training_data)
    for layer in model.layers:
        if isinstance(layer, OverlapHead) and layer.cell_biases is not None:
            prior = np.clip(training_data.length_prior, 1e-4, 1 - 1e-4)
            layer.cell_biases.assign(np.log(prior / (1 - prior)).astype("float32"))


def _initialize_classifier(model, training_data):
    _set_class_means(model, training_data)


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
        initialize=_initialize_proposal,
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
        initialize=_initialize_classifier,
        loss=lambda train: tal_losses.ProposalClassLoss(),
        validation=_classifier_validation,
    ),
}
assert tuple(NETWORKS) == NETWORK_NAMES, "config.NETWORKS and NETWORKS disagree"
