"""Batch inference with an exported model: raw features -> an ActivityNet
detection file, with numpy and onnxruntime only (no TensorFlow).

    python -m export.serve --model runs/demo/s2dtan.onnx \
        --features data/synthetic/features \
        --annotations data/synthetic/annotations.json --subset validation \
        --out detections.json [--proposals_out proposals.json] [--batch_size 32]

The videos are those of `--subset` in `--annotations` ("all" for every
subset), or the rows of `--durations` (a CSV of video_id,duration; its first
row is a header only when it reads `video_id,duration`) alone. Durations
come from the annotations, or from the CSV where it lists the video. A video
that cannot be served (no duration, features missing, unreadable, empty, of
the wrong width or not finite) is skipped with one line giving its reason;
the others are served. Results go to the output files as each batch is
done, so memory does not grow with the number of videos; the files are
temporaries renamed into place only when every video is through, all or
none (and checked to be writable before any work). An output inside a run
folder holds that folder's lock shared (`tal_keras.run.RunFolder.lock`), so
that no train.py or evaluate.py starts there meanwhile. Exit status: 0 when
at least one video was served, 1 when none was, 2 on a usage error (bad
model, annotation or feature path, an output that cannot be written), 130
on Ctrl-C or SIGTERM (nothing written).
"""

import argparse
import concurrent.futures
import contextlib
import csv
import dataclasses
import json
import logging
import os
import sys
import time

import numpy as np

from export import metadata
from export.detector import Detector
from tal_keras import detections
from tal_keras.data.annotations import finite_number, read_database
from tal_keras.errors import DataError, OutputError

logger = logging.getLogger("tal_keras")

ALL_SUBSETS = "all"


@dataclasses.dataclass(frozen=True)
class Video:
    """One video to serve: its id and duration in seconds, or why it has none."""

    video_id: str
    duration: float = None
    problem: str = None


@dataclasses.dataclass
class ServeResult:
    """What `serve` produced.

    Attributes:
        detections: {video_id: [{"label", "score", "segment"}]}, empty when
            the results went to a `sink`.
        proposals: {video_id: [{"score", "segment"}]}, the same.
        skipped: [(video_id, reason)], in input order.
        seconds: {"loading", "inference", "postprocessing", "total"}; loading
            counts only the time spent waiting for features.
        length_warnings: [(video_id, message)] of served videos whose feature
            length does not quite fit their duration.
        num_served: videos served.
    """

    detections: dict
    proposals: dict
    skipped: list
    seconds: dict
    length_warnings: list = dataclasses.field(default_factory=list)
    num_served: int = 0


class SubmissionStream:
    """An ActivityNet submission file written one video at a time, so that
    nothing of the earlier videos stays in memory: the same text as
    `json.dumps(detections.submission(results))`.

    Args:
        stream: a text file open for writing (a temporary of `path`).
        path: the file the stream will become, named in errors.
    """

    def __init__(self, stream, path):
        self.stream = stream
        self.path = path
        self.num_videos = 0
        self._write(
            f'{{"version": {json.dumps(detections.DEFAULT_VERSION)}, "results": {{'
        )

    def add(self, video_id, entries):
        """Appends one video's entries (`detections.submission` checks them)."""
        video = json.dumps(detections.submission({video_id: entries})["results"])
        self._write((", " if self.num_videos else "") + video[1:-1])
        self.num_videos += 1

    def finish(self):
        """Ends the JSON and puts the text on disk (before the rename)."""
        self._write('}, "external_data": {}}')
        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
        except OSError as error:
            raise self._error(error) from error

    def _write(self, text):
        try:
            self.stream.write(text)
        except OSError as error:
            raise self._error(error) from error

    def _error(self, error):
        return OutputError(f"{self.path}: cannot write it: {error.strerror or error}")


def _positive_seconds(value):
    """float(value) if it is a positive finite number (or numeric string), else None."""
    seconds = finite_number(value)
    return seconds if seconds is not None and seconds > 0 else None


def read_annotation_videos(path, subset):
    """The videos of `subset` ("all": every subset) of an ActivityNet-style
    JSON, sorted by id, each with its duration or the reason it has none.

    Only durations are read; labels and segments are not needed to serve, and
    one malformed entry does not stop the others.

    Raises:
        DataError: unreadable file, no "database", or no video of `subset`.
    """
    database = read_database(path, "annotations")
    videos, subsets = [], set()
    for video_id in sorted(database):
        entry = database[video_id]
        entry_subset = entry.get("subset") if isinstance(entry, dict) else None
        subsets.add(str(entry_subset))
        if subset != ALL_SUBSETS and entry_subset != subset:
            continue
        duration = _positive_seconds(
            entry.get("duration") if isinstance(entry, dict) else None
        )
        if duration is None:
            found = entry.get("duration") if isinstance(entry, dict) else entry
            videos.append(
                Video(
                    str(video_id),
                    problem=f"no duration in {path} (found {found!r}, expected "
                    "a positive number of seconds)",
                )
            )
        else:
            videos.append(Video(str(video_id), duration))
    if not videos:
        raise DataError(
            f"{path}: no video of subset {subset!r}; the file has subsets "
            f"{sorted(subsets)} (or pass --subset {ALL_SUBSETS})."
        )
    return videos


# The one first row of a durations CSV that is a header, not a video.
DURATIONS_HEADER = ("video_id", "duration")


def read_durations_csv(path):
    """{video_id: Video} of a CSV of `video_id,duration` rows, in file
    order. The first row is a header only when it reads `video_id,duration`
    (any case); any other row is a video, and one whose duration is not a
    positive number of seconds gets a problem naming the line (it is
    skipped and counted, wherever it is).

    Raises:
        DataError: unreadable file or a row without two fields.
    """
    videos = {}
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            for line, row in enumerate(csv.reader(stream), start=1):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 2:
                    raise DataError(
                        f"{path}: line {line}: expected video_id,duration, got {row!r}."
                    )
                video_id, value = row[0].strip(), row[1].strip()
                if line == 1 and (video_id.lower(), value.lower()) == DURATIONS_HEADER:
                    continue
                seconds = _positive_seconds(value)
                videos[video_id] = (
                    Video(video_id, seconds)
                    if seconds is not None
                    else Video(
                        video_id,
                        problem=f"no duration: {path}: line {line}: duration "
                        f"{value!r} is not a positive number of seconds",
                    )
                )
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the durations: {error}") from None
    return videos


def videos_to_serve(annotations=None, subset="validation", durations_csv=None):
    """[Video] from the annotations' subset, durations from the CSV where it
    lists the video; or the CSV's rows alone without annotations."""
    if annotations is None and durations_csv is None:
        raise ValueError("need --annotations or --durations to know the videos.")
    durations = read_durations_csv(durations_csv) if durations_csv else {}
    if annotations is None:
        return list(durations.values())
    return [
        durations.get(video.video_id, video)
        for video in read_annotation_videos(annotations, subset)
    ]


def serve(
    detector,
    store,
    videos,
    batch_size=32,
    video_labels=None,
    num_workers=2,
    progress=True,
    sink=None,
):
    """Detections and proposals of `videos`, in batches.

    Args:
        detector: a `Detector`.
        store: a feature store (`tal_keras.data.features.open_feature_store`).
        videos: [Video].
        batch_size: videos per onnxruntime call.
        video_labels: optional {video_id: [(label, score)]} fused into detections.
        num_workers: threads loading and resampling features while the model runs.
        progress: show a progress bar on stderr.
        sink: optional function(video_id, detections, proposals) called for
            each served video as its batch is done (e.g. writing it out);
            None: the results are kept in the `ServeResult`.

    Returns:
        `ServeResult`. Each skipped video is logged with its reason.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    video_labels = video_labels or {}
    feature_dim = detector.spec.feature_dim
    result = ServeResult(
        {}, {}, [], dict.fromkeys(("loading", "inference", "postprocessing"), 0.0)
    )
    started = time.perf_counter()

    def prepare(video):
        if video.problem is not None:
            return video, None, video.problem
        try:
            features = store.load(
                video.video_id,
                feature_dim,
                duration=video.duration,
                timing=detector.spec.timing,
            )
            warnings = []
            clips = detector.clip_features(
                features, video.duration, video.video_id, length_warnings=warnings
            )
        except (DataError, ValueError) as error:
            return video, None, str(error)
        for _, message in warnings:
            logger.warning("%s: %s", store.path_of(video.video_id), message)
        result.length_warnings.extend(warnings)
        return video, clips, None

    chunks = [
        videos[begin : begin + batch_size]
        for begin in range(0, len(videos), batch_size)
    ]
    with (
        concurrent.futures.ThreadPoolExecutor(num_workers) as pool,
        logging_redirect_tqdm(loggers=[logger]),
        # disable=None: a bar on a terminal only.
        tqdm(
            total=len(videos), unit="video", disable=None if progress else True
        ) as bar,
    ):
        pending = [pool.submit(prepare, video) for video in chunks[0]] if chunks else []
        for index in range(len(chunks)):
            waited = time.perf_counter()
            prepared = [future.result() for future in pending]
            result.seconds["loading"] += time.perf_counter() - waited
            # Load the next batch while this one runs.
            following = chunks[index + 1] if index + 1 < len(chunks) else []
            pending = [pool.submit(prepare, video) for video in following]
            ready = []
            for video, clips, reason in prepared:
                if reason is None:
                    ready.append((video, clips))
                else:
                    logger.warning("skipping video %s: %s", video.video_id, reason)
                    result.skipped.append((video.video_id, reason))
            if ready:
                _serve_batch(detector, ready, video_labels, result, sink)
            bar.update(len(prepared))
    result.seconds["total"] = time.perf_counter() - started
    return result


def _serve_batch(detector, ready, video_labels, result, sink):
    begin = time.perf_counter()
    scores = detector.predict(np.stack([clips for _, clips in ready]))
    result.seconds["inference"] += time.perf_counter() - begin
    begin = time.perf_counter()
    for row, (video, _) in enumerate(ready):
        overlap = scores[metadata.OVERLAP_SCORES][row]
        proposals = detector.proposals(overlap, video.duration)
        found = detector.detections(
            overlap,
            scores[metadata.CLASS_SCORES][row],
            video.duration,
            video_labels.get(video.video_id),
            video.video_id,
        )
        if sink is None:
            result.proposals[video.video_id] = proposals
            result.detections[video.video_id] = found
        else:
            sink(video.video_id, found, proposals)
        result.num_served += 1
    result.seconds["postprocessing"] += time.perf_counter() - begin


def summary_line(result, total, provider):
    seconds = result.seconds
    rate = result.num_served / seconds["total"] if seconds["total"] > 0 else 0.0
    skipped = f"{len(result.skipped)} skipped"
    if result.skipped:
        skipped += f" (first: {result.skipped[0][0]}: {result.skipped[0][1]})"
    if result.length_warnings:
        skipped += (
            f", {len(result.length_warnings)} with a feature length that does "
            "not fit the duration"
        )
    return (
        f"served {result.num_served} of {total} videos, {skipped}; "
        f"{seconds['total']:.2f} s ({rate:.1f} videos/s; waiting for features "
        f"{seconds['loading']:.2f} s, inference {seconds['inference']:.2f} s, "
        f"postprocessing {seconds['postprocessing']:.2f} s) on {provider}"
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m export.serve",
        description="Detections of a set of videos with an exported ONNX model "
        "(numpy and onnxruntime only).",
    )
    parser.add_argument(
        "--model", required=True, help="ONNX file from export.onnx_export."
    )
    parser.add_argument(
        "--features", required=True, help="Folder of ID.npy files or one HDF5 file."
    )
    parser.add_argument("--annotations", default=None, help="ActivityNet-style JSON.")
    parser.add_argument(
        "--subset",
        default="validation",
        help=f"Subset of --annotations to serve; '{ALL_SUBSETS}' for every video.",
    )
    parser.add_argument(
        "--durations",
        default=None,
        help="CSV of video_id,duration rows (seconds); overrides the "
        "annotations' durations, or lists the videos without --annotations. "
        "The first row is a header only if it reads video_id,duration; a row "
        "without a positive duration is a video skipped with its line.",
    )
    parser.add_argument(
        "--out", required=True, help="Detection submission JSON to write."
    )
    parser.add_argument(
        "--proposals_out",
        default=None,
        help="Also write class-agnostic proposals here.",
    )
    parser.add_argument(
        "--batch_size", type=int, default=32, help="Videos per model call."
    )
    parser.add_argument(
        "--video_labels",
        default=None,
        help="External video-level classifier JSON {video_id: [[label, score], ...]} "
        "fused into detections, as evaluate.py --video_labels.",
    )
    parser.add_argument(
        "--providers",
        default=None,
        help="Comma-separated onnxruntime providers; default: CUDA if it loads, else CPU.",
    )
    parser.add_argument(
        "--num_workers", type=int, default=2, help="Feature loading threads."
    )
    parser.add_argument("--no_progress", action="store_true", help="No progress bar.")
    # Postprocessing overrides, one per `Postprocessing` setting; default: the
    # settings the model was exported with.
    for field in dataclasses.fields(metadata.Postprocessing):
        if field.type is bool:
            parser.add_argument(
                f"--{field.name}", action=argparse.BooleanOptionalAction, default=None
            )
        else:
            parser.add_argument(f"--{field.name}", type=field.type, default=None)
    args = parser.parse_args(argv)
    if args.annotations is None and args.durations is None:
        parser.error("pass --annotations (with --subset) or --durations.")
    if args.batch_size < 1 or args.num_workers < 1:
        parser.error("--batch_size and --num_workers must be >= 1.")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import tal_keras
    from tal_keras import run
    from tal_keras.atomic import check_writable
    from tal_keras.data.features import open_feature_store
    from tal_keras.errors import stop_signals_as_interrupt
    from tal_keras.inference import read_video_labels

    tal_keras.configure_logging()
    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(metadata.Postprocessing)
        if getattr(args, field.name) is not None
    }
    providers = args.providers.split(",") if args.providers else None
    outputs = {args.out: "detections"}
    if args.proposals_out:
        outputs[args.proposals_out] = "proposals"
    try:
        # Outputs first: a path that cannot be written fails before any work.
        for path, what in outputs.items():
            check_writable(path, what)
        detector = Detector(args.model, providers=providers, postprocessing=overrides)
        store = open_feature_store(args.features)
        videos = videos_to_serve(args.annotations, args.subset, args.durations)
        video_labels = (
            read_video_labels(args.video_labels, detector.class_names)
            if args.video_labels
            else None
        )
    except (DataError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logger.info("%r; %d videos to serve", detector, len(videos))
    try:
        with (
            stop_signals_as_interrupt(),
            run.shared_locks(run.enclosing_run_folder(path) for path in outputs),
            open_submissions(outputs) as streams,
        ):
            result = serve(
                detector,
                store,
                videos,
                batch_size=args.batch_size,
                video_labels=video_labels,
                num_workers=args.num_workers,
                progress=not args.no_progress,
                sink=lambda video_id, found, proposals: streams.add(
                    video_id, {"detections": found, "proposals": proposals}
                ),
            )
            if not result.num_served:
                raise NothingServed
    except KeyboardInterrupt:
        print("interrupted: nothing written.", file=sys.stderr)
        return 130
    except NothingServed:
        print(
            f"error: none of the {len(videos)} videos could be served; nothing "
            "written (reasons above).",
            file=sys.stderr,
        )
        return 1
    except (ValueError, OSError) as error:
        print(f"error: {str(error).rstrip('.')}; nothing written.", file=sys.stderr)
        return 2
    print(summary_line(result, len(videos), detector.provider))
    print(f"written: {', '.join(outputs)}")
    return 0


class NothingServed(Exception):
    """No video could be served: the output files are not written."""


class SubmissionStreams:
    """The submission files of one serve run, each fed per video.

    Attributes:
        streams: {kind ("detections", "proposals"): `SubmissionStream`}.
    """

    def __init__(self, streams):
        self.streams = streams

    def add(self, video_id, results):
        """results: {kind: the video's entries of that file}."""
        for kind, stream in self.streams.items():
            stream.add(video_id, results[kind])


@contextlib.contextmanager
def open_submissions(outputs):
    """Yields `SubmissionStreams` writing {path: kind} to temporaries beside
    the paths; when the block ends without an exception, every file is ended
    and put on disk first, then each is renamed into place (all or none: a
    full disk or an interruption leaves the previous files and no
    temporary)."""
    from tal_keras.atomic import atomic_path

    with contextlib.ExitStack() as stack:
        streams = {}
        for path, kind in outputs.items():
            temporary = stack.enter_context(atomic_path(path))
            text = stack.enter_context(open(temporary, "w", encoding="utf-8"))
            streams[kind] = SubmissionStream(text, path)
        yield SubmissionStreams(streams)
        for stream in streams.values():
            stream.finish()


if __name__ == "__main__":
    sys.exit(main())
