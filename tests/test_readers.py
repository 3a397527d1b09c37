"""One reader of ActivityNet-style JSON (data.annotations.read_database) under
the annotations, the official metrics' ground truth and serving's durations:
the same errors and the same duplicate-id warning from all three."""

import json
import logging

import pytest

from export import serve
from tal_keras import metrics
from tal_keras.data.annotations import load_annotations
from tal_keras.errors import DataError

READERS = {
    "annotations": lambda path: load_annotations(path, subset="validation"),
    "metrics": lambda path: metrics.load_ground_truth(path, subset="validation"),
    "serve": lambda path: serve.read_annotation_videos(path, "validation"),
}
VIDEO = {
    "subset": "validation",
    "duration": 20.0,
    "annotations": [{"label": "Jump", "segment": [1.0, 5.0]}],
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"videos": {}}', "'database'"),
        ('{"database": [1]}', "'database'"),
        ('{"database": ', "not valid JSON"),
    ],
)
def test_every_reader_gives_the_same_error(tmp_path, reader, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        READERS[reader](path)
    assert str(error.value).startswith(f"{path}: ")


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_warns_of_a_repeated_video_id(tmp_path, reader, caplog):
    entry = json.dumps(VIDEO)
    path = tmp_path / "twice.json"
    path.write_text(f'{{"database": {{"v1": {entry}, "v1": {entry}}}}}')
    with caplog.at_level(logging.WARNING, logger="tal_keras"):
        READERS[reader](path)
    assert "1 video ids appear more than once" in caplog.text and "v1" in caplog.text
