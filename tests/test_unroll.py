"""export.unroll: Loops of a known trip count written out, the band conv's
taps regrouped into a few products per layer, the same outputs as the Loop
graph and Keras (near-ties too), one tap or group at a time in onnxruntime's
execution order, and Loops it cannot write out left alone."""

import json
import math
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from test_export import TINY_MODEL, random_clips

from export import onnx_export
from export.unroll import MIN_WEIGHTS_TO_GROUP, TAPS_PER_PRODUCT, unroll_loops
from tal_keras.map_band import MapBand
from tal_keras.models import (
    build_classifier_network,
    build_inference_model,
    build_proposal_network,
)


def _session(model, **options):
    settings = ort.SessionOptions()
    for name, value in options.items():
        setattr(settings, name, value)
    return ort.InferenceSession(
        model.SerializeToString(), settings, providers=["CPUExecutionProvider"]
    )


def _op_count(model, op_type):
    return sum(node.op_type == op_type for node in model.graph.node)


_BUILT = {}


def _tiny_graphs():
    """(Keras inference model of TINY_MODEL, its ONNX graph with the tap
    Loops), built once."""
    if "graphs" not in _BUILT:
        model = build_inference_model(
            build_proposal_network(TINY_MODEL), build_classifier_network(TINY_MODEL)
        )
        with_loops = onnx_export.convert(
            model, TINY_MODEL, onnx_export.DEFAULT_OPSET, unroll=False
        )
        _BUILT["graphs"] = model, with_loops
    return _BUILT["graphs"]


def _written_out(with_loops, taps_per_product, min_weights_to_group=0):
    copy = onnx.ModelProto.FromString(with_loops.SerializeToString())
    return unroll_loops(
        copy,
        taps_per_product=taps_per_product,
        min_weights_to_group=min_weights_to_group,
    )[0]


def _executed_nodes(model, tmp_path, clips):
    """The model's node names in the order onnxruntime ran them (one
    thread, from its profile)."""
    session = _session(
        model,
        enable_profiling=True,
        profile_file_prefix=str(tmp_path / "profile"),
        intra_op_num_threads=1,
    )
    session.run(None, {"clip_features": clips})
    with open(session.end_profiling()) as stream:
        events = json.load(stream)
    return [
        event["name"].removesuffix("_kernel_time")
        for event in events
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
    ]


def _steps_per_layer(config, taps_per_product):
    # The first tap of each layer is outside the Loop.
    return math.ceil((config.kernel_size**2 - 1) / taps_per_product)


@pytest.mark.parametrize("taps_per_product", [1, 3, TAPS_PER_PRODUCT])
def test_the_written_out_graph_has_no_loop_and_matches_keras(taps_per_product):
    model, with_loops = _tiny_graphs()
    unrolled = _written_out(with_loops, taps_per_product)
    # One tap Loop per band conv layer, none once written out.
    assert _op_count(with_loops, "Loop") == TINY_MODEL.num_conv_layers
    assert _op_count(unrolled, "Loop") == 0
    # One MatMul per tap, or per group of taps.
    steps = _steps_per_layer(TINY_MODEL, taps_per_product)
    matmuls = _op_count(with_loops, "MatMul") + TINY_MODEL.num_conv_layers * steps
    assert _op_count(unrolled, "MatMul") == matmuls
    # The tap's index row and kernel slice are constants: nothing is left of
    # keras.ops.take's handling of negative indices (on the tap number, and
    # on the index row, whose where() multiplies by the axis length).
    assert not [
        node.name
        for node in unrolled.graph.node
        if "/unrolled" in node.name and node.op_type in ("Less", "Not", "Mul")
    ]
    clips = random_clips(3)
    expected = onnx_export.onnx_scores(_session(with_loops), clips)
    found = onnx_export.onnx_scores(_session(unrolled), clips)
    keras_found = onnx_export.keras_scores(model, clips, 3)
    for name in expected:
        np.testing.assert_allclose(found[name], expected[name], atol=1e-6)
        np.testing.assert_allclose(found[name], keras_found[name], atol=1e-5)


def test_grouped_taps_match_keras_on_near_ties_and_the_export_writes_taps():
    model, with_loops = _tiny_graphs()
    grouped = _written_out(with_loops, TAPS_PER_PRODUCT)
    tap_by_tap = _written_out(with_loops, 1)
    assert _op_count(grouped, "MatMul") < _op_count(tap_by_tap, "MatMul")
    # The export writes the taps out one by one.
    exported = onnx_export.convert(model, TINY_MODEL, onnx_export.DEFAULT_OPSET)
    assert _op_count(exported, "MatMul") == _op_count(tap_by_tap, "MatMul")
    # Asked for, regrouping skips layers below the width (8 x 8 here).
    assert TINY_MODEL.hidden_size**2 < MIN_WEIGHTS_TO_GROUP
    narrow = _written_out(with_loops, TAPS_PER_PRODUCT, MIN_WEIGHTS_TO_GROUP)
    assert _op_count(narrow, "MatMul") == _op_count(tap_by_tap, "MatMul")
    at_the_width = _written_out(with_loops, TAPS_PER_PRODUCT, TINY_MODEL.hidden_size**2)
    assert _op_count(at_the_width, "MatMul") == _op_count(grouped, "MatMul")
    # Features of a few distinct values, a little apart: the max-pool ties
    # and the taps add equal terms, in another order than Keras.
    rng = np.random.default_rng(4)
    shape = (2, TINY_MODEL.num_clips, TINY_MODEL.feature_dim)
    clips = rng.integers(-2, 3, size=shape).astype(np.float32)
    clips += 1e-6 * rng.standard_normal(shape, dtype=np.float32)
    found = onnx_export.onnx_scores(_session(grouped), clips)
    expected = onnx_export.keras_scores(model, clips, 2)
    for name in expected:
        np.testing.assert_allclose(found[name], expected[name], atol=1e-5)


@pytest.mark.parametrize("taps_per_product", [1, 3])
def test_onnxruntime_runs_the_written_out_taps_one_step_at_a_time(
    tmp_path, taps_per_product
):
    # Both orders of the band conv: gather then multiply, multiply then gather.
    config = TINY_MODEL
    band = MapBand(
        config.lattice, config.kernel_size, config.num_conv_layers, config.map_mode
    )
    assert set(band.gather_first) == {True, False}
    unrolled = _written_out(_tiny_graphs()[1], taps_per_product)
    producers = {output: node for node in unrolled.graph.node for output in node.output}

    def place(node):  # (loop, first tap) of a written-out tap or group of taps
        found = re.match(r"(.*)/unrolled(\d+)/", node.name) or re.match(
            r"(.*)/unrolled/taps(\d+)-\d+/", node.name
        )
        return (found.group(1), int(found.group(2))) if found else None

    # The running sum: Adds that take an Add of the step before.
    sums = set()
    for node in unrolled.graph.node:
        if node.op_type == "Add" and place(node):
            loop, first_tap = place(node)
            for name in node.input:
                before = producers.get(name)
                if (
                    before is not None
                    and before.op_type == "Add"
                    and place(before) == (loop, first_tap - taps_per_product)
                ):
                    sums.update({node.name, before.name})
    steps_per_layer = _steps_per_layer(config, taps_per_product)
    assert len(sums) == config.num_conv_layers * steps_per_layer

    executed = _executed_nodes(unrolled, tmp_path, random_clips(2))
    matmuls = {
        node.name
        for node in unrolled.graph.node
        if node.op_type == "MatMul" and place(node)
    }
    loops = {place(node)[0] for node in unrolled.graph.node if place(node)}
    assert len(loops) == config.num_conv_layers
    for loop in loops:
        steps = [
            "M" if name in matmuls else "A"
            for name in executed
            if (name in matmuls or name in sums) and name.startswith(loop + "/")
        ]
        # A step's product is added before the next step's is made.
        assert steps == ["M", "A"] * steps_per_layer, (loop, steps)


def _counting_loop(trip_count_name):
    """A graph: y = x + 0 + 1 + ... + (trips - 1), by an ONNX Loop."""
    body = helper.make_graph(
        [
            helper.make_node("Cast", ["iteration"], ["step"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["total_in", "step"], ["total_out"]),
            helper.make_node("Identity", ["condition_in"], ["condition_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("condition_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("total_in", TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("total_out", TensorProto.FLOAT, [2]),
        ],
    )
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])]
    initializers = [helper.make_tensor("go", TensorProto.BOOL, [], [True])]
    if trip_count_name == "trips":
        inputs.append(helper.make_tensor_value_info("trips", TensorProto.INT64, []))
    else:
        initializers.append(helper.make_tensor("five", TensorProto.INT64, [], [5]))
    graph = helper.make_graph(
        [helper.make_node("Loop", [trip_count_name, "go", "x"], ["y"], body=body)],
        "counting",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializers,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8
    )


def test_a_loop_with_a_constant_trip_count_is_written_out():
    model = _counting_loop("five")
    x = np.array([1.0, -2.0], np.float32)
    expected = _session(model).run(None, {"x": x})[0]
    unrolled, count = unroll_loops(_counting_loop("five"))
    onnx.checker.check_model(unrolled)
    assert count == 1 and _op_count(unrolled, "Loop") == 0
    assert _op_count(unrolled, "Add") == 5
    found = _session(unrolled).run(None, {"x": x})[0]
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(found, x + 10)


def test_a_loop_whose_trip_count_is_an_input_stays():
    unrolled, count = unroll_loops(_counting_loop("trips"))
    assert count == 0 and _op_count(unrolled, "Loop") == 1
    found = _session(unrolled).run(
        None, {"x": np.zeros(2, np.float32), "trips": np.array(4, np.int64)}
    )[0]
    np.testing.assert_array_equal(found, [6.0, 6.0])


def test_the_export_traces_the_taps_written_out_without_shape_work_per_tap():
    model, _ = _tiny_graphs()
    exported = onnx_export.convert(model, TINY_MODEL, onnx_export.DEFAULT_OPSET)
    taps = TINY_MODEL.kernel_size**2 * TINY_MODEL.num_conv_layers
    assert _op_count(exported, "Loop") == 0
    assert _op_count(exported, "MatMul") >= taps
    # Constant-shape products: the shape work does not grow with the taps.
    for op_type in ("Shape", "Concat", "ReduceProd", "Unsqueeze"):
        assert _op_count(exported, op_type) < taps, op_type
    clips = random_clips(2)
    found = onnx_export.onnx_scores(_session(exported), clips)
    expected = onnx_export.keras_scores(model, clips, 2)
    for name in expected:
        np.testing.assert_allclose(found[name], expected[name], atol=1e-5)


def test_repeated_nodes_are_merged_and_graph_outputs_kept():
    shape_of = [
        helper.make_node("Shape", ["x"], [f"shape{index}"]) for index in range(2)
    ]
    ones = [
        helper.make_node(
            "ConstantOfShape",
            [f"shape{index}"],
            [f"ones{index}"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
        )
        for index in range(2)
    ]
    added = [
        helper.make_node("Add", ["x", "ones0"], ["y"]),
        helper.make_node("Add", ["x", "ones1"], ["z"]),  # the same value as y
        helper.make_node("Mul", ["y", "z"], ["w"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        for name in ("w", "z")
    ]
    model = helper.make_model(
        helper.make_graph([*shape_of, *ones, *added], "g", [x], outputs),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    merged, _ = unroll_loops(onnx.ModelProto.FromString(model.SerializeToString()))
    # One Shape and one ConstantOfShape; z is a graph output, so its Add stays.
    assert [_op_count(merged, op) for op in ("Shape", "ConstantOfShape", "Add")] == [
        1,
        1,
        2,
    ]
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = _session(model).run(None, {"x": values})
    for found, wanted in zip(_session(merged).run(None, {"x": values}), expected):
        np.testing.assert_array_equal(found, wanted)


def test_the_exported_taps_run_one_after_the_other(tmp_path):
    """onnxruntime's default order runs each tap's Gather, MatMul and Add
    before the next tap's: one tap's temporaries alive at a time."""
    model, _ = _tiny_graphs()
    exported = onnx_export.convert(model, TINY_MODEL, onnx_export.DEFAULT_OPSET)
    op_types = {node.name: node.op_type for node in exported.graph.node}
    letters = {"Gather": "G", "MatMul": "M", "Add": "A"}
    executed = "".join(
        letters.get(op_types.get(name), "")
        for name in _executed_nodes(exported, tmp_path, random_clips(1))
    )
    taps = TINY_MODEL.kernel_size**2 * TINY_MODEL.num_conv_layers
    # A tap after the first of its layer: gather then multiply, or multiply
    # then gather, then its Add to the running sum.
    steps = len(re.findall("GMA|MGA", executed))
    assert steps >= taps - TINY_MODEL.num_conv_layers, executed
    assert max(len(run) for run in re.findall("G+", executed)) < 5, executed
