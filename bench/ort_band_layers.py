"""The paper config's band conv (N 256, scales 64,32,32, H 512, K 9, L 4) in
onnxruntime, layer by layer, in the forms the export can write
(`band_map_conv.taps_written_out`): the frequency form (`frequency`: tiles
of --tile cells a side, default `MapBand.frequency_tile`'s choice, in the
export's groups of tiles; the export's default form at the paper config),
tap by tap in blocks of output rows (`blocks`: one Gather, MatMul and Add
per tap and block, in the layer's cheaper order, blocks of
`export.onnx_export.TAP_BLOCK_BYTES`), tap by tap over the whole band
(`taps`: `tap_block_bytes=0`), and grouped (gather first,
--taps_per_product taps per product, the form the export takes where a
group's gathered rows fit its budget), float32 and int8
(`export.onnx_export.to_int8`), against the Keras layer (`BandMapConv`,
TensorFlow) on the same batch.

    python bench/ort_band_layers.py [--hidden 512] [--runs 1] [--threads 1]
        [--forms frequency,blocks,taps,grouped,blocks-int8,taps-int8,grouped-int8]
        [--tile T]
        [--taps_per_product 9] [--keras]

Each layer's graph is the layer (`band_map_conv.band_layer`: its taps,
bias, ReLU and mask step) with random weights, traced and converted as the
export does it (`export.onnx_export.traced_graph`), without the rest of the
model, fed [1, n_in + 1, H] random features. The table gives the
median wall and CPU seconds of --runs calls after one warm-up, per layer and
summed; with --keras, one call of the Keras layer on [1, P, H] (all four
layers) is timed the same way. The band conv is about 99 % of the paper
config's multiply-adds.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tal_keras.lattice import Lattice
from tal_keras.map_band import MapBand

FORMS = (
    "frequency",
    "blocks",
    "taps",
    "grouped",
    "blocks-int8",
    "taps-int8",
    "grouped-int8",
)


def layer_graph(band, layer, weights, form, taps_per_product, tile):
    """onnx.ModelProto of band conv layer `layer` (1-based; bias 0, then ReLU
    and the mask step) traced as the export traces it
    (`export.onnx_export.traced_graph`): features [B, n_in + 1, C], last row
    zero -> [B, n_out + 1, H]. `form` (float32 part of FORMS): its taps in
    groups of `taps_per_product` ("grouped": gather first; the group budget
    `band_map_conv.taps_written_out` gets is sized for that many), or one by
    one in the layer's cheaper order, in the export's blocks of rows
    ("blocks") or over the whole band ("taps"), or in the frequency form with
    tiles of `tile` cells a side ("frequency")."""
    import keras
    from keras import ops

    from export.onnx_export import (
        DEFAULT_OPSET,
        GROUPED_TAP_BYTES,
        TAP_BLOCK_BYTES,
        traced_graph,
    )
    from tal_keras.layers.band_map_conv import band_layer

    index = layer - 1
    channels, hidden = weights.shape[1:]

    def conv_layer(features):
        return band_layer(
            features,
            ops.convert_to_tensor(weights),
            ops.zeros((hidden,)),
            ops.convert_to_tensor(band.mask_weights[index]),
            band.forward_index[index],
            band.backward_index[index],
            band.gather_first[index],
            band.frequency_tiles(layer, tile) if form == "frequency" else None,
        )

    input_shape = (band.band_sizes[index] + 1, channels)
    features = keras.Input(input_shape)
    model = keras.Model(features, keras.layers.Lambda(conv_layer)(features))
    output_rows = band.forward_index[index].shape[1]
    group = taps_per_product if form == "grouped" else 1
    group_bytes = group * output_rows * channels * 4
    if form == "frequency":  # tiles in the export's groups
        group_bytes = GROUPED_TAP_BYTES
    return traced_graph(
        model,
        {"features": input_shape},
        DEFAULT_OPSET,
        grouped_tap_bytes=group_bytes,
        tap_block_bytes=TAP_BLOCK_BYTES if form == "blocks" else 0,
        frequency_tile=tile if form == "frequency" else 0,
    )


def timed(function, runs):
    """(median wall seconds, median CPU seconds) of `runs` calls after a warm-up."""
    function()
    walls, cpus = [], []
    for _ in range(runs):
        begin, cpu_begin = time.perf_counter(), time.process_time()
        function()
        cpus.append(time.process_time() - cpu_begin)
        walls.append(time.perf_counter() - begin)
    return statistics.median(walls), statistics.median(cpus)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="0: default.")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--keras", action="store_true", help="Time the Keras layer.")
    parser.add_argument(
        "--taps_per_product",
        type=int,
        default=9,
        help="Taps per group (grouped forms).",
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="Output cells per tile side (frequency; default the export's choice).",
    )
    args = parser.parse_args(argv)
    import onnxruntime as ort
    import tensorflow as tf

    if args.threads:  # Keras' layer, and TensorFlow tracing the graphs
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from export.detector import session_options
    from export.onnx_export import to_int8

    forms = args.forms.split(",")
    band = MapBand(Lattice(256, (64, 32, 32)), 9, 4)
    tile = args.tile or band.frequency_tile(args.hidden, args.hidden)
    rng = np.random.default_rng(0)
    scale = 1 / np.sqrt(81 * args.hidden)
    rows, totals = [], dict.fromkeys(forms, (0.0, 0.0))
    for layer in range(1, 5):
        weights = (scale * rng.standard_normal((81, args.hidden, args.hidden))).astype(
            np.float32
        )
        features = rng.standard_normal(
            (1, band.band_sizes[layer - 1] + 1, args.hidden), dtype=np.float32
        )
        outputs = {}
        for form in forms:
            graph = layer_graph(
                band,
                layer,
                weights,
                form.removesuffix("-int8"),
                args.taps_per_product,
                tile,
            )
            if form.endswith("int8"):
                graph = to_int8(graph)
            options = session_options()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(
                graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            outputs[form] = session.run(None, {"features": features})[0]
            wall, cpu = timed(
                lambda session=session, feeds={"features": features}: session.run(
                    None, feeds
                ),
                args.runs,
            )
            totals[form] = (totals[form][0] + wall, totals[form][1] + cpu)
            difference = float(np.abs(outputs[form] - outputs[forms[0]]).max())
            scale_of = float(np.abs(outputs[forms[0]]).max())
            rows.append(
                [
                    str(layer),
                    "gather first"
                    if band.gather_first[layer - 1]
                    else "multiply first",
                    form,
                    f"{wall:.2f}",
                    f"{cpu:.2f}",
                    f"{difference:.1e} (of {scale_of:.1f})",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
        del outputs
    for form, (wall, cpu) in totals.items():
        rows.append(["1-4", "", form, f"{wall:.2f}", f"{cpu:.2f}", ""])
    if args.keras:
        import keras

        from tal_keras.layers.band_map_conv import BandMapConv

        keras.utils.set_random_seed(0)
        conv = BandMapConv(256, (64, 32, 32), hidden_size=args.hidden)
        proposals = rng.standard_normal(
            (1, band.band_sizes[0], args.hidden), dtype=np.float32
        )
        conv(proposals)
        wall, cpu = timed(lambda: conv(proposals), args.runs)
        rows.append(
            ["1-4", "", "Keras (TF), bias, ReLU, mask", f"{wall:.2f}", f"{cpu:.2f}", ""]
        )
    header = ["layer", "order", "form", "wall s", "CPU s", "max |diff| vs first form"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"\nbatch 1, H {args.hidden}, {args.runs} timed call(s) after one warm-up, "
        f"intra-op threads {args.threads or 'default'}; load average {load} "
        f"({os.cpu_count()} CPUs)."
    )


if __name__ == "__main__":
    main()
