"""A resumed run equals one that never stopped: the data order of epoch e is
a function of (seed, e) (`pipeline.epoch_order`), whatever passes Keras makes
over the dataset, so one epoch then a resume to two gives the weights and
metrics of two epochs in one go."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
from python_process import python_environment
from tiny_configs import data_config_of, tiny_dataset, tiny_model

import tal_keras.layers
import tal_keras.losses  # noqa: F401  (the losses of their compile config)
from tal_keras import experiment, pipeline, run
from tal_keras.clips import FeatureTiming
from tal_keras.config import RunConfig, TrainConfig
from tal_keras.data.annotations import load_annotations
from tal_keras.data.cache import (
    CacheSubset,
    build_or_open_cache,
    remove_abandoned_builds,
)
from tal_keras.data.features import NpyFeatureStore
from tal_keras.lattice import Lattice

LATTICE = Lattice(16, (4, 2, 2))
TIMING = FeatureTiming()


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    first = pipeline.epoch_order(50, 3, 1)
    assert sorted(first) == list(range(50))
    assert np.array_equal(first, pipeline.epoch_order(50, 3, 1))
    assert not np.array_equal(first, pipeline.epoch_order(50, 3, 2))
    assert not np.array_equal(first, pipeline.epoch_order(50, 4, 1))


class ArrayCache(types.SimpleNamespace):
    """A cache of V videos whose targets hold their row: [V, 2, 3] clips,
    [V, 4] targets."""

    def __init__(self, num_videos=10):
        max_iou = np.repeat(np.arange(num_videos, dtype=np.float32)[:, None], 4, 1)
        super().__init__(
            clips=np.arange(num_videos * 6, dtype=np.float16).reshape(-1, 2, 3),
            max_iou=max_iou,
            classes=max_iou.astype(np.int16),
            video_ids=[str(row) for row in range(num_videos)],
            durations=np.ones(num_videos),
        )

    def __len__(self):
        return len(self.max_iou)


def videos_of_each_batch(dataset):
    """[[video rows of batch 0], ...] of one pass (each batch is read sorted),
    padding videos left out."""
    return [
        sorted(row for row in targets[:, 0].astype(int) if row != pipeline.PADDING)
        for _, targets in dataset.as_numpy_iterator()
    ]


def expected_batches(num_videos, seed, epoch, batch_size):
    order = pipeline.epoch_order(num_videos, seed, epoch)
    return [
        sorted(order[start : start + batch_size])
        for start in range(0, num_videos, batch_size)
    ]


def test_shuffled_passes_follow_the_epoch_keras_gives_not_the_pass_count():
    cache = ArrayCache()
    num_videos = len(cache)
    dataset = pipeline.make_dataset(cache, "max_iou", 4, shuffle=True, seed=7)
    assert int(dataset.cardinality()) == 3
    # Without fit: successive passes are epochs 0, 1.
    for epoch in (0, 1):
        assert videos_of_each_batch(dataset) == expected_batches(
            num_videos, 7, epoch, 4
        )
    # With fit's callback: epoch 5 however many passes were made before.
    (order,) = pipeline.epoch_callbacks(dataset)
    order.on_epoch_begin(5)
    videos_of_each_batch(dataset)  # a pass made for another reason
    assert videos_of_each_batch(dataset) == expected_batches(num_videos, 7, 5, 4)
    order.on_train_end()
    assert videos_of_each_batch(dataset) == expected_batches(num_videos, 7, 6, 4)
    assert pipeline.epoch_callbacks(pipeline.make_dataset(cache, "max_iou", 4)) == []


def test_a_cache_subset_view_is_shuffled_and_read_like_a_cache():
    view = CacheSubset(ArrayCache(), [1, 3, 4, 8, 9])
    dataset = pipeline.make_dataset(view, "max_iou", 2, shuffle=True, seed=0)
    rows = np.concatenate([targets[:, 0] for _, targets in dataset]).astype(int)
    # Every batch holds 2 videos: the last one is made up with a padding video.
    assert sorted(rows) == [pipeline.PADDING, 1, 3, 4, 8, 9]
    clips = np.concatenate([clips for clips, _ in dataset])
    assert clips.dtype == np.float32 and clips.shape == (6, 2, 3)
    assert not clips[rows == pipeline.PADDING].any()


def test_the_last_batch_is_padded_to_the_batch_size_in_both_targets():
    cache = ArrayCache(num_videos=5)
    for target, shuffle in (("max_iou", True), ("classes", False)):
        batches = list(
            pipeline.make_dataset(cache, target, 4, shuffle=shuffle).as_numpy_iterator()
        )
        assert [clips.shape[0] for clips, _ in batches] == [4, 4]
        clips, targets = batches[-1]
        real = targets[:, 0] != pipeline.PADDING
        assert real.sum() == 1
        assert (targets[~real] == pipeline.PADDING).all()
        assert not clips[~real].any()
        assert clips[real].any() or int(targets[real][0, 0]) == 0
    inference = pipeline.make_inference_dataset(cache, 4)
    assert [batch.shape for batch in inference.as_numpy_iterator()] == [(4, 2, 3)] * 2


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data") / "data", num_videos=24)


def train(workdir, data, epochs, resume=False):
    """Trains both networks of a tiny run to `epochs` in `workdir`, as
    train.py does; returns the run's metrics.json."""
    config = RunConfig(
        workdir=str(workdir),
        data=data_config_of(data),
        model=tiny_model(feature_dim=8, hidden_size=8, num_classes=3),
        train=TrainConfig(epochs=epochs, batch_size=4, seed=5),
    )
    folder = run.folder_of(config)
    with folder.lock():
        config = run.prepare_run(config, classes_from_data=False)
        if resume:
            config = run.resumed_config(folder.read_config(), config)
        experiment.train_and_evaluate(config, resume=resume)
    return json.loads((workdir / "metrics.json").read_text())


def last_checkpoint_weights(workdir, network):
    state = json.loads((workdir / network / "state.json").read_text())
    model = keras.saving.load_model(
        workdir / network / "checkpoints" / state["checkpoint"]
    )
    return state, [keras.ops.convert_to_numpy(w) for w in model.weights]


@pytest.mark.slow
def test_one_epoch_then_a_resume_equals_two_epochs_in_one_go(tmp_path, tiny_data):
    whole = train(tmp_path / "whole", tiny_data, epochs=2)
    train(tmp_path / "resumed", tiny_data, epochs=1)
    resumed = train(tmp_path / "resumed", tiny_data, epochs=2, resume=True)
    for network in ("proposal", "classifier"):
        whole_state, whole_weights = last_checkpoint_weights(
            tmp_path / "whole", network
        )
        resumed_state, resumed_weights = last_checkpoint_weights(
            tmp_path / "resumed", network
        )
        assert resumed_state["epochs_done"] == whole_state["epochs_done"] == 2
        for whole_entry, resumed_entry in zip(
            whole_state["history"], resumed_state["history"], strict=True
        ):
            assert resumed_entry == pytest.approx(whole_entry, rel=1e-5, abs=1e-6)
        for whole_weight, resumed_weight in zip(
            whole_weights, resumed_weights, strict=True
        ):
            np.testing.assert_allclose(resumed_weight, whole_weight, atol=1e-6)
    assert resumed["detection"]["average_mAP"] == pytest.approx(
        whole["detection"]["average_mAP"], abs=1e-6
    )
    assert resumed["proposals"] == pytest.approx(whole["proposals"], abs=1e-6)


# Builds the cache of test_a_killed_cache_build_resumes_where_it_stopped in a
# process of its own, each video slowed down so the test can kill it midway.
BUILD_SCRIPT = """
import sys, time
from tal_keras.clips import FeatureTiming
from tal_keras.data.annotations import load_annotations
from tal_keras.data.cache import build_or_open_cache
from tal_keras.data.features import NpyFeatureStore
from tal_keras.lattice import Lattice

class SlowStore(NpyFeatureStore):
    def load(self, video_id, **kwargs):
        time.sleep(0.01)
        return super().load(video_id, **kwargs)

annotations_path, features, root = sys.argv[1:]
build_or_open_cache(
    root, "training", load_annotations(annotations_path, subset="training"),
    SlowStore(features), Lattice(16, (4, 2, 2)), FeatureTiming(), 3,
    dtype="float16", num_workers=2,
)
"""


class CountingStore(NpyFeatureStore):
    """A store that lists the videos it loads, each taking `delay` seconds."""

    def __init__(self, directory, delay=0.0):
        super().__init__(directory)
        self.loaded = []
        self.delay = delay

    def load(self, video_id, **kwargs):
        self.loaded.append(video_id)
        time.sleep(self.delay)
        return super().load(video_id, **kwargs)


def test_a_killed_cache_build_resumes_where_it_stopped(tmp_path):
    # 600 videos, every seventh without features (skipped, and counted across
    # the resume), each a constant of its number.
    ids = [f"v{index:03d}" for index in range(600)]
    database = {
        video_id: {
            "subset": "training",
            "duration": 8.0,
            "annotations": [{"label": "jump", "segment": [1.0, 1.0 + index % 6]}],
        }
        for index, video_id in enumerate(ids)
    }
    annotations_path = tmp_path / "gt.json"
    annotations_path.write_text(json.dumps({"database": database}))
    features = tmp_path / "features"
    features.mkdir()
    for index, video_id in enumerate(ids):
        if index % 7:
            np.save(features / f"{video_id}.npy", np.full((15, 3), index, np.float32))

    root = tmp_path / "cache"
    builder = subprocess.Popen(
        [sys.executable, "-c", BUILD_SCRIPT, annotations_path, features, root],
        env=python_environment(),
    )
    try:
        progress_paths = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and builder.poll() is None:
            progress_paths = list(root.glob(".training-*.building/progress.json"))
            if (
                progress_paths
                and json.loads(progress_paths[0].read_text())["videos_done"] >= 192
            ):
                break
            time.sleep(0.01)
        builder.send_signal(signal.SIGKILL)
    finally:
        builder.wait()
    assert builder.returncode == -signal.SIGKILL, "the build ended before the kill"
    done = json.loads(progress_paths[0].read_text())["videos_done"]
    assert 192 <= done < 600

    annotations = load_annotations(annotations_path, subset="training")
    store = CountingStore(features)
    resumed = build_or_open_cache(
        root, "training", annotations, store, LATTICE, TIMING, 3, dtype="float16"
    )
    assert sorted(store.loaded) == ids[done:]  # missing ones are looked for too
    fresh = build_or_open_cache(
        tmp_path / "fresh",
        "training",
        annotations,
        NpyFeatureStore(features),
        LATTICE,
        TIMING,
        3,
        dtype="float16",
    )
    assert resumed.video_ids == fresh.video_ids
    assert resumed.skipped == fresh.skipped and len(resumed.skipped) == 86
    np.testing.assert_array_equal(
        resumed.clips[:, 0, 0], [int(v[1:]) for v in fresh.video_ids]
    )
    for name in ("clips", "max_iou", "classes"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(fresh, name))
    assert os.listdir(root) == [os.path.basename(resumed.folder)]
    assert sorted(os.listdir(resumed.folder)) == [
        "classes.npy",
        "clips.npy",
        "index.json",
        "max_iou.npy",
    ]


def test_build_folders_of_a_changed_configuration_are_removed_others_kept(tmp_path):
    root = tmp_path / "cache"
    for folder in (
        ".training-0000000000000001.building",  # this cache: resumes
        ".training-0000000000000002.building",  # another configuration
        ".validation-0000000000000003.building",  # another cache
    ):
        (root / folder).mkdir(parents=True)
        (root / folder / ".building").write_text("")
        (root / folder / "progress.json").write_text("{}")
    (root / ".training-0000000000000004.building").mkdir()
    (root / ".training-0000000000000004.building" / ".building").write_text("")
    assert remove_abandoned_builds(root) == [
        str(root / ".training-0000000000000004.building")
    ]
    removed = remove_abandoned_builds(
        root, obsolete_of=("training", "0000000000000001")
    )
    assert removed == [str(root / ".training-0000000000000002.building")]
    assert sorted(os.listdir(root)) == [
        ".training-0000000000000001.building",
        ".validation-0000000000000003.building",
    ]


def test_two_builders_of_one_cache_build_it_once(tmp_path):
    ids = [f"v{index:02d}" for index in range(40)]
    database = {
        video_id: {"subset": "training", "duration": 8.0, "annotations": []}
        for video_id in ids
    }
    annotations_path = tmp_path / "gt.json"
    annotations_path.write_text(json.dumps({"database": database}))
    features = tmp_path / "features"
    features.mkdir()
    for index, video_id in enumerate(ids):
        np.save(features / f"{video_id}.npy", np.full((15, 3), index, np.float32))
    annotations = load_annotations(annotations_path, subset="training")
    # Each build takes 0.1 s or more: the second starts while the first runs.
    stores = [CountingStore(features, delay=0.01), CountingStore(features, delay=0.01)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        caches = list(
            pool.map(
                lambda store: build_or_open_cache(
                    tmp_path / "cache",
                    "training",
                    annotations,
                    store,
                    LATTICE,
                    TIMING,
                    3,
                ),
                stores,
            )
        )
    assert sorted(len(store.loaded) for store in stores) == [0, 40]
    assert caches[0].folder == caches[1].folder
    assert os.listdir(tmp_path / "cache") == [os.path.basename(caches[0].folder)]


def resident_file_bytes():
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_a_pass_over_a_memory_mapped_cache_keeps_its_pages_out_of_the_rss(tmp_path):
    # A 192 MiB cache on disk: clips [768, 256, 256] float16, read in batches
    # of 32 (4 MiB); without dropping its pages a pass maps most of it.
    np.save(tmp_path / "clips.npy", np.ones((768, 256, 256), np.float16))
    np.save(tmp_path / "max_iou.npy", np.zeros((768, 4), np.float32))
    cache = ArrayCache(768)
    cache.clips = np.load(tmp_path / "clips.npy", mmap_mode="r")
    cache.max_iou = np.load(tmp_path / "max_iou.npy", mmap_mode="r")
    view = CacheSubset(cache, np.arange(768))
    for source in (cache, view):
        dataset = pipeline.make_dataset(source, "max_iou", 32, shuffle=True)
        before = resident_file_bytes()
        total = sum(float(np.sum(batch)) for batch, _ in dataset.as_numpy_iterator())
        assert total == 768 * 256 * 256
        assert resident_file_bytes() - before < 48 << 20
