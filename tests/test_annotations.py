import json
import logging
import re

import numpy as np
import pytest

from tal_keras.data.annotations import feature_key_candidates, load_annotations
from tal_keras.errors import DataError


def video(subset="training", duration=100.0, annotations=None):
    entry = {"subset": subset, "duration": duration}
    if annotations is not None:
        entry["annotations"] = annotations
    return entry


def segment(label, start, end):
    return {"label": label, "segment": [start, end]}


def write_json(tmp_path, database, name="annotations.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "test", "database": database}))
    return path


@pytest.fixture
def sample(tmp_path):
    return write_json(
        tmp_path,
        {
            "zz": video("validation", "50.5", [segment("Cat", 1.0, 2.0)]),
            "bb": video(
                "training", 100, [segment("Dog", 10, 20), segment("Ant", 30.5, 90)]
            ),
            "aa": video("training", 30.0, [segment("Dog", -2.0, 40.0)]),
            "tt": video("testing", 12.0),
            "te": video("testing", 13.0, []),
        },
    )


def test_loads_videos_ordered_by_id_with_sorted_class_names(sample):
    annotations = load_annotations(sample)
    assert annotations.video_ids == ["aa", "bb", "te", "tt", "zz"]
    # Classes span the whole file, so a subset load keeps the same indices.
    assert annotations.class_names == ["Ant", "Cat", "Dog"]
    bb = annotations["bb"]
    assert (bb.subset, bb.duration) == ("training", 100.0)
    np.testing.assert_array_equal(bb.segments, [[10, 20], [30.5, 90]])
    np.testing.assert_array_equal(bb.labels, [2, 0])
    assert bb.segments.dtype == np.float64 and bb.labels.dtype == np.int64
    assert annotations["zz"].duration == 50.5  # the string duration
    for video_id in ("tt", "te"):
        assert annotations[video_id].segments.shape == (0, 2)
        assert annotations[video_id].labels.shape == (0,)
    assert annotations.num_segments == 4


def test_segments_are_clamped_to_the_video(sample):
    np.testing.assert_array_equal(
        load_annotations(sample)["aa"].segments, [[0.0, 30.0]]
    )


@pytest.mark.parametrize(
    "subset, expected",
    [("training", ["aa", "bb"]), (("validation", "testing"), ["te", "tt", "zz"])],
)
def test_subset_filter(sample, subset, expected):
    annotations = load_annotations(sample, subset=subset)
    assert annotations.video_ids == expected
    assert annotations.class_names == ["Ant", "Cat", "Dog"]


def test_unknown_subset_names_the_subsets_present(sample):
    with pytest.raises(DataError, match=r"no video of subset \['train'\].*'training'"):
        load_annotations(sample, subset="train")


def test_empty_and_inverted_segments_are_dropped_and_counted_in_one_line(
    tmp_path, caplog
):
    path = write_json(
        tmp_path,
        {
            "a": video(
                "training",
                10.0,
                [
                    segment("X", 2.0, 2.0),  # empty
                    segment("X", 5.0, 3.0),  # inverted
                    segment("X", 11.0, 15.0),  # after the end: empty once clamped
                    segment("X", 1.0, 4.0),
                ],
            ),
            "b": video("training", 10.0, [segment("Y", -5.0, -1.0)]),
        },
    )
    with caplog.at_level(logging.INFO, logger="tal_keras"):
        annotations = load_annotations(path)
    assert annotations.dropped_segments == 4
    np.testing.assert_array_equal(annotations["a"].segments, [[1.0, 4.0]])
    assert annotations["b"].segments.shape == (0, 2)
    records = [record for record in caplog.records if record.name == "tal_keras"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "dropped 4 empty or inverted segments" in records[0].getMessage()
    assert str(path) in records[0].getMessage()
    assert "dropped 4" in annotations.summary()


def test_clean_file_logs_one_info_line(sample, caplog):
    with caplog.at_level(logging.INFO, logger="tal_keras"):
        load_annotations(sample)
    levels = [record.levelno for record in caplog.records if record.name == "tal_keras"]
    assert levels == [logging.INFO]


def test_category_file_fixes_class_order(sample, tmp_path):
    categories = tmp_path / "classes.txt"
    categories.write_text("Dog\nCat\n\nAnt\nBee\n")
    annotations = load_annotations(sample, category_file=categories)
    assert annotations.class_names == ["Dog", "Cat", "Ant", "Bee"]
    np.testing.assert_array_equal(annotations["bb"].labels, [0, 2])


def test_label_missing_from_category_file(sample, tmp_path):
    categories = tmp_path / "classes.txt"
    categories.write_text("Dog\nAnt\n")
    with pytest.raises(DataError) as error:
        load_annotations(sample, category_file=categories)
    message = str(error.value)
    assert str(sample) in message and "video zz" in message and "'Cat'" in message
    assert str(categories) in message


def test_explicit_class_names(sample):
    annotations = load_annotations(sample, class_names=["Cat", "Dog", "Ant"])
    np.testing.assert_array_equal(annotations["bb"].labels, [1, 2])
    with pytest.raises(DataError, match="video bb: label 'Ant'"):
        load_annotations(sample, subset="training", class_names=["Cat", "Dog"])


def test_duplicate_category(tmp_path, sample):
    categories = tmp_path / "classes.txt"
    categories.write_text("Dog\nDog\n")
    with pytest.raises(DataError, match=r"classes.txt: class 'Dog' is listed twice"):
        load_annotations(sample, category_file=categories)


def test_blocklist_matches_with_and_without_prefix(sample):
    annotations = load_annotations(sample, blocklist=["v_bb", "zz"])
    assert annotations.video_ids == ["aa", "te", "tt"]
    assert annotations.blocked_videos == 2
    assert "2 blocklisted" in annotations.summary()


def test_feature_key_candidates():
    assert feature_key_candidates("abc") == ("abc", "v_abc")
    assert feature_key_candidates("v_abc") == ("v_abc", "abc")
    assert feature_key_candidates("v_") == ("v_", "v_v_")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope.json: annotation file not found"):
        load_annotations(tmp_path / "nope.json")


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"database": {"a": ')
    with pytest.raises(DataError, match=r"broken.json: not valid JSON"):
        load_annotations(path)


@pytest.mark.parametrize("content", [{"videos": {}}, [1, 2], {"database": [1]}])
def test_missing_database(tmp_path, content):
    path = tmp_path / "nodb.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"nodb.json: .*database"):
        load_annotations(path)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"subset": "training"}, 'invalid "duration" None'),
        ({"subset": "training", "duration": "long"}, "invalid \"duration\" 'long'"),
        ({"subset": "training", "duration": -3.0}, 'invalid "duration" -3.0'),
        ({"subset": "training", "duration": 0}, 'invalid "duration" 0'),
        ({"subset": "training", "duration": True}, 'invalid "duration" True'),
        ({"subset": "training", "duration": [5]}, 'invalid "duration" \\[5\\]'),
        ({"duration": 5.0}, 'invalid "subset" None'),
        ({"subset": 3, "duration": 5.0}, 'invalid "subset" 3'),
        ({"subset": "", "duration": 5.0}, "invalid \"subset\" ''"),
        ("not an entry", "must be an object"),
        ({"subset": "training", "duration": 5.0, "annotations": {}}, "must be a list"),
    ],
)
def test_invalid_video_entry_names_file_and_video(tmp_path, entry, message):
    path = write_json(tmp_path, {"good": video(), "vid42": entry})
    with pytest.raises(DataError, match=message) as error:
        load_annotations(path)
    assert str(error.value).startswith(f"{path}: video vid42:")


def test_nan_duration_is_rejected(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text('{"database": {"vid7": {"subset": "training", "duration": NaN}}}')
    with pytest.raises(DataError, match=r"nan.json: video vid7: .*duration"):
        load_annotations(path)


@pytest.mark.parametrize(
    "annotation",
    [
        {"label": "X", "segment": [1.0]},
        {"label": "X", "segment": [1.0, 2.0, 3.0]},
        {"label": "X", "segment": [1.0, "2.0"]},
        {"label": "X", "segment": "1-2"},
        {"label": "X", "segment": [1.0, None]},
        {"label": "X", "segment": [True, 2.0]},
        {"label": "X"},
    ],
)
def test_segment_not_two_numbers(tmp_path, annotation):
    path = write_json(tmp_path, {"vid9": video("training", 10.0, [annotation])})
    with pytest.raises(DataError, match="is not two finite numbers") as error:
        load_annotations(path)
    assert str(error.value).startswith(f"{path}: video vid9:")


@pytest.mark.parametrize(
    "annotation", [{"segment": [1, 2]}, {"label": 3, "segment": [1, 2]}, 7]
)
def test_annotation_without_label(tmp_path, annotation):
    path = write_json(tmp_path, {"vid3": video("training", 10.0, [annotation])})
    with pytest.raises(DataError, match=re.escape(f"{path}: video vid3: annotation")):
        load_annotations(path)
