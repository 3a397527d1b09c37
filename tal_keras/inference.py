"""Inference over a subset: trained networks -> scores -> proposals and
detections per video, with the run's postprocessing (`EvalConfig`).

numpy only at import (Keras and tf.data are imported where a model runs), so
serving can read video labels from here.
"""

import json
import os

import numpy as np

from tal_keras import detections
from tal_keras.errors import DataError


def predict_scores(model, cache, batch_size):
    """Runs `model` over every video of `cache`; numpy outputs in cache order."""
    from tal_keras import data_parallel, pipeline

    # Inside a data parallel training scope (JAX) every batch must split
    # evenly; the last batch is padded to the same size (one compiled shape),
    # so a subset smaller than a batch is run as one smaller batch.
    replicas = data_parallel.replicas_in_scope()
    batch_size = min(batch_size, max(len(cache), 1))
    batch_size = -(-batch_size // replicas) * replicas
    dataset = pipeline.make_inference_dataset(cache, batch_size)
    outputs = model.predict(dataset, verbose=0)
    if isinstance(outputs, dict):
        return {
            name: np.asarray(value)[: len(cache)] for name, value in outputs.items()
        }
    return np.asarray(outputs)[: len(cache)]


def load_network(path):
    """A trained network from its .keras file, for inference (not compiled)."""
    import zipfile

    import keras

    import tal_keras.layers  # noqa: F401 (registers the custom layers)

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: train that network first.")
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{path}: cannot load the network (truncated or corrupt .keras "
            f"file): {error}"
        ) from None


def proposal_results(run_config, lattice, cache, overlap_scores):
    """{video_id: [{"score", "segment"}]} of every cached video."""
    return {
        video_id: detections.proposals_with(
            run_config.eval, lattice, duration, overlap_scores[row]
        )
        for row, (video_id, duration) in enumerate(
            zip(cache.video_ids, cache.durations)
        )
    }


def detection_results(
    run_config,
    lattice,
    cache,
    overlap_scores,
    class_scores,
    class_names,
    video_labels=None,
):
    """{video_id: [{"label", "score", "segment"}]} of every cached video."""
    video_labels = video_labels or {}
    return {
        video_id: detections.detections_with(
            run_config.eval,
            lattice,
            duration,
            overlap_scores[row],
            class_scores[row],
            class_names,
            video_labels.get(video_id),
        )
        for row, (video_id, duration) in enumerate(
            zip(cache.video_ids, cache.durations)
        )
    }


def read_video_labels(path, class_names):
    """{video_id: [(label, score), ...]} from an external video-level classifier."""
    try:
        with open(path) as stream:
            payload = json.load(stream)
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read the video labels: {error}") from None
    payload = payload.get("results", payload)
    known = set(class_names)
    labels = {}
    for video_id, pairs in payload.items():
        try:
            labels[video_id] = [(str(label), float(score)) for label, score in pairs]
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: video {video_id}: expected [[label, score], ...], got {pairs!r}"
            ) from None
        for label, _ in labels[video_id]:
            if label not in known:
                raise DataError(
                    f"{path}: video {video_id}: label {label!r} is not one of the {len(known)} classes"
                )
    return labels
