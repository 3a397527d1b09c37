"""Exports a trained run to one ONNX file: clip features [B, N, D] ->
overlap_scores [B, P] and class_scores [B, P, C], both networks in one graph,
with everything serving needs as metadata (`export.metadata`).

    python -m export.onnx_export --workdir runs/demo [--out runs/demo/s2dtan.onnx]
        [--opset 17] [--fp16 | --int8] [--check_videos 8]

The ONNX outputs are checked against Keras on videos of the run's evaluation
subset (the training cache and resampling); without the data, on random
inputs, with a warning. A difference above the tolerance (1e-4 in float32;
--fp16_tolerance in float16) fails the export and leaves no file behind.
With --int8 the float32 graph is checked so first, then the model's matrix
products are quantized (`to_int8`, on the band conv's taps over whole bands)
and the int8 graph's difference from Keras and its time beside the float32
graph's are reported, not held to a tolerance (quantization error is
expected; --tolerance sets one); a warning says so where int8 is the slower
(the paper config, whose float32 graph computes the band conv in the
frequency form).
Needs TensorFlow (the Keras TF backend and tf2onnx); serving does not.
"""

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import tempfile
import time
import warnings

import numpy as np

from export import metadata

logger = logging.getLogger("tal_keras")

DEFAULT_NAME = "s2dtan.onnx"
DEFAULT_FP16_NAME = "s2dtan.fp16.onnx"
DEFAULT_INT8_NAME = "s2dtan.int8.onnx"
DEFAULT_OPSET = 17
# A band conv layer whose gathered rows of several taps fit in this many bytes
# per video sums its taps in a few large products, not one product per tap
# (`band_map_conv.taps_written_out`). At the demo config (H 64) all 25 taps
# of each layer fit (11 MB per video) and onnxruntime took 0.90x the time of
# tap by tap at batch 32 and 0.75x at batch 1; at the paper config one tap's
# rows take 45 MB, so it stays tap by tap (groups of 9 took 1.07x the time
# there, for 9 times the memory). A layer in the frequency form takes its
# tiles in groups whose input windows fit in the same budget, so that one
# group's temporaries are alive at a time (the paper config: 4.2 s per video
# and 0.55 GiB per added video). docs/performance.md has the measurements.
GROUPED_TAP_BYTES = 32 * 2**20
# Band conv layers whose taps are not grouped compute their output rows in
# blocks whose gathered rows of one tap take at most this many bytes per video
# (1,024 rows at H 512), so that a block's Gather, MatMul and Add stay in the
# CPU's caches (`convert`'s tap_block_bytes). At the paper config onnxruntime
# ran the band conv in 0.84x the time of whole-band taps (one thread) and the
# whole model in 0.94x Keras' time (two; whole bands 1.14x, another run); the
# graph has 25,612 nodes against 1,601 and loads in 16 s (whole bands: 1.4 s).
# docs/performance.md has the numbers.
TAP_BLOCK_BYTES = 2 * 2**20
FP32_TOLERANCE = 1e-4  # bound on max |ONNX - Keras| in float32
# float16 keeps ~3 significant digits; sigmoid and softmax outputs lie in
# [0, 1], so errors of a few 1e-3 are expected and 1e-2 flags a broken graph.
FP16_TOLERANCE = 1e-2
# What `to_int8` does, recorded in the file's parity metadata.
INT8_SCHEME = (
    "onnxruntime dynamic quantization: MatMul weights int8 per output channel, "
    "activations uint8 per tensor, scaled at run time"
)


class ParityError(RuntimeError):
    """The exported graph's outputs differ from Keras beyond the tolerance."""


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What `export_run` wrote and how it was checked.

    Attributes:
        path: the ONNX file.
        precision: "float32", "float16" or "int8".
        inputs: description of the inputs the check ran on.
        max_abs_diff: {output name: max |ONNX - Keras|}.
        batch_consistency: max |batched - one video at a time| of the ONNX
            graph (dynamic batch works).
        tolerance: the bound the differences were held to; None for an int8
            graph held to none (its differences are reported).
        seconds: time the export took, check included.
        mean_abs_diff: {output name: mean |ONNX - Keras|} (int8 only).
        float32_max_abs_diff: {output name: max |ONNX - Keras|} of the float32
            graph a float32 export writes (int8 only).
        call_seconds: {"float32": s, "int8": s}, one onnxruntime call of the
            float32 graph a float32 export writes and of the int8 graph on
            the check's videos (int8 only).
    """

    path: str
    precision: str
    inputs: str
    max_abs_diff: dict
    batch_consistency: float
    tolerance: float
    seconds: float
    mean_abs_diff: dict = None
    float32_max_abs_diff: dict = None
    call_seconds: dict = None

    def summary(self):
        diffs = ", ".join(
            f"{name} {value:.2e}" for name, value in self.max_abs_diff.items()
        )
        bound = (
            "reported, no tolerance"
            if self.tolerance is None
            else f"tolerance {self.tolerance:g}"
        )
        line = (
            f"{self.path}: {self.precision}, max |ONNX - Keras| {diffs} "
            f"({bound}) on {self.inputs}; batch vs single "
            f"video {self.batch_consistency:.2e}; {os.path.getsize(self.path) / 2**20:.1f} MiB "
            f"in {self.seconds:.1f} s"
        )
        if self.precision == "int8":
            means = ", ".join(
                f"{name} {value:.2e}" for name, value in self.mean_abs_diff.items()
            )
            float_diffs = ", ".join(
                f"{name} {value:.2e}"
                for name, value in self.float32_max_abs_diff.items()
            )
            line += (
                f"\nint8: mean |ONNX - Keras| {means}; the float32 export's "
                f"graph: max {float_diffs}; one call on the check's "
                f"videos: int8 {self.call_seconds['int8']:.3f} s, float32 "
                f"{self.call_seconds['float32']:.3f} s"
            )
        return line


def load_run(workdir):
    """(RunConfig, proposal network, classifier network) of a run folder.

    Raises:
        FileNotFoundError: config.json or a network's best.keras is missing.
    """
    from tal_keras import inference, run

    folder = run.RunFolder(workdir)
    # The run may have been moved: its own folder is where it is now.
    run_config = dataclasses.replace(folder.read_config(), workdir=workdir)
    networks = [
        inference.load_network(
            folder.require_best_model(
                network,
                "the export needs both trained networks "
                f"(python train.py --flagfile=... --networks={network} --resume).",
            )
        )
        for network in ("proposal", "classifier")
    ]
    return run_config, networks[0], networks[1]


def run_class_names(run_config, category_file=None):
    """The C class names of the run, in class_scores column order: those the
    run folder carries (classes.txt, written by train.py); a `category_file`
    must list the same names in the same order
    (`RunFolder.checked_class_names`). Runs without classes.txt take the
    category file's, else the data's."""
    from tal_keras import run
    from tal_keras.data.annotations import read_class_names

    folder = run.folder_of(run_config)
    if category_file:
        names = folder.checked_class_names(
            read_class_names(category_file), category_file
        )
    else:
        names = folder.read_class_names() or run.class_names_of(run_config.data)
    if len(names) != run_config.model.num_classes:
        raise ValueError(
            f"{len(names)} class names (from {category_file or run_config.data.annotations}) "
            f"but the run's networks have {run_config.model.num_classes} classes."
        )
    return list(names)


def check_inputs(run_config, num_videos, seed=0):
    """(clip features float32 [V, N, D], description) for the parity check.

    Videos of the run's evaluation subset, through the cache and resampling
    training used; random normal inputs, with a warning, when the data
    cannot be read.
    """
    from tal_keras import run
    from tal_keras.errors import DataError

    model = run_config.model
    subset = run_config.data.eval_subset
    try:
        _, cache = run.open_subset(run_config, subset)
        count = min(num_videos, len(cache))
        clips = np.asarray(cache.clips[:count], dtype=np.float32)
        return clips, f"{count} videos of the {subset} subset"
    except (DataError, OSError) as error:
        logger.warning(
            "!! PARITY CHECK ON RANDOM INPUTS: the %s subset cannot be read (%s); "
            "the ONNX graph is compared with Keras on random normal clip features, "
            "not on real videos.",
            subset,
            error,
        )
    rng = np.random.default_rng(seed)
    clips = rng.standard_normal((num_videos, model.num_clips, model.feature_dim))
    return clips.astype(np.float32), f"{num_videos} random normal inputs (no data)"


def keras_scores(inference_model, clip_features, batch_size):
    """{name: float32 array} of the Keras inference model, in batches."""
    outputs = {metadata.OVERLAP_SCORES: [], metadata.CLASS_SCORES: []}
    for begin in range(0, len(clip_features), batch_size):
        batch = inference_model(
            clip_features[begin : begin + batch_size], training=False
        )
        for name, parts in outputs.items():
            parts.append(np.asarray(batch[name], dtype=np.float32))
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def onnx_scores(session, clip_features):
    names = [metadata.OVERLAP_SCORES, metadata.CLASS_SCORES]
    values = session.run(names, {metadata.INPUT_NAME: clip_features})
    return dict(zip(names, values))


def convert(
    inference_model,
    model_config,
    opset,
    unroll=True,
    grouped_tap_bytes=GROUPED_TAP_BYTES,
    tap_block_bytes=TAP_BLOCK_BYTES,
    frequency_tile=None,
):
    """onnx.ModelProto of the Keras inference model, with a dynamic batch named
    "batch", static proposal and class dimensions, outputs in the order
    (overlap_scores, class_scores).

    unroll: the band conv's taps as plain nodes, traced written out (a few
    at a time where their gathered rows fit in `grouped_tap_bytes` per
    video, else tap by tap in blocks of rows whose gathered rows of one tap
    fit in `tap_block_bytes`: `band_map_conv.taps_written_out`), or in the
    frequency form with tiles of `frequency_tile` cells a side (None: where
    `MapBand.frequency_tile` finds that form multiplies at most half of what
    the taps do, as at the paper config; 0: never), and converted without
    tf2onnx's optimizer passes (`_tf2onnx_optimizers`), then any Loop of a
    known trip count written out, constants folded and repeated nodes merged
    (`export.unroll`); False keeps tf2onnx's Loops.
    """
    import onnx

    model = traced_graph(
        inference_model,
        {metadata.INPUT_NAME: (model_config.num_clips, model_config.feature_dim)},
        opset,
        unroll,
        grouped_tap_bytes,
        tap_block_bytes,
        frequency_tile,
    )
    graph = model.graph
    if [value.name for value in graph.input] != [metadata.INPUT_NAME]:
        raise RuntimeError(
            f"the converted graph's inputs are {[value.name for value in graph.input]}, "
            f"expected [{metadata.INPUT_NAME!r}]."
        )
    outputs = {value.name: value for value in graph.output}
    expected = [metadata.OVERLAP_SCORES, metadata.CLASS_SCORES]
    if sorted(outputs) != sorted(expected):
        raise RuntimeError(
            f"the converted graph's outputs are {sorted(outputs)}, expected {expected}."
        )
    num_proposals = model_config.lattice.num_proposals
    shapes = {
        metadata.INPUT_NAME: [
            "batch",
            model_config.num_clips,
            model_config.feature_dim,
        ],
        metadata.OVERLAP_SCORES: ["batch", num_proposals],
        metadata.CLASS_SCORES: ["batch", num_proposals, model_config.num_classes],
    }
    ordered = [outputs[name] for name in expected]
    del graph.output[:]
    graph.output.extend(ordered)
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shapes[value.name]):
            dim.Clear()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size
    model.doc_string = (
        "S-2D-TAN (tal_keras): clip features -> overlap_scores (P_over) and "
        "class_scores (P_class) of every lattice proposal; see metadata_props."
    )
    model = with_shapes(model)
    onnx.checker.check_model(model)
    return model


def with_shapes(model):
    """The graph with the shapes ONNX's inference finds written in
    (value_info), unknown dimensions under generated symbols.

    The converter's reshapes (the clip encoder's products) leave the batch
    dimension unknown to onnxruntime, and its memory planner shares a freed
    buffer only with a value of the same known or symbolic shape: finding
    none, it scanned an ever longer list of free buffers for every value it
    placed, and took 412 s to load the paper config's graph in blocks of
    rows (25,612 nodes); with the shapes written in, 16 s
    (docs/performance.md). ONNX's inference names an unknown dimension once
    and carries the name through the ops that keep it, so values that share
    a symbol have the same size."""
    import onnx

    return onnx.shape_inference.infer_shapes(model)


def traced_graph(
    keras_model,
    inputs,
    opset,
    unroll=True,
    grouped_tap_bytes=GROUPED_TAP_BYTES,
    tap_block_bytes=TAP_BLOCK_BYTES,
    frequency_tile=None,
):
    """onnx.ModelProto of a Keras model traced by Keras' tf2onnx export.

    inputs: {name: shape without the batch dimension} of its float32
    inputs, in the model's order (the batch stays dynamic); unroll,
    grouped_tap_bytes, tap_block_bytes, frequency_tile: as in `convert`. The
    outputs are
    named by tf2onnx.
    """
    import onnx
    import tensorflow as tf

    from export.unroll import unroll_loops
    from tal_keras.layers.band_map_conv import taps_written_out

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    signature = [
        tf.TensorSpec((None, *shape), tf.float32, name=name)
        for name, shape in inputs.items()
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        # An explicit signature: the model need not have been called (a paper
        # config forward takes minutes on a CPU).
        with (
            warnings.catch_warnings(),
            _tf2onnx_optimizers(run=not unroll),
            taps_written_out(grouped_tap_bytes, tap_block_bytes, frequency_tile)
            if unroll
            else contextlib.nullcontext(),
        ):
            warnings.simplefilter("ignore", FutureWarning)  # keras' tf2onnx numpy patch
            keras_model.export(
                path,
                format="onnx",
                input_signature=signature,
                opset_version=opset,
                verbose=False,
            )
        model = onnx.load(path)
    if unroll:
        model, _ = unroll_loops(model)
    return model


@contextlib.contextmanager
def _tf2onnx_optimizers(run):
    """tf2onnx converts with its graph optimizer passes (`run`) or without.

    Each pass leaves another copy of every constant of the graph in memory
    (tf2onnx 1.17: 39 passes at the paper config; its written-out graph
    converted in 18.8 GiB of peak memory with them, 9.2 GiB without), so
    the export runs none: it folds constants and merges repeated
    nodes itself (`export.unroll`), and onnxruntime optimises the graph when
    it loads it. The passes run for graphs with Loops (`export.unroll`
    reads their tap bodies in the optimised form), and then without their
    deep copies (TF2ONNX_CATCH_ERRORS).
    """
    from tf2onnx import optimizer

    name = "TF2ONNX_CATCH_ERRORS"
    previous = os.environ.get(name), getattr(optimizer, "_optimizers", None)
    os.environ[name] = "FALSE"
    if previous[1] is not None and not run:
        optimizer._optimizers = {}
    try:
        yield
    finally:
        if previous[1] is not None:
            optimizer._optimizers = previous[1]
        if previous[0] is None:
            del os.environ[name]
        else:
            os.environ[name] = previous[0]


def to_float16(model):
    """The graph with float16 weights and activations, float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        # It warns about weights rounded to 0 or clipped; the check measures the effect.
        warnings.simplefilter("ignore")
        return convert_float_to_float16(model, keep_io_types=True)


def to_int8(model):
    """The graph with its matrix products by constant weights in int8
    (`INT8_SCHEME`); inputs, outputs and the other nodes stay float32.

    Give it a graph converted with `tap_block_bytes=0` (the band conv's taps
    over whole bands), as `export_run` does: onnxruntime's quantizer looks
    nodes up by name in a list, so its time grows with the square of the
    node count: the paper config in blocks of rows, with its products 2-D
    between reshapes (40,000 nodes), took over 10 minutes without
    finishing, against 10 s whole-band. The products are made 2-D first
    (`flat_products`)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "int8.onnx")
        quantize_dynamic(
            flat_products(model),
            path,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
        return onnx.load(path)


def flat_products(model):
    """The graph with each MatMul of a value by a constant [C, H] (the value
    not known to be 2-D) written as one [rows, C] x [C, H] product between
    Reshapes: the value flattened to [-1, C] once, however many products
    read it, the product reshaped back to the value's leading dimensions
    and H.

    For `to_int8`: onnxruntime's dynamically quantized product
    (DynamicQuantizeMatMul) of the band conv's 3-D products took 2.5 times
    as long as of the same products in 2-D (paper config, one call: 8.1
    against 3.2 s; `python bench/ort_profile.py`, docs/performance.md), and
    a value flattened once is quantized once. The float32 graph keeps them
    3-D (`band_map_conv._times`)."""
    import onnx
    from onnx import helper, numpy_helper

    inferred = with_shapes(model)
    ranks = {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in [*inferred.graph.input, *inferred.graph.value_info]
        if value.type.tensor_type.HasField("shape")
    }
    weights = {
        tensor.name: tuple(tensor.dims)
        for tensor in model.graph.initializer
        if len(tensor.dims) == 2
    }
    flat = onnx.ModelProto()
    flat.CopyFrom(model)
    nodes, constants = [], {}

    def constant(values):
        name = "flat_products/" + "_".join(str(value) for value in values)
        constants.setdefault(
            name, numpy_helper.from_array(np.array(values, np.int64), name)
        )
        return name

    made = set()  # the values flattened and the output shapes made
    for node in flat.graph.node:
        value = node.input[0] if node.op_type == "MatMul" else None
        if value is None or node.input[1] not in weights or ranks.get(value) == 2:
            nodes.append(node)
            continue
        channels, hidden = weights[node.input[1]]
        rows, leading = value + "/flat", value + "/leading"
        shape = f"{value}/shape_{hidden}"
        if rows not in made:
            made.add(rows)
            nodes += [
                helper.make_node("Reshape", [value, constant([-1, channels])], [rows]),
                helper.make_node("Shape", [value], [leading], end=-1),
            ]
        if shape not in made:
            made.add(shape)
            nodes.append(
                helper.make_node(
                    "Concat", [leading, constant([hidden])], [shape], axis=0
                )
            )
        product = node.name + "/flat"
        nodes += [
            helper.make_node(
                "MatMul", [rows, node.input[1]], [product], name=node.name
            ),
            helper.make_node("Reshape", [product, shape], list(node.output)),
        ]
    del flat.graph.node[:]
    flat.graph.node.extend(nodes)
    flat.graph.initializer.extend(constants.values())
    return flat


def _timed_scores(session, clip_features):
    """(`onnx_scores`, seconds the call took)."""
    begin = time.perf_counter()
    scores = onnx_scores(session, clip_features)
    return scores, time.perf_counter() - begin


def _batch_consistency(session, clip_features, found):
    """max |batched - first video alone| of the session's outputs."""
    single = onnx_scores(session, clip_features[:1])
    return max(float(np.abs(single[name][0] - found[name][0]).max()) for name in found)


def _differences(found, expected, reduce):
    return {
        name: float(reduce(np.abs(found[name] - expected[name]))) for name in expected
    }


def _session(model):
    import onnxruntime as ort

    from export.detector import session_options

    return ort.InferenceSession(
        model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )


def _set_metadata(model, values):
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def export_run(
    workdir,
    out=None,
    opset=DEFAULT_OPSET,
    fp16=False,
    check_videos=8,
    tolerance=None,
    category_file=None,
    int8=False,
):
    """Exports the run in `workdir` to one ONNX file, checked against Keras.

    Args:
        workdir: the run folder (config.json, proposal/ and classifier/best.keras).
        out: the ONNX path; default WORKDIR/s2dtan.onnx (s2dtan.fp16.onnx with
            fp16, s2dtan.int8.onnx with int8).
        opset: ONNX opset.
        fp16: convert weights and activations to float16.
        check_videos: evaluation videos (or random inputs) the check runs on.
        tolerance: max |ONNX - Keras| allowed; default 1e-4, 1e-2 with fp16,
            none with int8 (the difference is reported; the float32 graph it
            is quantized from is held to 1e-4).
        category_file: class names, one per line, when the run's annotations
            are not at hand.
        int8: quantize the model's matrix products (`to_int8`, on the band
            conv's taps over whole bands), after checking the float32 graph.

    Returns:
        `ExportReport`.

    Raises:
        ParityError: a difference above the tolerance, or int8 outputs that
            are not finite; nothing is written.
    """
    import onnx

    import tal_keras
    from tal_keras.atomic import atomic_path, check_writable
    from tal_keras.models import build_inference_model

    started = time.perf_counter()
    if fp16 and int8:
        raise ValueError("choose one of fp16 and int8, not both.")
    precision = "float16" if fp16 else "int8" if int8 else "float32"
    int8_tolerance = tolerance if int8 else None
    if tolerance is None or int8:
        tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    if out is None:
        out = os.path.join(
            workdir,
            {"float16": DEFAULT_FP16_NAME, "int8": DEFAULT_INT8_NAME}.get(
                precision, DEFAULT_NAME
            ),
        )
    check_writable(out, "ONNX file")  # before the conversion, not after
    run_config, proposal_network, classifier_network = load_run(workdir)
    class_names = run_class_names(run_config, category_file)
    inference_model = build_inference_model(proposal_network, classifier_network)
    # float16 by taps: float16 transforms would round each spectrum (Keras
    # takes the taps in mixed precision too).
    model = convert(
        inference_model, run_config.model, opset, frequency_tile=0 if fp16 else None
    )
    if fp16:
        model = to_float16(model)

    clip_features, inputs = check_inputs(run_config, check_videos)
    expected = keras_scores(inference_model, clip_features, run_config.eval.batch_size)
    session = _session(model)
    found, float_seconds = _timed_scores(session, clip_features)
    max_abs_diff = _differences(found, expected, np.max)
    batch_consistency = _batch_consistency(session, clip_features, found)
    failed = {
        name: diff for name, diff in max_abs_diff.items() if not diff <= tolerance
    }
    if failed or not batch_consistency <= tolerance:
        raise ParityError(
            f"ONNX export of {workdir} does not match Keras on {inputs}: max |ONNX - "
            f"Keras| {max_abs_diff}, batch vs single video {batch_consistency:.3g}, "
            f"tolerance {tolerance:g} ({'float32' if int8 else precision}). "
            "Nothing was written."
        )
    parity = {
        "inputs": inputs,
        "max_abs_diff": max_abs_diff,
        "batch_consistency": batch_consistency,
        "tolerance": tolerance,
        "reference": "Keras (TensorFlow backend) inference model",
    }
    int8_report = {}
    if int8:
        # Quantized from the whole-band taps (`to_int8`).
        del session, model
        model = to_int8(
            convert(
                inference_model,
                run_config.model,
                opset,
                tap_block_bytes=0,
                frequency_tile=0,
            )
        )
        session = _session(model)
        found, int8_seconds = _timed_scores(session, clip_features)
        if int8_seconds > float_seconds:
            logger.warning(
                "int8 took %.3f s per call on the check's videos, the float32 "
                "graph %.3f s: at this config the float32 export serves faster.",
                int8_seconds,
                float_seconds,
            )
        int8_report = {
            "mean_abs_diff": _differences(found, expected, np.mean),
            "float32_max_abs_diff": max_abs_diff,
            "call_seconds": {"float32": float_seconds, "int8": int8_seconds},
        }
        max_abs_diff = _differences(found, expected, np.max)
        batch_consistency = _batch_consistency(session, clip_features, found)
        finite = all(np.isfinite(values).all() for values in found.values())
        if not finite or (
            int8_tolerance is not None
            and not max(max_abs_diff.values()) <= int8_tolerance
        ):
            raise ParityError(
                f"int8 export of {workdir} on {inputs}: max |ONNX - Keras| "
                f"{max_abs_diff}"
                + ("" if finite else ", outputs not finite")
                + ("" if int8_tolerance is None else f", tolerance {int8_tolerance:g}")
                + ". Nothing was written."
            )
        tolerance = int8_tolerance
        parity = {
            **parity,
            "max_abs_diff": max_abs_diff,
            "batch_consistency": batch_consistency,
            "tolerance": tolerance,
            "quantization": INT8_SCHEME,
            **int8_report,
        }
    _set_metadata(
        model,
        metadata.build_metadata(
            run_config, class_names, precision, parity, tal_keras.__version__
        ),
    )
    with atomic_path(out) as temporary:
        onnx.save(model, temporary)
    return ExportReport(
        path=out,
        precision=precision,
        inputs=inputs,
        max_abs_diff=max_abs_diff,
        batch_consistency=batch_consistency,
        tolerance=tolerance,
        seconds=time.perf_counter() - started,
        **int8_report,
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m export.onnx_export",
        description="Export a trained run to one ONNX file, checked against Keras.",
    )
    parser.add_argument("--workdir", required=True, help="The run folder.")
    parser.add_argument(
        "--out",
        default=None,
        help=f"ONNX file to write; default WORKDIR/{DEFAULT_NAME} "
        f"(WORKDIR/{DEFAULT_FP16_NAME} with --fp16, WORKDIR/{DEFAULT_INT8_NAME} "
        "with --int8).",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version."
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="float16 weights and activations (inputs and outputs stay float32).",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="int8 matrix products (onnxruntime dynamic quantization); its "
        "difference from Keras and its speed beside float32 are reported.",
    )
    parser.add_argument(
        "--check_videos",
        type=int,
        default=8,
        help="Evaluation videos the ONNX graph is checked against Keras on.",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help=f"Max |ONNX - Keras| allowed; default {FP32_TOLERANCE:g}, "
        f"{FP16_TOLERANCE:g} with --fp16, none with --int8 (reported only).",
    )
    parser.add_argument(
        "--category_file",
        default=None,
        help="Class names, one per line, if the run's annotations are not at hand.",
    )
    args = parser.parse_args(argv)
    if args.check_videos < 1:
        parser.error(f"--check_videos must be >= 1, got {args.check_videos}.")
    if args.fp16 and args.int8:
        parser.error("choose one of --fp16 and --int8.")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tal_keras

    tal_keras.configure_logging()
    import keras

    if keras.backend.backend() != "tensorflow":
        print(
            f"error: the export needs the TensorFlow backend of Keras, got "
            f"KERAS_BACKEND={keras.backend.backend()!r}.",
            file=sys.stderr,
        )
        return 2
    from tal_keras import run
    from tal_keras.errors import DataError, stop_signals_as_interrupt

    # Held shared: no train.py or evaluate.py starts in the run folder (or
    # the output's) meanwhile and removes the export's temporary.
    folders = [
        run.RunFolder(args.workdir),
        run.enclosing_run_folder(args.out) if args.out else None,
    ]
    try:
        with stop_signals_as_interrupt(), run.shared_locks(folders):
            report = export_run(
                args.workdir,
                out=args.out,
                opset=args.opset,
                fp16=args.fp16,
                int8=args.int8,
                check_videos=args.check_videos,
                tolerance=args.tolerance,
                category_file=args.category_file,
            )
    except KeyboardInterrupt:
        print("interrupted: nothing written.", file=sys.stderr)
        return 130
    except ParityError as error:
        print(f"EXPORT FAILED: {error}", file=sys.stderr)
        return 1
    except (OSError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
