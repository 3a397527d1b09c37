"""Writes out the ONNX Loops whose trip count is known when exporting (the
band conv's tap loops, `tal_keras.layers.band_map_conv`) as plain nodes, and
folds what becomes constant.

tf2onnx turns the band conv's loop over the K * K taps into an ONNX `Loop`
that computes, per tap, the tap's row of the static index table (with
keras.ops.take's negative-index handling: Cast, Less, Not, Mul, Add) before
its Gather and MatMul. Written out with the tap number known, that row and
the tap's kernel slice are constants: what is left per tap is one Gather,
one MatMul and the Add of the running sum.

The nodes are emitted so that onnxruntime's default execution order runs the
taps one after the other (see `_interleaved`): one tap's
temporaries are alive at a time, as in the Loop.
"""

import numpy as np
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

# A Loop longer than this stays a Loop (the paper config's taps: 81).
MAX_ITERATIONS = 1024
# A constant node output is stored in the file only if it is at most this
# large or no larger than its largest input (no big tensors made from shapes).
MAX_NEW_CONSTANT = 4096
_NOT_FOLDED = {"Loop", "If", "Scan", "SequenceMap"}


def unroll_loops(model, max_iterations=MAX_ITERATIONS):
    """The model with its Loops of a known trip count written out (in place).

    A Loop whose iteration count and stop condition can be computed when
    exporting (from constants only), and that has no scan outputs or nested
    graphs, becomes one copy of its body per iteration; everything computed
    from constants alone (the main graph's and each copy's) is folded into
    initializers. Other Loops are kept, folded inside nothing.

    Returns:
        (model, number of Loops written out).
    """
    graph = model.graph
    folder = _Folder({init.name: init for init in graph.initializer})
    nodes, unrolled = [], 0
    for node in graph.node:
        if node.op_type == "Loop" and not node.domain:
            written_out = _unrolled(node, folder, max_iterations)
            if written_out is not None:
                nodes.extend(written_out)
                unrolled += 1
                continue
        if not folder.fold(node):
            nodes.append(node)
    if unrolled:
        nodes = _without_zero_products(nodes, folder, model)
    nodes = _without_duplicates(nodes, folder, [value.name for value in graph.output])
    nodes = _live(nodes, [value.name for value in graph.output])
    used = {name for node in nodes for name in _inputs_with_subgraphs(node)}
    used.update(value.name for value in graph.output)
    del graph.node[:]
    graph.node.extend(nodes)
    initializers = [folder.tensor(name) for name in folder.names() if name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    kept = {value.name for value in graph.output}
    kept.update(output for node in nodes for output in node.output)
    value_info = [value for value in graph.value_info if value.name in kept]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    return model, unrolled


class _Folder:
    """Values known when exporting, by name, and the evaluation of nodes on them."""

    def __init__(self, initializers):
        self._tensors = dict(initializers)  # original TensorProtos, kept as stored
        self._arrays = {}
        self._evaluators = {}

    def names(self):
        return list(self._tensors) + [
            name for name in self._arrays if name not in self._tensors
        ]

    def known(self, name):
        return name in self._tensors or name in self._arrays

    def size(self, name):
        """The number of elements of a known value."""
        if name in self._arrays:
            return self._arrays[name].size
        return int(np.prod(self._tensors[name].dims))

    def value(self, name):
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self._tensors[name])
        return self._arrays[name]

    def set(self, name, array):
        self._arrays[name] = np.asarray(array)

    def tensor(self, name):
        if name in self._tensors:
            return self._tensors[name]
        return numpy_helper.from_array(self._arrays[name], name)

    def fold(self, node):
        """Evaluates `node` if its inputs are all known; True if it was."""
        if (
            node.op_type in _NOT_FOLDED
            or node.domain
            or any(attribute.g.node or attribute.graphs for attribute in node.attribute)
            or not all(self.known(name) for name in node.input if name)
        ):
            return False
        inputs = [self.value(name) if name else None for name in node.input]
        outputs = self._evaluator(node).run(
            None,
            {
                f"in{index}": value
                for index, value in enumerate(inputs)
                if value is not None
            },
        )
        largest_input = max(
            (value.size for value in inputs if value is not None), default=0
        )
        if any(
            np.asarray(value).size > max(largest_input, MAX_NEW_CONSTANT)
            for value in outputs
        ):
            return False
        for name, value in zip(node.output, outputs):
            if name:
                self.set(name, value)
        return True

    def _evaluator(self, node):
        """A ReferenceEvaluator of the node's operator and attributes, on
        inputs named in0, in1, ...; one per distinct form."""
        key = (
            node.op_type,
            tuple(bool(name) for name in node.input),
            len(node.output),
            tuple(attribute.SerializeToString() for attribute in node.attribute),
        )
        if key not in self._evaluators:
            generic = helper.make_node(
                node.op_type,
                [f"in{index}" if name else "" for index, name in enumerate(node.input)],
                [f"out{index}" for index in range(len(node.output))],
            )
            generic.attribute.extend(node.attribute)
            self._evaluators[key] = ReferenceEvaluator(generic)
        return self._evaluators[key]


def _without_zero_products(nodes, folder, model):
    """The nodes, with integer products by a constant of zeros folded where
    the product has that constant's shape, and what follows folded.

    keras.ops.take adds the axis length to negative indices, computed as
    where(index < 0, index + length, index); tf2onnx writes that where as
    (index < 0) * (index + length) + (index >= 0) * index. With the index row
    a constant of no negative entries, the first product is zeros, but the
    axis length is only known when the graph runs: this pass sees the zeros.
    """
    shapes = _static_shapes(nodes, folder, model)
    kept = []
    for node in nodes:
        if node.op_type == "Mul" and not node.domain:
            zeros = [
                folder.value(name)
                for name in node.input
                if folder.known(name)
                and np.issubdtype(folder.value(name).dtype, np.integer)
                and not folder.value(name).any()
            ]
            if zeros and shapes.get(node.output[0]) == zeros[0].shape:
                folder.set(node.output[0], np.zeros_like(zeros[0]))
                continue
        if not folder.fold(node):
            kept.append(node)
    return kept


def _without_duplicates(nodes, folder, outputs):
    """The nodes, each value computed once: a node of the op, attributes and
    inputs of an earlier one (small constants compared by value) is dropped
    and what reads its outputs reads that one's. Nothing is merged in a graph
    with subgraphs, or where a graph output would be renamed.

    tf2onnx's own merge runs in its optimizer passes, each of which keeps
    another copy of every constant of the graph, so the export runs none of
    them (`onnx_export._tf2onnx_optimizers`); what is left to merge is
    mostly shape work that the graph repeats.
    """
    if any(
        attribute.g.node or attribute.graphs
        for node in nodes
        for attribute in node.attribute
    ):
        return nodes
    outputs = set(outputs)
    renamed, first_of_value, first_of_node, kept = {}, {}, {}, []

    def first_name(name):
        name = renamed.get(name, name)
        if folder.known(name) and folder.size(name) <= MAX_NEW_CONSTANT:
            value = folder.value(name)
            key = (value.dtype.str, value.shape, value.tobytes())
            return first_of_value.setdefault(key, name)
        return name

    for node in nodes:
        inputs = [first_name(name) if name else name for name in node.input]
        del node.input[:]
        node.input.extend(inputs)
        key = (
            node.domain,
            node.op_type,
            tuple(inputs),
            tuple(attribute.SerializeToString() for attribute in node.attribute),
        )
        if key in first_of_node and not outputs.intersection(node.output):
            renamed.update(zip(node.output, first_of_node[key].output))
            continue
        first_of_node.setdefault(key, node)
        kept.append(node)
    return kept


def _static_shapes(nodes, folder, model):
    """{name: shape tuple} of the nodes' outputs whose shapes ONNX shape
    inference fixes."""
    return {
        name: dims
        for name, dims in _inferred_shapes(nodes, folder, model).items()
        if None not in dims
    }


def _inferred_shapes(nodes, folder, model):
    """{name: shape tuple, None for a dimension it does not fix} of the
    nodes' outputs whose rank ONNX shape inference knows; large constants are
    given to it as typed inputs."""
    graph = model.graph
    used = {name for node in nodes for name in node.input}
    initializers, inputs = [], list(graph.input)
    for name in folder.names():
        if name not in used:
            continue
        value = folder.value(name)
        if value.size <= MAX_NEW_CONSTANT:
            initializers.append(folder.tensor(name))
        else:
            inputs.append(
                helper.make_tensor_value_info(
                    name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape
                )
            )
    inferred = shape_inference.infer_shapes(
        helper.make_model(
            helper.make_graph(
                nodes, "shapes", inputs, list(graph.output), initializers
            ),
            opset_imports=model.opset_import,
        )
    )
    shapes = {}
    for value in inferred.graph.value_info:
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = tuple(
                dim.dim_value if dim.HasField("dim_value") else None
                for dim in value.type.tensor_type.shape.dim
            )
    return shapes


def _live(nodes, outputs):
    """The nodes that the graph outputs depend on, in their order."""
    needed, live = set(outputs), []
    for node in reversed(nodes):
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(_inputs_with_subgraphs(node))
    return live[::-1]


def _inputs_with_subgraphs(node):
    """The node's inputs and the outer names its subgraphs read."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        for graph in (
            [attribute.g, *attribute.graphs]
            if attribute.g.node or attribute.graphs
            else []
        ):
            for inner in graph.node:
                names.extend(_inputs_with_subgraphs(inner))
    return names


def _unrolled(loop, folder, max_iterations):
    """The nodes that replace `loop`, or None if it cannot be written out."""
    body = next(attribute.g for attribute in loop.attribute if attribute.name == "body")
    carried = len(loop.input) - 2
    if len(body.output) != 1 + carried or any(
        attribute.g.node or attribute.graphs
        for node in body.node
        for attribute in node.attribute
    ):
        return None
    trip_count, condition = loop.input[0], loop.input[1]
    if (trip_count and not folder.known(trip_count)) or (
        condition and not folder.known(condition)
    ):
        return None
    max_trips = int(folder.value(trip_count)) if trip_count else None
    running = bool(folder.value(condition)) if condition else True
    prefix = f"{loop.name or loop.output[0]}/unrolled"
    for init in body.initializer:
        folder.set(f"{prefix}/{init.name}", numpy_helper.to_array(init))
    body_constants = {init.name: f"{prefix}/{init.name}" for init in body.initializer}

    current = list(loop.input[2:])
    iterations = []  # per iteration, its nodes that are not folded
    while running and (max_trips is None or len(iterations) < max_trips):
        iteration = len(iterations)
        if iteration >= max_iterations:
            return None
        names = dict(body_constants)
        counter = f"{prefix}{iteration}/iteration"
        folder.set(counter, np.array(iteration, np.int64))
        names[body.input[0].name] = counter
        names[body.input[1].name] = f"{prefix}{iteration}/condition"
        folder.set(names[body.input[1].name], np.array(True))
        for value, name in zip(body.input[2:], current):
            names[value.name] = name
        nodes = []
        for node in body.node:
            copy = helper.make_node(
                node.op_type,
                [names.get(name, name) for name in node.input],
                [f"{prefix}{iteration}/{name}" if name else "" for name in node.output],
                name=f"{prefix}{iteration}/{node.name}",
                domain=node.domain or None,
            )
            copy.attribute.extend(node.attribute)
            names.update(zip(node.output, copy.output))
            if not folder.fold(copy):
                nodes.append(copy)
        stop_name = names.get(body.output[0].name, body.output[0].name)
        if not folder.known(stop_name):
            return None
        running = bool(folder.value(stop_name))
        current = [names.get(value.name, value.name) for value in body.output[1:]]
        iterations.append(nodes)

    nodes = _interleaved(iterations, set(loop.input[2:]) - set(current))
    for output, name in zip(loop.output, current):
        if not output:
            continue
        if folder.known(name):
            folder.set(output, folder.value(name))
        else:
            nodes.append(helper.make_node("Identity", [name], [output]))
    return nodes


def _interleaved(iterations, changing):
    """The iterations' nodes in an order that runs one iteration at a time.

    Each iteration splits into the nodes that do not depend on earlier
    iterations (a tap's Gather and MatMul) and those that do (adding it to
    the running sum). onnxruntime's default order is a depth-first walk back
    from the outputs that follows, at each node, the input made by the node
    listed last first; so the independent part of iteration i + 1 is listed
    before the dependent part of iteration i. Listed in plain iteration order
    the walk would run every tap's Gather and MatMul before the first Add,
    keeping all their outputs alive at once.
    """
    independent, dependent = [], []
    changing = set(changing)
    for nodes in iterations:
        own, carried = [], []
        produced_here = set()
        for node in nodes:
            if any(name in changing or name in produced_here for name in node.input):
                carried.append(node)
                produced_here.update(node.output)
            else:
                own.append(node)
        changing |= produced_here
        independent.append(own)
        dependent.append(carried)
    ordered = list(independent[0]) if independent else []
    for index in range(len(iterations)):
        if index + 1 < len(iterations):
            ordered += independent[index + 1]
        ordered += dependent[index]
    return ordered
