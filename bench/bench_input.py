"""The input side at HACS scale: clip cache build and input pipeline.

    python bench/bench_input.py --out /work/tmp/bench_input [--feature_dim 128]
        [--formats npy,hdf5] [--workers 4] [--direct_videos 400]
        [--resume_check] [--pipeline_batches 400] [--keep]
    python bench/bench_input.py --out DIR --small      # seconds: the CI check

Makes a dataset with HACS's counts (37,613 training and 5,981 validation
videos) whose timing (durations, segments, subsets) is the shipped real
ActivityNet annotation file (`tal_keras/data/timing/`) tiled to those counts,
at a reduced feature width D that fits the disk, with the benchmark
generator (`tal_keras.data.benchmarks`, the "boundary" family), in .npy files
and in one HDF5 file. Then, each in a process of its own so that its peak
RSS is its own:

- builds the float16 clip cache of both subsets at N 256, scales 64,32,32
  (`build_or_open_cache`, as train.py does) with the feature files evicted
  from the page cache first: seconds, videos/s, CPU seconds per video, peak
  RSS, cache size;
- with --resume_check, kills (SIGKILL) a build of the training cache halfway
  and runs it again: where it resumed, how long the rest took, and whether
  the finished cache equals the uninterrupted one;
- reads the float16 training cache as training does (`make_dataset`,
  shuffled, batch 32, targets max_iou), from the page cache evicted first
  ("cold") and again ("warm"): videos/s delivered;
- with --direct_videos, does the same on that many training videos at
  D 2304 itself, the check on the extrapolation.

Every rate is extrapolated to D 2304 by bytes: rate x bytes per video at D /
bytes per video at D 2304, where a video's bytes are those read and written
(build: its feature steps, float32, plus its cache row: clips at the cache's
dtype and the max_iou and classes targets; pipeline: its cache row and the
float32 clips delivered). Costs that do not grow with D (the targets, per-video
overheads) are scaled up with the rest, so the extrapolation is pessimistic.
The machine's load average is printed beside every table; on a shared
machine the CPU seconds per video say more than the wall time.

Generated files live under --out (never in the repository) and are deleted
at the end unless --keep.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

# Runnable from a checkout without installing the package.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tal_keras.clips import HACS_TIMING
from tal_keras.data import benchmarks
from tal_keras.lattice import Lattice

HACS_TRAINING_VIDEOS = 37613
HACS_VALIDATION_VIDEOS = 5981
PAPER_FEATURE_DIM = 2304
NUM_CLIPS = 256
SCALE_LAYERS = (64, 32, 32)
BATCH_SIZE = 32
CACHE_DTYPE = "float16"
SUBSETS = ("training", "validation")


def read_json(path):
    with open(path) as stream:
        return json.load(stream)


def load_average():
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def write_tiled_timing(path, num_training, num_validation):
    """An ActivityNet-style file of `num_training` and `num_validation`
    videos: the shipped timing file's videos of each subset, repeated in
    turn (ids ID-000, ID-001, ...)."""
    database = benchmarks.read_timing(benchmarks.DEFAULT_TIMING)
    usable = sorted(
        video_id
        for video_id, entry in database.items()
        if entry.get("annotations") and float(entry["duration"]) > 0
    )
    tiled = {}
    for subset, count in (("training", num_training), ("validation", num_validation)):
        members = [
            video_id for video_id in usable if database[video_id]["subset"] == subset
        ]
        for index in range(count):
            source = members[index % len(members)]
            tiled[f"{source}-{index // len(members):03d}"] = database[source]
    with open(path, "w") as stream:
        json.dump({"database": tiled}, stream)
    durations = [float(entry["duration"]) for entry in tiled.values()]
    return float(np.mean([HACS_TIMING.num_steps(d) for d in durations]))


def generate(out, name, feature_dim, format, num_training, num_validation):
    """Writes the dataset OUT/NAME; returns (its folder, seconds, mean steps)."""
    timing = os.path.join(out, f"{name}-timing.json")
    mean_steps = write_tiled_timing(timing, num_training, num_validation)
    folder = os.path.join(out, name)
    started = time.perf_counter()
    benchmarks.generate(
        folder,
        "boundary",
        timing_path=timing,
        feature_dim=feature_dim,
        format=format,
        overwrite=True,
    )
    return folder, time.perf_counter() - started, mean_steps


def evict(paths):
    """Drops the files under `paths` from the page cache (written back
    first), so that the next read comes from the disk."""
    for top in paths:
        walk = [(top, [], [""])] if os.path.isfile(top) else os.walk(top)
        for folder, _, names in walk:
            for name in names:
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    handle = os.open(path, os.O_RDONLY)
                    try:
                        os.fdatasync(handle)  # dirty pages would stay cached
                        os.posix_fadvise(handle, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(handle)


def folder_bytes(folder):
    return sum(
        os.path.getsize(os.path.join(top, name))
        for top, _, names in os.walk(folder)
        for name in names
    )


def memory_status():
    """{"peak_rss", "rss_anon", "rss_file"} bytes of this process: the peak
    resident set since it started (VmHWM; ru_maxrss would also count the
    parent's pages at the fork), and now its private and file-backed parts
    (the pages of memory-mapped files count in RSS but are the page cache's,
    dropped under memory pressure)."""
    fields = {"VmHWM": "peak_rss", "RssAnon": "rss_anon", "RssFile": "rss_file"}
    status = {}
    with open("/proc/self/status") as stream:
        for line in stream:
            name, _, value = line.partition(":")
            if name in fields:
                status[fields[name]] = int(value.split()[0]) * 1024
    return status


def cpu_seconds():
    return time.process_time()  # user + system, all threads


def run_child(*args, timeout=7200):
    """Runs this script's child mode with `args`; returns its JSON line."""
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    if result.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child_build(dataset, cache_root, workers, subsets):
    """Child mode: builds the caches of `subsets`; prints one JSON line."""
    from tal_keras.data.annotations import load_annotations
    from tal_keras.data.cache import build_or_open_cache
    from tal_keras.data.features import open_feature_store

    annotations_path, features, classes = benchmarks.dataset_paths(
        dataset,
        "hdf5" if os.path.exists(os.path.join(dataset, "features.h5")) else "npy",
    )
    lattice = Lattice(NUM_CLIPS, SCALE_LAYERS)
    store = open_feature_store(features)
    feature_dim = read_json(os.path.join(dataset, benchmarks.PARAMETERS_FILE))[
        "feature_dim"
    ]
    report = {}
    for subset in subsets:
        annotations = load_annotations(
            annotations_path, subset=subset, category_file=classes
        )
        cpu, started = cpu_seconds(), time.perf_counter()
        cache = build_or_open_cache(
            cache_root,
            subset,
            annotations,
            store,
            lattice,
            HACS_TIMING,
            feature_dim,
            dtype=CACHE_DTYPE,
            num_workers=workers,
        )
        report[subset] = {
            "videos": len(cache),
            "seconds": time.perf_counter() - started,
            "cpu_seconds": cpu_seconds() - cpu,
            "folder": cache.folder,
            "bytes": folder_bytes(cache.folder),
        }
    report.update(memory_status())
    print(json.dumps(report))


def child_pipeline(cache_folder, max_batches):
    """Child mode: two shuffled passes (at most `max_batches` batches each)
    over a float16 cache as training reads it, the first with the cache
    evicted from the page cache ("cold"), the second right after ("warm");
    prints one JSON line."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from tal_keras import pipeline
    from tal_keras.data.cache import ClipCache

    cache = ClipCache(cache_folder)
    dataset = pipeline.make_dataset(
        cache, "max_iou", BATCH_SIZE, shuffle=True, seed=0
    ).take(max_batches)
    report = {}
    for kind in ("cold", "warm"):
        if kind == "cold":
            evict([cache_folder])
        batches = iter(dataset)
        started = time.perf_counter()
        next(batches)  # the first batch starts the pipeline's threads
        first = time.perf_counter() - started
        videos, cpu, started = 0, cpu_seconds(), time.perf_counter()
        for _, targets in batches:
            # Real videos only: the last batch is padded (pipeline.PADDING).
            videos += int(np.sum(np.max(targets, axis=1) >= 0))
        report[kind] = {
            "videos": videos,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": cpu_seconds() - cpu,
            "first_batch_seconds": first,
        }
    report.update(memory_status())
    print(json.dumps(report))


def build_bytes(feature_dim, mean_steps, num_proposals):
    """Bytes read and written per video by the cache build at width D."""
    return (
        mean_steps * feature_dim * 4
        + NUM_CLIPS * feature_dim * np.dtype(CACHE_DTYPE).itemsize
        + num_proposals * (4 + 2)
    )


def pipeline_bytes(feature_dim, num_proposals):
    """Bytes read and delivered per video by the input pipeline at width D."""
    clips = NUM_CLIPS * feature_dim
    return clips * np.dtype(CACHE_DTYPE).itemsize + clips * 4 + 2 * num_proposals * 4


def cache_row_bytes(feature_dim, num_proposals):
    return NUM_CLIPS * feature_dim * np.dtype(CACHE_DTYPE).itemsize + num_proposals * 6


def measure_build(dataset, root, workers, subsets=SUBSETS):
    evict([dataset])
    return run_child("--child_build", dataset, root, workers, ",".join(subsets))


def resume_check(dataset, root, workers, reference):
    """Kills a training-cache build halfway, runs it again; returns a row."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child_build",
        dataset,
        root,
        workers,
        "training",
    ]
    evict([dataset])
    started = time.perf_counter()
    builder = subprocess.Popen(
        list(map(str, command)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    half = reference["training"]["videos"] // 2
    done = 0
    while builder.poll() is None:
        progress = (
            [
                os.path.join(root, name, "progress.json")
                for name in os.listdir(root)
                if name.endswith(".building")
            ]
            if os.path.isdir(root)
            else []
        )
        with contextlib.suppress(OSError, ValueError, IndexError):
            done = read_json(progress[0])["videos_done"]
        if done >= half:
            builder.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    builder.wait()
    killed_after = time.perf_counter() - started
    resumed = run_child(*command[2:])["training"]
    same = compare_caches(reference["training"]["folder"], resumed["folder"])
    return {
        "killed_at": done,
        "killed_after": killed_after,
        "rest_seconds": resumed["seconds"],
        "videos": resumed["videos"],
        "same": same,
        "killed": builder.returncode == -signal.SIGKILL,
    }


def compare_caches(first, second):
    """Whether two caches hold the same index and arrays (read in blocks)."""
    with (
        open(os.path.join(first, "index.json")) as a,
        open(os.path.join(second, "index.json")) as b,
    ):
        if json.load(a) != json.load(b):
            return False
    for name in ("clips", "max_iou", "classes"):
        left = np.load(os.path.join(first, f"{name}.npy"), mmap_mode="r")
        right = np.load(os.path.join(second, f"{name}.npy"), mmap_mode="r")
        if left.shape != right.shape:
            return False
        for start in range(0, len(left), 1024):
            if not np.array_equal(
                left[start : start + 1024], right[start : start + 1024]
            ):
                return False
    return True


def measure_pipeline(cache_folder, max_batches):
    """(cold, warm) rows, each with the child's memory status."""
    report = run_child("--child_pipeline", cache_folder, max_batches)
    memory = {name: report[name] for name in ("peak_rss", "rss_anon", "rss_file")}
    return {**report["cold"], **memory}, {**report["warm"], **memory}


def gib(value):
    return f"{value / 2**30:.2f} GiB"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", help="folder for the generated data (outside the repository)"
    )
    parser.add_argument("--feature_dim", type=int, default=128)
    parser.add_argument("--formats", default="npy,hdf5")
    parser.add_argument("--workers", type=int, default=4, help="cache build threads")
    parser.add_argument("--training_videos", type=int, default=HACS_TRAINING_VIDEOS)
    parser.add_argument("--validation_videos", type=int, default=HACS_VALIDATION_VIDEOS)
    parser.add_argument(
        "--direct_videos",
        type=int,
        default=0,
        help="also measure this many training videos at D 2304 itself",
    )
    parser.add_argument("--resume_check", action="store_true")
    parser.add_argument(
        "--pipeline_batches", type=int, default=400, help="batches of 32 timed"
    )
    parser.add_argument("--small", action="store_true", help="a seconds-long run (CI)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child_build", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child_pipeline", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_build:
        dataset, root, workers, subsets = args.child_build
        return child_build(dataset, root, int(workers), subsets.split(","))
    if args.child_pipeline:
        return child_pipeline(args.child_pipeline[0], int(args.child_pipeline[1]))
    if not args.out:
        parser.error("--out is required")
    if os.path.abspath(args.out).startswith(REPO + os.sep):
        parser.error("--out must be outside the repository")
    if args.small:
        args.training_videos, args.validation_videos = 48, 16
        args.feature_dim, args.pipeline_batches = 8, 2
        args.direct_videos = min(args.direct_videos, 16)
    os.makedirs(args.out, exist_ok=True)
    num_proposals = Lattice(NUM_CLIPS, SCALE_LAYERS).num_proposals
    try:
        results = run_benchmark(args, num_proposals)
    finally:
        if not args.keep:
            for name in os.listdir(args.out):
                path = os.path.join(args.out, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
    print_tables(results, num_proposals)
    return results


def run_benchmark(args, num_proposals):
    results = {"builds": [], "pipelines": [], "resume": None, "generation": []}
    widths = [(args.feature_dim, args.training_videos, args.validation_videos)]
    if args.direct_videos:
        widths.append((PAPER_FEATURE_DIM, args.direct_videos, 0))
    for feature_dim, num_training, num_validation in widths:
        formats = (
            args.formats.split(",") if feature_dim == args.feature_dim else ["npy"]
        )
        for format in formats:
            name = f"d{feature_dim}-{format}"
            dataset, seconds, mean_steps = generate(
                args.out, name, feature_dim, format, num_training, num_validation
            )
            results["generation"].append(
                {
                    "name": name,
                    "seconds": seconds,
                    "bytes": folder_bytes(dataset),
                    "load": load_average(),
                }
            )
            subsets = SUBSETS if num_validation else ("training",)
            root = os.path.join(args.out, f"cache-{name}")
            build = measure_build(dataset, root, args.workers, subsets)
            build.update(
                name=name,
                feature_dim=feature_dim,
                format=format,
                mean_steps=mean_steps,
                load=load_average(),
            )
            results["builds"].append(build)
            if format == "npy":
                if args.resume_check and feature_dim == args.feature_dim:
                    results["resume"] = resume_check(
                        dataset,
                        os.path.join(args.out, f"resume-{name}"),
                        args.workers,
                        build,
                    )
                    results["resume"]["load"] = load_average()
                cold, warm = measure_pipeline(
                    build["training"]["folder"], args.pipeline_batches
                )
                for kind, row in (("cold", cold), ("warm", warm)):
                    row.update(
                        name=name,
                        feature_dim=feature_dim,
                        kind=kind,
                        load=load_average(),
                    )
                    results["pipelines"].append(row)
            shutil.rmtree(dataset, ignore_errors=True)
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    return results


def print_tables(results, num_proposals):
    print(f"\nload average at the end: {load_average()} ({os.cpu_count()} CPUs)")
    print("\nDataset generation (benchmarks.generate, boundary family)\n")
    print("| dataset | seconds | size | load average |")
    print("| --- | ---: | ---: | --- |")
    for row in results["generation"]:
        print(
            f"| {row['name']} | {row['seconds']:.0f} | {gib(row['bytes'])} | {row['load']} |"
        )
    print(
        f"\nCache build (N {NUM_CLIPS}, scales {','.join(map(str, SCALE_LAYERS))}, "
        f"{CACHE_DTYPE}; feature files evicted from the page cache first)\n"
    )
    print(
        "| dataset | subset | videos | seconds | videos/s | CPU ms/video | "
        "videos/s at D 2304 (by bytes) | cache size | cache at D 2304 | "
        "peak RSS | RSS anon / file at the end | load average |"
    )
    print(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    for build in results["builds"]:
        scale = build_bytes(
            build["feature_dim"], build["mean_steps"], num_proposals
        ) / (build_bytes(PAPER_FEATURE_DIM, build["mean_steps"], num_proposals))
        row_scale = cache_row_bytes(PAPER_FEATURE_DIM, num_proposals) / cache_row_bytes(
            build["feature_dim"], num_proposals
        )
        for subset in SUBSETS:
            if subset not in build:
                continue
            part = build[subset]
            rate = part["videos"] / part["seconds"]
            print(
                f"| {build['name']} | {subset} | {part['videos']} | {part['seconds']:.1f} "
                f"| {rate:.1f} | {1000 * part['cpu_seconds'] / part['videos']:.1f} "
                f"| {rate * scale:.1f} | {gib(part['bytes'])} "
                f"| {gib(part['bytes'] * row_scale)} | {gib(build['peak_rss'])} "
                f"| {gib(build['rss_anon'])} / {gib(build['rss_file'])} | {build['load']} |"
            )
    resume = results["resume"]
    if resume:
        print("\nA training-cache build killed (SIGKILL) halfway, then run again\n")
        print(
            "| killed at video | killed after s | rest took s | videos | "
            "equals the uninterrupted cache | load average |"
        )
        print("| ---: | ---: | ---: | ---: | --- | --- |")
        print(
            f"| {resume['killed_at']} | {resume['killed_after']:.1f} "
            f"| {resume['rest_seconds']:.1f} | {resume['videos']} "
            f"| {'yes' if resume['same'] else 'NO'} | {resume['load']} |"
        )
    print(
        f"\nInput pipeline (make_dataset, shuffled, batch {BATCH_SIZE}, max_iou, "
        f"memory-mapped {CACHE_DTYPE} training cache; cold: page cache evicted first)\n"
    )
    print(
        "| dataset | read | videos | seconds | videos/s | videos/s at D 2304 (by bytes) "
        "| first batch s | peak RSS | RSS anon / file at the end | load average |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in results["pipelines"]:
        rate = row["videos"] / row["seconds"]
        scale = pipeline_bytes(row["feature_dim"], num_proposals) / pipeline_bytes(
            PAPER_FEATURE_DIM, num_proposals
        )
        print(
            f"| {row['name']} | {row['kind']} | {row['videos']} | {row['seconds']:.1f} "
            f"| {rate:.0f} | {rate * scale:.0f} | {row['first_batch_seconds']:.2f} "
            f"| {gib(row['peak_rss'])} | {gib(row['rss_anon'])} / {gib(row['rss_file'])} "
            f"| {row['load']} |"
        )


if __name__ == "__main__":
    main()
