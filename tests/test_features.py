import logging
import pickle
import types

import h5py
import numpy as np
import pytest

from tal_keras.clips import FeatureTiming
from tal_keras.data.features import (
    Hdf5FeatureStore,
    NpyFeatureStore,
    find_usable_videos,
    load_usable_videos,
    open_feature_store,
)
from tal_keras.errors import DataError

WIDTH = 6


def features(num_steps, width=WIDTH, seed=0):
    return (
        np.random.default_rng(seed)
        .standard_normal((num_steps, width))
        .astype(np.float32)
    )


def test_timing_centers():
    timing = FeatureTiming()
    np.testing.assert_allclose(timing.centers(3), [16 / 15, 24 / 15, 32 / 15])
    assert timing.step_seconds == pytest.approx(8 / 15)
    custom = FeatureTiming(fps=10.0, stride=5, window=10)
    np.testing.assert_allclose(custom.centers(4), [0.5, 1.0, 1.5, 2.0])
    assert timing.num_steps(80.0) == 150


@pytest.mark.parametrize("field", ["fps", "stride", "window"])
def test_timing_rejects_non_positive(field):
    with pytest.raises(ValueError, match=f"FeatureTiming.{field} must be > 0"):
        FeatureTiming(**{field: 0})
    with pytest.raises(TypeError, match=f"FeatureTiming.{field} must be a number"):
        FeatureTiming(**{field: "15"})


@pytest.fixture
def npy_dir(tmp_path):
    directory = tmp_path / "features"
    directory.mkdir()
    np.save(directory / "plain.npy", features(5))
    np.save(directory / "v_prefixed.npy", features(7, seed=1))
    np.save(directory / "v_both.npy", features(3, seed=2))
    np.save(directory / "both.npy", features(4, seed=3))
    np.save(directory / "doubles.npy", features(2).astype(np.float64))
    np.save(directory / "integers.npy", np.arange(12).reshape(2, WIDTH))
    return directory


def test_npy_store_matches_ids_with_and_without_prefix(npy_dir):
    store = NpyFeatureStore(npy_dir)
    np.testing.assert_array_equal(store.load("plain"), features(5))
    np.testing.assert_array_equal(store.load("v_plain"), features(5))
    np.testing.assert_array_equal(store.load("prefixed"), features(7, seed=1))
    # The id's own form wins when both files exist.
    np.testing.assert_array_equal(store.load("both"), features(4, seed=3))
    np.testing.assert_array_equal(store.load("v_both"), features(3, seed=2))
    assert store.has("prefixed") and store.has("v_plain") and not store.has("absent")


def test_npy_store_returns_float32(npy_dir):
    store = NpyFeatureStore(npy_dir)
    assert store.load("doubles").dtype == np.float32
    np.testing.assert_array_equal(store.load("integers", WIDTH)[1], np.arange(6, 12))


def save_bad(directory, name, array):
    np.save(directory / f"{name}.npy", array)
    return str(directory / f"{name}.npy")


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.zeros(5, np.float32), r"expected a 2-D array \[T, D\], found shape \(5,\)"),
        (
            np.zeros((2, 3, WIDTH), np.float32),
            r"expected a 2-D array \[T, D\], found shape \(2, 3, 6\)",
        ),
        (
            np.zeros((0, WIDTH), np.float32),
            r"expected at least one step, found shape \(0, 6\)",
        ),
        (
            np.zeros((4, 5), np.float32),
            r"expected feature width 6, found 5 \(shape \(4, 5\)\)",
        ),
        (np.zeros((4, WIDTH), bool), "expected numeric features, found dtype bool"),
        (
            np.array([[0.0] * WIDTH, [np.nan] + [0.0] * (WIDTH - 1)], np.float32),
            r"expected finite features, found 1 NaN/inf values in 1 of 2 steps \(first at step 1\)",
        ),
        (
            np.array([[np.inf] * WIDTH], np.float32),
            r"expected finite features, found 6 NaN/inf values in 1 of 1 steps",
        ),
        (np.full((1, WIDTH), 1e300), "expected finite features"),  # overflows float32
    ],
)
def test_npy_store_rejects_bad_arrays(tmp_path, array, expected):
    path = save_bad(tmp_path, "v_bad", array)
    with pytest.raises(DataError, match=expected) as error:
        NpyFeatureStore(tmp_path).load("bad", feature_dim=WIDTH)
    assert str(error.value).startswith(f"{path}: video bad:")


def test_npy_store_missing_video_names_both_candidates(npy_dir):
    with pytest.raises(DataError) as error:
        NpyFeatureStore(npy_dir).load("ghost")
    message = str(error.value)
    assert str(npy_dir) in message and "video ghost" in message
    assert "ghost or v_ghost" in message


def test_npy_store_corrupt_files(tmp_path):
    (tmp_path / "garbage.npy").write_bytes(b"this is not numpy")
    np.save(
        tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True
    )
    header_only = tmp_path / "truncated.npy"
    np.save(header_only, features(50))
    header_only.write_bytes(header_only.read_bytes()[:200])
    store = NpyFeatureStore(tmp_path)
    for name in ("garbage", "objects", "truncated"):
        with pytest.raises(DataError, match="cannot read the feature file") as error:
            store.load(name)
        assert str(error.value).startswith(f"{tmp_path / name}.npy: video {name}:")


def test_npy_store_needs_a_directory(tmp_path):
    with pytest.raises(DataError, match="feature directory not found"):
        NpyFeatureStore(tmp_path / "absent")


@pytest.fixture
def h5_path(tmp_path):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("plain", data=features(5))
        handle.create_dataset("v_prefixed", data=features(7, seed=1))
        handle.create_group("grouped").create_dataset(
            "c3d_features", data=features(3, seed=2)
        )
        two = handle.create_group("two")
        two.create_dataset("a", data=features(2))
        two.create_dataset("b", data=features(2))
        handle.create_dataset("nan", data=np.full((3, WIDTH), np.nan, np.float32))
        handle.create_dataset("narrow", data=features(3, width=4))
        handle.create_dataset("flat", data=np.zeros(8, np.float32))
        handle.create_dataset("empty", data=np.zeros((0, WIDTH), np.float32))
        handle.create_dataset("text", data=b"hello")
    return path


def test_hdf5_store_reads_datasets_and_groups(h5_path):
    store = Hdf5FeatureStore(h5_path)
    np.testing.assert_array_equal(store.load("plain"), features(5))
    np.testing.assert_array_equal(store.load("prefixed", WIDTH), features(7, seed=1))
    np.testing.assert_array_equal(store.load("v_plain"), features(5))
    np.testing.assert_array_equal(store.load("grouped"), features(3, seed=2))
    assert store.has("v_grouped") and not store.has("ghost")
    assert store.load("plain").dtype == np.float32


@pytest.mark.parametrize(
    "video_id, expected",
    [
        ("two", r"expected a dataset or a group holding one dataset.*\['a', 'b'\]"),
        ("nan", "expected finite features, found 18 NaN/inf values"),
        ("narrow", r"expected feature width 6, found 4 \(shape \(3, 4\)\)"),
        ("flat", r"expected a 2-D array \[T, D\], found shape \(8,\)"),
        ("empty", r"expected at least one step, found shape \(0, 6\)"),
        ("text", "expected numeric features"),
    ],
)
def test_hdf5_store_rejects_bad_datasets(h5_path, video_id, expected):
    with pytest.raises(DataError, match=expected) as error:
        Hdf5FeatureStore(h5_path).load(video_id, feature_dim=WIDTH)
    assert str(error.value).startswith(f"{h5_path}:/{video_id}: video {video_id}:")


def test_hdf5_store_missing_video(h5_path):
    with pytest.raises(
        DataError,
        match=r"features.h5: video ghost: no features found \(looked for ghost or v_ghost\)",
    ):
        Hdf5FeatureStore(h5_path).load("ghost")


def test_hdf5_store_survives_pickle_close_and_fork(h5_path):
    store = Hdf5FeatureStore(h5_path)
    store.load("plain")
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.load("plain"), features(5))
    store.close()
    np.testing.assert_array_equal(store.load("prefixed"), features(7, seed=1))
    handle = store._handle
    store._pid = -1  # as seen from a forked child: reopen, not reuse
    store.load("plain")
    assert store._handle is not handle
    with Hdf5FeatureStore(h5_path) as scoped:
        assert scoped.has("plain")
    assert scoped._handle is None


def test_hdf5_store_rejects_a_non_hdf5_file(tmp_path):
    path = tmp_path / "fake.h5"
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="fake.h5: cannot open the HDF5 feature file"):
        Hdf5FeatureStore(path)


def test_open_feature_store_chooses_by_path(npy_dir, h5_path, tmp_path):
    assert isinstance(open_feature_store(npy_dir), NpyFeatureStore)
    assert isinstance(open_feature_store(h5_path), Hdf5FeatureStore)
    with pytest.raises(DataError, match=r"missing: features not found"):
        open_feature_store(tmp_path / "missing")
    other = tmp_path / "features.txt"
    other.write_text("x")
    with pytest.raises(DataError, match=r"features.txt: unknown feature format.*\.h5"):
        open_feature_store(other)


@pytest.fixture
def mixed_dir(tmp_path):
    directory = tmp_path / "mixed"
    directory.mkdir()
    np.save(directory / "good1.npy", features(4))
    np.save(directory / "v_good2.npy", features(6))
    np.save(directory / "nan.npy", np.full((3, WIDTH), np.nan, np.float32))
    np.save(directory / "narrow.npy", features(3, width=2))
    return directory


def test_find_usable_videos_skips_with_one_line_each(mixed_dir, caplog):
    store = NpyFeatureStore(mixed_dir)
    with caplog.at_level(logging.INFO, logger="tal_keras"):
        usable, skipped = find_usable_videos(
            ["good1", "nan", "missing", "good2", "narrow"], store, WIDTH
        )
    assert usable == ["good1", "good2"]
    assert [video_id for video_id, _ in skipped] == ["nan", "missing", "narrow"]
    assert "NaN/inf" in skipped[0][1] and "no features found" in skipped[1][1]
    assert "expected feature width 6, found 2" in skipped[2][1]
    messages = [r.getMessage() for r in caplog.records if r.name == "tal_keras"]
    assert len(messages) == 4
    for message, video_id in zip(messages, ("nan", "missing", "narrow")):
        assert message.startswith(f"Skipping video {video_id}:")
    assert "2 of 5 videos usable, 3 skipped" in messages[-1]
    assert caplog.records[-1].levelno == logging.WARNING


def test_find_usable_videos_shape_only_check(mixed_dir):
    store = NpyFeatureStore(mixed_dir)
    usable, skipped = find_usable_videos(
        ["good1", "nan", "narrow"], store, WIDTH, check_values=False
    )
    # Shapes only: the NaN video passes here and fails later in `load`.
    assert usable == ["good1", "nan"]
    assert [video_id for video_id, _ in skipped] == ["narrow"]


def test_find_usable_videos_takes_width_from_first_video(mixed_dir):
    usable, skipped = find_usable_videos(
        ["narrow", "good1"], NpyFeatureStore(mixed_dir)
    )
    assert usable == ["narrow"] and skipped[0][0] == "good1"


def test_find_usable_videos_accepts_annotations(mixed_dir):
    fake_annotations = types.SimpleNamespace(videos={"good2": None, "good1": None})
    usable, skipped = find_usable_videos(
        fake_annotations, NpyFeatureStore(mixed_dir), WIDTH
    )
    assert usable == ["good2", "good1"] and skipped == []


def test_no_usable_video_raises(mixed_dir):
    with pytest.raises(
        DataError, match=r"none of the 2 videos has usable features.*NaN"
    ):
        find_usable_videos(["nan", "narrow"], NpyFeatureStore(mixed_dir), WIDTH)


def test_load_usable_videos_returns_arrays(mixed_dir):
    loaded, skipped = load_usable_videos(
        ["good2", "nan"], NpyFeatureStore(mixed_dir), WIDTH
    )
    assert list(loaded) == ["good2"] and [s[0] for s in skipped] == ["nan"]
    np.testing.assert_array_equal(loaded["good2"], features(6))
