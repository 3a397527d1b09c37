"""Writes out the ONNX Loops whose trip count is known when exporting (the
band conv's tap loops, `tal_keras.layers.band_map_conv`) as plain nodes, and
folds what becomes constant.

tf2onnx turns the band conv's loop over the K * K taps into an ONNX `Loop`
that computes, per tap, the tap's row of the static index table (with
keras.ops.take's negative-index handling: Cast, Less, Not, Mul, Add) before
its Gather and MatMul. Written out with the tap number known, that row and
the tap's kernel slice are constants: what is left per tap is one Gather,
one MatMul and the Add of the running sum.

On request (`taps_per_product` > 1; the export does not ask) the taps of
one layer are then regrouped, G at a time (`_grouped_taps`): per group one
Gather of all its taps' rows and one matrix product with their kernel slices
stacked ([n, G * C] x [G * C, H] when the layer gathers first; [n, C] x
[C, G * H], one Gather and a sum over the G taps when it multiplies first),
so that a layer is a few large products instead of K * K small ones and
K * K running-sum Adds. The sums are the same up to the order of float
additions.

The nodes are emitted so that onnxruntime's default execution order runs the
taps (or groups) one after the other (see `_interleaved`): one tap's
temporaries are alive at a time, as in the Loop.
"""

import numpy as np
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

# A Loop longer than this stays a Loop (the paper config's taps: 81).
MAX_ITERATIONS = 1024
# Taps per matrix product when regrouping is asked for: one kernel row at
# K = 9 (groups of 27 were slower). Not the export's default: at the paper
# config (bench/ort_band_layers.py, one thread, load 3) the four layers took
# 39.4 s of CPU in groups of 9 against 39.6 s tap by tap in float32, and
# 14.1 against 15.1 s in int8 (more under heavy load: one layer 11.1 against
# 18.0 s at load 15), while a group's gathered rows take 9 times one tap's
# memory (paper config, batch 32: 13 GiB against 1.5 GiB).
TAPS_PER_PRODUCT = 9
# Taps are regrouped only where a tap's kernel slice [C, H] holds at least
# this many weights: at the demo config (C = H = 128) groups of 9 took 5 to
# 12 % more CPU time than tap by tap (batch 1 and 32, one thread).
MIN_WEIGHTS_TO_GROUP = 256 * 256
# A constant node output is stored in the file only if it is at most this
# large or no larger than its largest input (no big tensors made from shapes).
MAX_NEW_CONSTANT = 4096
_NOT_FOLDED = {"Loop", "If", "Scan", "SequenceMap"}


def unroll_loops(
    model,
    max_iterations=MAX_ITERATIONS,
    taps_per_product=1,
    min_weights_to_group=MIN_WEIGHTS_TO_GROUP,
):
    """The model with its Loops of a known trip count written out (in place).

    A Loop whose iteration count and stop condition can be computed when
    exporting (from constants only), and that has no scan outputs or nested
    graphs, becomes one copy of its body per iteration; everything computed
    from constants alone (the main graph's and each copy's) is folded into
    initializers. Other Loops are kept, folded inside nothing. A written-out
    Loop of band conv taps (`_tap_term`) whose kernel slices hold at least
    `min_weights_to_group` weights is regrouped into products of
    `taps_per_product` taps (1: tap by tap, as in the Loop).

    Returns:
        (model, number of Loops written out).
    """
    graph = model.graph
    folder = _Folder({init.name: init for init in graph.initializer})
    nodes, written = [], []
    for node in graph.node:
        if node.op_type == "Loop" and not node.domain:
            written_out = _unrolled(node, folder, max_iterations)
            if written_out is not None:
                nodes.extend(written_out[0])
                written.append(written_out[1])
                continue
        if not folder.fold(node):
            nodes.append(node)
    unrolled = len(written)
    if unrolled:
        nodes = _without_zero_products(nodes, folder, model)
    if unrolled and taps_per_product > 1:
        ranks = {
            name: len(dims)
            for name, dims in _inferred_shapes(nodes, folder, model).items()
        }
        opset = next(
            (entry.version for entry in model.opset_import if entry.domain == ""), 0
        )
        for loop in written:
            nodes = _regrouped(
                nodes,
                loop,
                folder,
                ranks,
                opset,
                taps_per_product,
                min_weights_to_group,
            )
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
    """(The nodes that replace `loop`, `_WrittenOut`), or None if it cannot
    be written out."""
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
    carried = []  # per iteration, (carried values before, after)
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
        before = current
        current = [names.get(value.name, value.name) for value in body.output[1:]]
        iterations.append(nodes)
        carried.append((before, current))

    nodes = _interleaved(iterations, set(loop.input[2:]) - set(current))
    for output, name in zip(loop.output, current):
        if not output:
            continue
        if folder.known(name):
            folder.set(output, folder.value(name))
        else:
            nodes.append(helper.make_node("Identity", [name], [output]))
    return nodes, _WrittenOut(prefix, iterations, carried)


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


class _WrittenOut:
    """A Loop as written out: its name prefix, per iteration the nodes left
    unfolded, and per iteration the carried values' names (before, after)."""

    def __init__(self, prefix, iterations, carried):
        self.prefix = prefix
        self.iterations = iterations
        self.carried = carried


def _regrouped(
    nodes, loop, folder, ranks, opset, taps_per_product, min_weights_to_group
):
    """`nodes` with the written-out `loop`'s taps regrouped (`_grouped_taps`)
    in place of its iterations, or unchanged if they are not taps."""
    present = {node.output[0] for node in nodes if node.output}
    iterations = [
        [node for node in iteration if node.output and node.output[0] in present]
        for iteration in loop.iterations
    ]
    groups = _grouped_taps(
        iterations,
        loop.carried,
        folder,
        ranks,
        opset,
        taps_per_product,
        loop.prefix,
        min_weights_to_group,
    )
    if groups is None:
        return nodes
    replaced = {node.output[0] for iteration in iterations for node in iteration}
    first = next(
        index for index, node in enumerate(nodes) if node.output[0] in replaced
    )
    changing = {loop.carried[0][0][index] for index in _running_sums(loop.carried)}
    kept = [node for node in nodes if not node.output or node.output[0] not in replaced]
    before = sum(
        1 for node in nodes[:first] if not node.output or node.output[0] not in replaced
    )
    return kept[:before] + _interleaved(groups, changing) + kept[before:]


def _running_sums(carried):
    """Indices of the carried values that change from iteration to iteration."""
    return [
        index
        for index in range(len(carried[0][0]))
        if any(before[index] != after[index] for before, after in carried)
    ]


def _tap_term(nodes, before, after, folder, ranks):
    """(carried index, order, features, rows, weights) of one written-out tap
    of a band conv layer, or None if the iteration is not one.

    A tap adds one term to one carried running sum: MatMul(Gather(features,
    rows, axis=1), weights) ("gather_first") or Gather(MatMul(features,
    weights), rows, axis=1) ("multiply_first"), the product as tf2onnx writes
    a tensordot (the input flattened to [-1, C] by a constant Reshape, the
    output reshaped back); rows a constant vector, weights a constant
    [C, H] matrix, features [B, n, C] made outside the Loop.
    """
    producers = {name: node for node in nodes for name in node.output}
    changed = [
        index
        for index, (old, new) in enumerate(zip(before, after))
        if old != new and not folder.known(new)
    ]
    if len(changed) != 1:
        return None
    index = changed[0]
    add = producers.get(after[index])
    if (
        add is None
        or add.op_type != "Add"
        or sorted(add.input).count(before[index]) != 1
    ):
        return None
    term = add.input[1] if add.input[0] == before[index] else add.input[0]

    def reshaped_from(name):
        while name in producers and producers[name].op_type == "Reshape":
            name = producers[name].input[0]
        return name

    def constant_rows(node):
        if (
            node is None
            or node.op_type != "Gather"
            or _attribute(node, "axis", 0) != 1
            or not folder.known(node.input[1])
            or folder.value(node.input[1]).ndim != 1
        ):
            return None
        return folder.value(node.input[1])

    def product_of(node):
        """(features, weights) of a MatMul by a constant [C, H] whose input
        is features flattened to [-1, C] (or [B, n, C] itself)."""
        if node is None or node.op_type != "MatMul" or not folder.known(node.input[1]):
            return None
        weights = folder.value(node.input[1])
        if weights.ndim != 2:
            return None
        features = node.input[0]
        flatten = producers.get(features)
        if flatten is not None and flatten.op_type == "Reshape":
            target = flatten.input[1]
            if not folder.known(target) or list(folder.value(target)) != [
                -1,
                weights.shape[0],
            ]:
                return None
            features = flatten.input[0]
        return features, weights

    last = producers.get(reshaped_from(term))
    rows = constant_rows(last)
    if rows is not None:
        product = product_of(producers.get(reshaped_from(last.input[0])))
        order = "multiply_first"
    else:
        product = product_of(last)
        gather = producers.get(product[0]) if product else None
        rows = constant_rows(gather)
        if rows is None:
            return None
        product = (gather.input[0], product[1])
        order = "gather_first"
    if product is None:
        return None
    features, weights = product
    if features in producers or ranks.get(features) != 3:
        return None
    return index, order, features, rows, weights


def _attribute(node, name, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _grouped_taps(
    iterations,
    carried,
    folder,
    ranks,
    opset,
    taps_per_product,
    prefix,
    min_weights_to_group=0,
):
    """The iterations' taps as groups of `taps_per_product` (per group its
    nodes; the last group's sum has the loop's final name), or None if the
    iterations are not all taps of one layer (`_tap_term`).

    gather_first, per group of G taps: Gather(features, rows [n_out, G],
    axis=1) -> [B, n_out, G, C], Reshape -> [B, n_out, G * C], MatMul by the
    stacked kernels [G * C, H], Add to the running sum. multiply_first:
    MatMul(features, [C, G * H]) -> [B, n_in, G * H], Reshape -> [B, n_in * G,
    H], Gather(rows * G + tap) -> [B, n_out, G, H], ReduceSum over the G taps,
    Add.
    """
    terms = [
        _tap_term(nodes, before, after, folder, ranks)
        for nodes, (before, after) in zip(iterations, carried)
    ]
    if not terms or any(term is None for term in terms):
        return None
    index, order, features = terms[0][:3]
    if any(term[:3] != (index, order, features) for term in terms):
        return None
    rows = [term[3] for term in terms]
    weights = [term[4] for term in terms]
    if (
        len({table.shape for table in rows}) != 1
        or len({w.shape for w in weights}) != 1
        or weights[0].size < min_weights_to_group
    ):
        return None
    if order == "multiply_first" and opset < 13:  # ReduceSum's axes as an input
        return None
    total, final = carried[0][0][index], carried[-1][1][index]
    groups = []
    for begin in range(0, len(terms), taps_per_product):
        end = min(begin + taps_per_product, len(terms))
        count = end - begin
        name = f"{prefix}/taps{begin}-{end - 1}"
        output = final if end == len(terms) else f"{name}/sum"
        if order == "gather_first":
            folder.set(f"{name}/rows", np.stack(rows[begin:end], axis=1))
            folder.set(f"{name}/kernel", np.concatenate(weights[begin:end], axis=0))
            folder.set(f"{name}/shape", np.array([0, 0, -1], np.int64))
            nodes = [
                helper.make_node(
                    "Gather",
                    [features, f"{name}/rows"],
                    [f"{name}/gathered"],
                    name=f"{name}/Gather",
                    axis=1,
                ),
                helper.make_node(
                    "Reshape",
                    [f"{name}/gathered", f"{name}/shape"],
                    [f"{name}/flat"],
                    name=f"{name}/Reshape",
                ),
                helper.make_node(
                    "MatMul",
                    [f"{name}/flat", f"{name}/kernel"],
                    [f"{name}/term"],
                    name=f"{name}/MatMul",
                ),
            ]
        else:
            hidden = weights[0].shape[1]
            folder.set(f"{name}/kernel", np.concatenate(weights[begin:end], axis=1))
            folder.set(f"{name}/shape", np.array([0, -1, hidden], np.int64))
            folder.set(
                f"{name}/rows",
                np.stack(
                    [
                        table.astype(np.int64) * count + tap
                        for tap, table in enumerate(rows[begin:end])
                    ],
                    axis=1,
                ),
            )
            folder.set(f"{name}/axes", np.array([2], np.int64))
            nodes = [
                helper.make_node(
                    "MatMul",
                    [features, f"{name}/kernel"],
                    [f"{name}/products"],
                    name=f"{name}/MatMul",
                ),
                helper.make_node(
                    "Reshape",
                    [f"{name}/products", f"{name}/shape"],
                    [f"{name}/per_tap"],
                    name=f"{name}/Reshape",
                ),
                helper.make_node(
                    "Gather",
                    [f"{name}/per_tap", f"{name}/rows"],
                    [f"{name}/gathered"],
                    name=f"{name}/Gather",
                    axis=1,
                ),
                helper.make_node(
                    "ReduceSum",
                    [f"{name}/gathered", f"{name}/axes"],
                    [f"{name}/term"],
                    name=f"{name}/ReduceSum",
                    keepdims=0,
                ),
            ]
        nodes.append(
            helper.make_node(
                "Add", [total, f"{name}/term"], [output], name=f"{name}/Add"
            )
        )
        groups.append(nodes)
        total = output
    return groups
