"""export.unroll and the export's written-out band conv: Loops of a known
trip count written out, the same outputs as the Loop graph and Keras, one
tap at a time in onnxruntime's execution order, Loops it cannot write out
left alone; the export's taps traced written out, grouped into a few
products per layer within its byte budget, or tap by tap in blocks of rows
within its block budget (near-ties too)."""

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from test_export import TINY_MODEL, random_clips

from export import onnx_export
from export.unroll import unroll_loops
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


def _written_out(with_loops):
    copy = onnx.ModelProto.FromString(with_loops.SerializeToString())
    return unroll_loops(copy)[0]


def _exported(grouped_tap_bytes, tap_block_bytes=0):
    """The export of `_tiny_graphs`' model at these budgets (by default over
    whole bands), converted once."""
    key = ("exported", grouped_tap_bytes, tap_block_bytes)
    if key not in _BUILT:
        _BUILT[key] = onnx_export.convert(
            _tiny_graphs()[0],
            TINY_MODEL,
            onnx_export.DEFAULT_OPSET,
            grouped_tap_bytes=grouped_tap_bytes,
            tap_block_bytes=tap_block_bytes,
        )
    return _BUILT[key]


def _near_tie_clips(seed):
    """Clips of a few distinct values, a little apart: the max-pool ties and
    the taps add equal terms, in another order than Keras."""
    rng = np.random.default_rng(seed)
    shape = (2, TINY_MODEL.num_clips, TINY_MODEL.feature_dim)
    clips = rng.integers(-2, 3, size=shape).astype(np.float32)
    return clips + 1e-6 * rng.standard_normal(shape, dtype=np.float32)


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


def test_the_written_out_graph_has_no_loop_and_matches_keras():
    model, with_loops = _tiny_graphs()
    unrolled = _written_out(with_loops)
    # One tap Loop per band conv layer, none once written out.
    assert _op_count(with_loops, "Loop") == TINY_MODEL.num_conv_layers
    assert _op_count(unrolled, "Loop") == 0
    # One MatMul per tap (the first tap of each layer is outside the Loop).
    taps_in_loops = (TINY_MODEL.kernel_size**2 - 1) * TINY_MODEL.num_conv_layers
    matmuls = _op_count(with_loops, "MatMul") + taps_in_loops
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


def test_the_export_groups_taps_within_its_budget_and_matches_keras_on_near_ties():
    config = TINY_MODEL
    band = MapBand(
        config.lattice, config.kernel_size, config.num_conv_layers, config.map_mode
    )
    taps, layers = config.kernel_size**2, config.num_conv_layers
    tap_by_tap = _exported(0)
    # At the default budget every layer's taps fit: one product per layer.
    assert onnx_export.GROUPED_TAP_BYTES >= 4 * taps * config.hidden_size * (
        max(band.band_sizes) + 1
    )
    grouped = _exported(onnx_export.GROUPED_TAP_BYTES)
    outside = _op_count(tap_by_tap, "MatMul") - taps * layers
    assert _op_count(grouped, "MatMul") == outside + layers
    # A budget of 4 taps' rows in the largest band: 4 taps or more per
    # product, never one product per layer.
    four_taps = 4 * 4 * config.hidden_size * (max(band.band_sizes) + 1)
    in_groups = _op_count(_exported(four_taps), "MatMul") - outside
    assert layers < in_groups <= layers * -(-taps // 4)
    clips = _near_tie_clips(4)
    expected = onnx_export.keras_scores(_tiny_graphs()[0], clips, 2)
    for model in (grouped, tap_by_tap):
        found = onnx_export.onnx_scores(_session(model), clips)
        for name in expected:
            np.testing.assert_allclose(found[name], expected[name], atol=1e-5)


def test_the_export_computes_rows_in_blocks_within_its_budget_on_near_ties():
    config = TINY_MODEL
    band = MapBand(
        config.lattice, config.kernel_size, config.num_conv_layers, config.map_mode
    )
    assert set(band.gather_first) == {True, False}
    taps = config.kernel_size**2
    whole = _exported(0)  # tap by tap over whole bands
    # Blocks of 5 output rows (one tap's gathered rows of 5 cells).
    in_blocks = _exported(0, 5 * config.hidden_size * 4)
    blocks = sum(-(-(size + 1) // 5) for size in band.band_sizes[1:])
    assert blocks > 2 * config.num_conv_layers
    # One product per tap and block; multiply first, a block that reads only
    # the zero row through a tap makes the same product as another such block
    # (the export merges repeated nodes).
    products = 0
    for layer, index in enumerate(band.forward_index):
        zero_row = band.band_sizes[layer]
        for rows in index:
            reads = [
                tuple(np.unique(block[block != zero_row]))
                for block in np.array_split(rows, range(5, len(rows), 5))
            ]
            products += len(set(reads)) if not band.gather_first[layer] else len(reads)
    assert products < taps * blocks
    outside = _op_count(whole, "MatMul") - taps * config.num_conv_layers
    assert _op_count(in_blocks, "MatMul") == outside + products
    clips = _near_tie_clips(5)
    expected = onnx_export.keras_scores(_tiny_graphs()[0], clips, 2)
    found = onnx_export.onnx_scores(_session(in_blocks), clips)
    for name in expected:
        np.testing.assert_allclose(found[name], expected[name], atol=1e-5)


def test_the_export_writes_in_each_values_shape_batch_symbols_shared():
    # Blocks of 5 rows, tap by tap: onnxruntime's memory planner shares
    # buffers between values whose shapes it knows to be the same.
    exported = _exported(0, 5 * TINY_MODEL.hidden_size * 4)
    shapes = {value.name: value.type.tensor_type for value in exported.graph.value_info}
    leading = set()
    for node in exported.graph.node:
        if node.op_type not in ("Gather", "MatMul", "Add"):
            continue
        for output in node.output:
            assert shapes[output].HasField("shape"), output
            dims = shapes[output].shape.dim
            assert all(dim.HasField("dim_value") or dim.dim_param for dim in dims)
            if node.op_type == "MatMul" and len(dims) == 3:
                leading.add(dims[0].dim_param)
    # Both networks' band conv products: one batch symbol per network.
    assert 1 <= len(leading) <= 2, leading


def test_int8_quantizes_flat_products_one_quantization_per_value():
    whole = _exported(0)  # tap by tap over whole bands: 3-D products
    flat = onnx_export.flat_products(whole)

    def products(model):
        """{MatMul by a constant: (its first input, that input's rank)}."""
        inferred = onnx.shape_inference.infer_shapes(model)
        ranks = {
            value.name: len(value.type.tensor_type.shape.dim)
            for value in [*inferred.graph.input, *inferred.graph.value_info]
        }
        constants = {tensor.name for tensor in model.graph.initializer}
        return {
            node.name: (node.input[0], ranks[node.input[0]])
            for node in model.graph.node
            if node.op_type == "MatMul" and node.input[1] in constants
        }

    before, after = products(whole), products(flat)
    assert sorted(before) == sorted(after)
    three_d = [value for value, rank in before.values() if rank == 3]
    assert len(set(three_d)) < len(three_d)  # products share values
    assert {rank for _, rank in after.values()} == {2}
    # Each 3-D value flattened once; each product reshaped back.
    added = _op_count(flat, "Reshape") - _op_count(whole, "Reshape")
    assert added == len(set(three_d)) + len(three_d)
    clips = _near_tie_clips(3)
    expected = onnx_export.onnx_scores(_session(whole), clips)
    found = onnx_export.onnx_scores(_session(flat), clips)
    for name in expected:
        np.testing.assert_array_equal(found[name].shape, expected[name].shape)
        np.testing.assert_allclose(found[name], expected[name], atol=1e-6)
    # One quantization per value multiplied.
    int8 = onnx_export.to_int8(whole)
    assert _op_count(int8, "DynamicQuantizeLinear") == len(
        {value for value, _ in after.values()}
    )


def test_onnxruntime_runs_the_written_out_taps_one_step_at_a_time(tmp_path):
    # Both orders of the band conv: gather then multiply, multiply then gather.
    config = TINY_MODEL
    band = MapBand(
        config.lattice, config.kernel_size, config.num_conv_layers, config.map_mode
    )
    assert set(band.gather_first) == {True, False}
    unrolled = _written_out(_tiny_graphs()[1])
    producers = {output: node for node in unrolled.graph.node for output in node.output}

    def place(node):  # (loop, tap) of a written-out tap
        found = re.match(r"(.*)/unrolled(\d+)/", node.name)
        return (found.group(1), int(found.group(2))) if found else None

    # The running sum: Adds that take an Add of the tap before.
    sums = set()
    for node in unrolled.graph.node:
        if node.op_type == "Add" and place(node):
            loop, tap = place(node)
            for name in node.input:
                before = producers.get(name)
                if (
                    before is not None
                    and before.op_type == "Add"
                    and place(before) == (loop, tap - 1)
                ):
                    sums.update({node.name, before.name})
    # The first tap of each layer is outside the Loop.
    steps_per_layer = config.kernel_size**2 - 1
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
        # A tap's product is added before the next tap's is made.
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
    exported = _exported(0)  # tap by tap
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
    exported = _exported(0)  # tap by tap
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
