"""Peak memory of `python -m export.serve` against the number of videos:
results streamed to the output files (the command) against results held
until the end (`export.serve.serve` without a sink, then
`detections.write_submission`: what a caller keeping the `ServeResult`
does).

    python bench/serve_memory.py [--counts 2000,20000] [--folder /tmp/serve_memory]

No TensorFlow: the model is a small ONNX graph written with `onnx.helper`
(a demo-sized lattice, N 64 and scales 16,8,8, P 1,104 proposals; 20
classes; scores from the clip features, so every video gets its own 100
detections and 100 proposals) carrying the metadata `export.onnx_export`
writes. Every video's features are one [38, 32] array (20 s at 15 fps,
stride 8) reached through a symbolic link per video. Each measurement runs
in a fresh process and reads its own peak resident set size
(`resource.getrusage`, ru_maxrss) and CPU seconds (user + system, which
the load of other processes changes less than the wall-clock seconds); one
run per row, on whatever load the machine has (printed).
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NUM_CLIPS, SCALE_LAYERS, FEATURE_DIM, NUM_CLASSES = 64, (16, 8, 8), 32, 20

# Runs in a child: serves the videos of the CSV one way, prints peak RSS (KiB).
CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
from export import serve
mode, model, features, durations, out = sys.argv[1:6]
if mode == "streamed":
    status = serve.main(["--model", model, "--features", features, "--durations",
                         durations, "--out", out, "--no_progress"])
    assert status == 0, status
else:
    from export.detector import Detector
    from tal_keras import detections
    from tal_keras.data.features import open_feature_store
    result = serve.serve(Detector(model), open_feature_store(features),
                         serve.videos_to_serve(durations_csv=durations), progress=False)
    detections.write_submission(out, result.detections)
usage = resource.getrusage(resource.RUSAGE_SELF)
print("PEAK_KIB", usage.ru_maxrss, "CPU_SECONDS", usage.ru_utime + usage.ru_stime)
"""


def write_model(path):
    """A small ONNX graph with the serving contract: clip_features [B, N, D]
    -> overlap_scores [B, P] (sigmoid of the mean feature of the start and
    end clips) and class_scores [B, P, C] (softmax of the start clip times a
    fixed random matrix), with export.metadata's metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export import metadata
    from tal_keras.config import ModelConfig, RunConfig

    model_config = ModelConfig(
        num_clips=NUM_CLIPS,
        scale_layers=SCALE_LAYERS,
        feature_dim=FEATURE_DIM,
        num_classes=NUM_CLASSES,
    )
    lattice = model_config.lattice
    rng = np.random.default_rng(0)
    constants = [
        numpy_helper.from_array(lattice.starts, "starts"),
        numpy_helper.from_array(lattice.ends, "ends"),
        numpy_helper.from_array(
            rng.standard_normal((FEATURE_DIM, NUM_CLASSES)).astype(np.float32),
            "class_weights",
        ),
    ]
    nodes = [
        helper.make_node(
            "ReduceMean", ["clip_features"], ["clip_mean"], axes=[2], keepdims=0
        ),
        helper.make_node("Gather", ["clip_mean", "starts"], ["start_mean"], axis=1),
        helper.make_node("Gather", ["clip_mean", "ends"], ["end_mean"], axis=1),
        helper.make_node("Add", ["start_mean", "end_mean"], ["overlap_logits"]),
        helper.make_node("Sigmoid", ["overlap_logits"], ["overlap_scores"]),
        helper.make_node(
            "Gather", ["clip_features", "starts"], ["start_clips"], axis=1
        ),
        helper.make_node("MatMul", ["start_clips", "class_weights"], ["class_logits"]),
        helper.make_node("Softmax", ["class_logits"], ["class_scores"], axis=-1),
    ]
    P = lattice.num_proposals
    graph = helper.make_graph(
        nodes,
        "serve_memory",
        [
            helper.make_tensor_value_info(
                "clip_features", TensorProto.FLOAT, ["batch", NUM_CLIPS, FEATURE_DIM]
            )
        ],
        [
            helper.make_tensor_value_info(
                "overlap_scores", TensorProto.FLOAT, ["batch", P]
            ),
            helper.make_tensor_value_info(
                "class_scores", TensorProto.FLOAT, ["batch", P, NUM_CLASSES]
            ),
        ],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    class_names = [f"class {index:02d}" for index in range(NUM_CLASSES)]
    values = metadata.build_metadata(
        RunConfig(workdir="", model=model_config),
        class_names,
        "float32",
        {"inputs": "none (benchmark graph)"},
        "bench",
    )
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, path)


def write_videos(folder, count):
    """(features folder, durations CSV) of `count` videos of 20 s."""
    features = os.path.join(folder, f"features_{count}")
    os.makedirs(features, exist_ok=True)
    source = os.path.join(folder, "one_video.npy")
    if not os.path.exists(source):
        rng = np.random.default_rng(1)
        np.save(source, rng.standard_normal((38, FEATURE_DIM)).astype(np.float32))
    rows = ["video_id,duration"]
    for index in range(count):
        video_id = f"video{index:06d}"
        link = os.path.join(features, f"{video_id}.npy")
        if not os.path.lexists(link):
            os.symlink(source, link)
        rows.append(f"{video_id},20.0")
    durations = os.path.join(folder, f"durations_{count}.csv")
    with open(durations, "w") as stream:
        stream.write("\n".join(rows) + "\n")
    return features, durations


def measure(mode, model, features, durations, out):
    """(peak RSS MiB, CPU seconds, seconds, output MiB) of one serve run in a
    fresh process."""
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD.format(root=ROOT),
            mode,
            model,
            features,
            durations,
            out,
        ],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{mode} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    peak = int(result.stdout.split("PEAK_KIB")[-1].split()[0])
    cpu_seconds = float(result.stdout.split("CPU_SECONDS")[-1].split()[0])
    return peak / 1024, cpu_seconds, seconds, os.path.getsize(out) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--counts", default="2000,20000", help="Video counts, comma separated."
    )
    parser.add_argument("--folder", default="/tmp/serve_memory", help="Scratch folder.")
    parser.add_argument(
        "--modes", default="streamed,held", help="streamed and/or held."
    )
    args = parser.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    model = os.path.join(args.folder, "model.onnx")
    write_model(model)
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs")
    print("| videos | results | peak RSS MiB | CPU seconds | seconds | output MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for count in (int(value) for value in args.counts.split(",")):
        features, durations = write_videos(args.folder, count)
        for mode in args.modes.split(","):
            out = os.path.join(args.folder, f"detections_{mode}_{count}.json")
            peak, cpu, seconds, size = measure(mode, model, features, durations, out)
            print(
                f"| {count} | {mode} | {peak:.0f} | {cpu:.0f} | {seconds:.0f} | {size:.0f} |",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
