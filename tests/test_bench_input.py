"""bench/bench_input.py in its seconds-long mode: HACS-timed datasets in
both formats, the cache build and the input pipeline measured in child
processes, the tables printed, the generated files removed."""

import os
import sys

import pytest

from tal_keras.lattice import Lattice

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_input


def test_small_mode_measures_both_formats_and_cleans_up(tmp_path, capsys):
    out = tmp_path / "bench"
    results = bench_input.main(["--out", str(out), "--small"])
    printed = capsys.readouterr().out
    num_proposals = Lattice(256, (64, 32, 32)).num_proposals
    assert [build["format"] for build in results["builds"]] == ["npy", "hdf5"]
    for build in results["builds"]:
        assert build["training"]["videos"] == 48
        assert build["validation"]["videos"] == 16
        # clips [V, 256, 8] float16 + max_iou float32 + classes int16 [V, P].
        rows = 48 * bench_input.cache_row_bytes(8, num_proposals)
        assert rows < build["training"]["bytes"] < rows + 64 * 1024
        assert 0 < build["rss_anon"] <= build["peak_rss"] < 4 << 30
    cold, warm = results["pipelines"]
    assert (cold["kind"], warm["kind"]) == ("cold", "warm")
    assert cold["videos"] == warm["videos"] == 16  # the batch after the first
    for table in ("Cache build", "Input pipeline", "load average at the end"):
        assert table in printed
    # The by-bytes column is the measured rate scaled by the bytes per video.
    rate = warm["videos"] / warm["seconds"]
    scale = bench_input.pipeline_bytes(8, num_proposals) / bench_input.pipeline_bytes(
        2304, num_proposals
    )
    assert f"| {rate:.0f} | {rate * scale:.0f} |" in printed
    assert os.listdir(out) == []


def test_out_inside_the_repository_is_refused():
    with pytest.raises(SystemExit):
        bench_input.main(["--out", os.path.join(ROOT, "generated"), "--small"])
