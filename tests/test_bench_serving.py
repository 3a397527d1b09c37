"""bench/ort_profile.py sums onnxruntime's profile by op type and by
written-out loop; bench/ort_band_layers.py's layer graphs (tap by tap in
blocks or over the whole band, and grouped) compute a band conv layer."""

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench import ort_band_layers, ort_profile
from tal_keras.lattice import Lattice
from tal_keras.map_band import MapBand


def test_the_profile_is_summed_by_op_type_and_by_loop():
    # 3-D: onnxruntime would fuse a 2-D MatMul and Add into one Gemm.
    weights = numpy_helper.from_array(np.ones((3, 3), np.float32), "weights")
    nodes = [
        helper.make_node("MatMul", ["clip_features", "weights"], ["a"], name="L/unrolled0/MatMul"),
        helper.make_node("MatMul", ["a", "weights"], ["b"], name="L/unrolled/taps1-8/MatMul"),
        helper.make_node("Add", ["a", "b"], ["out"], name="L/unrolled/taps1-8/Add"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("clip_features", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 3])],
        [weights],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8
    )
    times, seconds = ort_profile.profile(
        model.SerializeToString(), np.ones((1, 2, 3), np.float32), runs=2, threads=1
    )
    assert len(seconds) == 2
    # Only the two profiled calls, not the warm-up: 3 nodes each.
    assert sorted(op for _, op, _ in times) == ["Add"] * 2 + ["MatMul"] * 4
    by_type, _, by_loop, _ = ort_profile.summarize(times, runs=2, top=10)
    type_rows = {
        line.split(" | ")[0].strip("| "): line for line in by_type.splitlines()
    }
    assert type_rows["MatMul"].split(" | ")[1] == "2"
    assert type_rows["Add"].split(" | ")[1] == "1"
    # The tap and the group are rows of loop L, by op type.
    loop_rows = [line.split(" | ") for line in by_loop.splitlines()[2:]]
    assert sorted((row[0].strip("| "), row[1], row[2]) for row in loop_rows) == [
        ("L", "Add", "1"),
        ("L", "MatMul", "2"),
    ]


def test_band_layer_graphs_compute_the_layer_in_each_form():
    band = MapBand(Lattice(16, (4, 2, 2)), 3, 2)
    assert set(band.gather_first) == {True, False}
    rng = np.random.default_rng(0)
    for layer in (1, 2):
        weights = rng.standard_normal((9, 4, 5)).astype(np.float32)
        features = rng.standard_normal(
            (2, band.band_sizes[layer - 1] + 1, 4), dtype=np.float32
        )
        features[:, -1] = 0  # the zero row
        rows = band.forward_index[layer - 1]
        conv = sum(features[:, rows[tap]] @ weights[tap] for tap in range(9))
        expected = np.maximum(conv, 0) * band.mask_weights[layer - 1][:, None]
        # At this width one block holds the whole layer.
        # Frequency form: per group of tiles the window transform, two
        # mixing products and the inverse (tile 2: one group at this width),
        # and the kernel spectra's two.
        for form, product_count in (
            ("blocks", 9),
            ("taps", 9),
            ("grouped", 3),
            ("frequency", 6),
        ):
            graph = ort_band_layers.layer_graph(band, layer, weights, form, 4, 2)
            products = [node for node in graph.graph.node if node.op_type == "MatMul"]
            assert len(products) == product_count
            session = ort.InferenceSession(
                graph.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            found = session.run(None, {"features": features})[0]
            np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5)


def test_model_memory_prints_a_row_per_batch_size(tmp_path, capsys):
    from bench import model_memory

    weights = numpy_helper.from_array(np.ones((3, 3), np.float32), "weights")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["clip_features", "weights"], ["out"])],
        "g",
        [
            helper.make_tensor_value_info(
                "clip_features", TensorProto.FLOAT, ["batch", 2, 3]
            )
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2, 3])],
        [weights],
    )
    path = tmp_path / "g.onnx"
    path.write_bytes(
        helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8
        ).SerializeToString()
    )
    model_memory.main(["--model", str(path), "--batch_sizes", "1,3"])
    rows = [
        line.split(" | ")
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("| 1 ", "| 3 "))
    ]
    assert [row[0] for row in rows] == ["| 1", "| 3"]
    assert rows[0][-1] == "- |" and float(rows[1][-1].strip(" |")) >= 0
    assert all(float(row[4]) >= float(row[2]) > 0 for row in rows)  # peak >= load
