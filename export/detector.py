"""The serving runtime: an exported ONNX file -> detections, with numpy and
onnxruntime only (no TensorFlow, no Keras).

Preprocessing (feature steps -> N clips) and postprocessing (fusion,
per-class NMS or soft-NMS, top-k, seconds) are the numpy modules training and
evaluate.py use (`tal_keras.clips`, `tal_keras.detections`), configured by the
metadata the file carries (`export.metadata`).
"""

import contextlib
import dataclasses
import logging
import warnings

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from export import metadata
from tal_keras import detections
from tal_keras.clips import resample_to_clips
from tal_keras.data.annotations import finite_number
from tal_keras.data.features import MAX_ABS_FEATURE, check_feature_length
from tal_keras.errors import DataError

logger = logging.getLogger("tal_keras")

# onnxruntime's exceptions share no base class but Exception.
_ORT_ERRORS = (
    RuntimeError,
    ort_errors.EPFail,
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_ORT_DEFAULT_SEVERITY = 2  # onnxruntime's own default: warnings and above


def session_options():
    """The onnxruntime session options serving uses (bench/bench_serving.py too).

    Idle intra-op threads sleep instead of spinning (onnxruntime's default
    is to spin): on a CPU shared with other jobs a spinning thread takes
    cores the other threads of the same call need. On the project's busy
    2-core machine, spinning made the demo model's median latency at batch 1
    1.0x to 1.5x as long (four interleaved comparisons of 15 to 30 calls).

    onnxruntime's buffer-reuse planner, which assigns each value a freed
    buffer of the same shape before the first call, is off; freed buffers
    still return to onnxruntime's arena and are handed out again. At the
    paper config (batch 1, idle) a call took 16.5 s without it against 17.2
    s with it (medians of four processes, alternating) and peaked at 1.0
    against 1.7 GiB; at the demo config, batch 32, both peaked at 525 MiB
    in the same time (docs/performance.md).
    """
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_reuse = False
    return options


class Detector:
    """Detections of videos from their raw features, with an exported model.

    Args:
        model_path: an ONNX file written by `python -m export.onnx_export`.
        providers: onnxruntime execution providers, in order of preference.
            None: CUDA when onnxruntime-gpu is installed and its CUDA provider
            actually loads (probed without logging), else the CPU.
        postprocessing: optional overrides of the file's `Postprocessing`
            settings, e.g. {"soft_nms": True}.

    Raises:
        ValueError: the file cannot be loaded or was not written by
            `export.onnx_export` (the message names the file).

    Attributes:
        spec: `ServingSpec` read from the file's metadata.
        lattice: the proposal `Lattice`.
        provider: the execution provider that runs the graph (e.g.
            "CPUExecutionProvider").
        postprocessing: the `Postprocessing` in use.

    Example:
        >>> detector = Detector("runs/demo/s2dtan.onnx")
        >>> detector.provider
        'CPUExecutionProvider'
        >>> detector(features, duration=92.2)[:1]  # features: [T, D]
        [{'label': 'Archery', 'score': 0.61, 'segment': [3.1, 40.3]}]
    """

    def __init__(self, model_path, providers=None, postprocessing=None):
        self.model_path = str(model_path)
        try:
            if providers is None:
                self.session = _auto_session(self.model_path)
            else:
                self.session = ort.InferenceSession(
                    self.model_path, session_options(), providers=list(providers)
                )
        except _ORT_ERRORS as error:
            raise ValueError(
                f"{self.model_path}: cannot load the ONNX model: {error}"
            ) from None
        self.provider = self.session.get_providers()[0]
        properties = self.session.get_modelmeta().custom_metadata_map
        self.spec = metadata.parse_metadata(properties, self.model_path)
        self.lattice = self.spec.lattice
        self.postprocessing = dataclasses.replace(
            self.spec.postprocessing, **(postprocessing or {})
        )
        self.class_names = list(self.spec.class_names)
        self._check_graph()

    def _check_graph(self):
        inputs = [value.name for value in self.session.get_inputs()]
        outputs = [value.name for value in self.session.get_outputs()]
        expected = [metadata.OVERLAP_SCORES, metadata.CLASS_SCORES]
        if inputs != [metadata.INPUT_NAME] or sorted(outputs) != sorted(expected):
            raise ValueError(
                f"{self.model_path}: graph inputs {inputs} and outputs {outputs}; "
                f"expected [{metadata.INPUT_NAME!r}] and {expected}."
            )
        # Fixed sizes of the graph's input against the metadata (a symbolic
        # or missing size is not checked).
        shape = list(self.session.get_inputs()[0].shape or [])
        expected_shape = ["batch", self.spec.num_clips, self.spec.feature_dim]
        fixed = [
            (found, wanted)
            for found, wanted in zip(shape[1:], expected_shape[1:])
            if isinstance(found, int)
        ]
        if len(shape) != 3 or any(found != wanted for found, wanted in fixed):
            raise ValueError(
                f"{self.model_path}: the graph's input {metadata.INPUT_NAME!r} has "
                f"shape {shape}, its metadata says {expected_shape} (num_clips, "
                "feature_dim); the file was changed after the export: export the "
                "run again."
            )

    def clip_features(self, features, duration, video_id="video", length_warnings=None):
        """float32 [N, D]: a video's feature steps [T, D] resampled to N clips.

        A feature length that does not quite fit the duration
        (`tal_keras.data.features.check_feature_length`) is appended to
        `length_warnings` as (video_id, message) when a list is given, else
        logged.

        Raises:
            DataError: features not [T >= 1, D] with the model's D, not
                finite or beyond +-MAX_ABS_FEATURE, a duration that is not a
                positive number, or T and the duration more than a factor 2
                apart.
        """
        features = np.asarray(features)
        if features.dtype.kind not in "iuf":
            raise DataError(
                f"video {video_id}: expected numeric features, found dtype "
                f"{features.dtype} (shape {features.shape})."
            )
        if features.ndim != 2 or features.shape[0] == 0:
            raise DataError(
                f"video {video_id}: expected features [T >= 1, "
                f"{self.spec.feature_dim}], found shape {features.shape}."
            )
        if features.shape[1] != self.spec.feature_dim:
            raise DataError(
                f"video {video_id}: expected feature width {self.spec.feature_dim}, "
                f"found {features.shape[1]} (shape {features.shape})."
            )
        if not np.isfinite(features).all():
            raise DataError(f"video {video_id}: features hold NaN or inf values.")
        largest = float(np.abs(features).max())
        if largest > MAX_ABS_FEATURE:
            raise DataError(
                f"video {video_id}: expected feature values within "
                f"+-{MAX_ABS_FEATURE:g}, found {largest:.3g}."
            )
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            raise DataError(
                f"video {video_id}: duration {duration!r} is not a number of seconds."
            ) from None
        if not np.isfinite(duration) or duration <= 0:
            raise DataError(
                f"video {video_id}: duration {duration} is not a positive number of seconds."
            )
        message = check_feature_length(
            f"video {video_id}", features.shape[0], duration, self.spec.timing
        )
        if message is not None:
            if length_warnings is None:
                logger.warning("%s", message)
            else:
                length_warnings.append((video_id, message))
        return resample_to_clips(
            features, duration, self.spec.num_clips, self.spec.timing
        )

    def predict(self, clip_features):
        """Model scores of a batch of videos.

        Args:
            clip_features: float [B, N, D].

        Returns:
            {"overlap_scores": float32 [B, P], "class_scores": float32
            [B, P, C]}, lattice order.

        Raises:
            DataError: not numbers, not [B, N, D], or NaN/inf (naming the
                rows), which would give NaN scores.
        """
        clip_features = np.asarray(clip_features)
        if clip_features.dtype.kind not in "iuf":
            raise DataError(
                f"clip_features: expected numbers, found dtype {clip_features.dtype}."
            )
        clip_features = np.ascontiguousarray(clip_features, dtype=np.float32)
        expected = (self.spec.num_clips, self.spec.feature_dim)
        if clip_features.ndim != 3 or clip_features.shape[1:] != expected:
            raise DataError(
                f"clip_features must be [batch, {expected[0]}, {expected[1]}], "
                f"got {clip_features.shape}."
            )
        finite = np.isfinite(clip_features).all(axis=(1, 2))
        if not finite.all():
            raise DataError(
                f"clip_features: rows {np.flatnonzero(~finite).tolist()} of "
                f"{len(finite)} hold NaN or inf values (their scores would be NaN)."
            )
        names = [metadata.OVERLAP_SCORES, metadata.CLASS_SCORES]
        values = self.session.run(names, {metadata.INPUT_NAME: clip_features})
        return dict(zip(names, values))

    def proposals(self, overlap_scores, duration):
        """Class-agnostic proposals of one video: [{"score", "segment"}], seconds."""
        return detections.proposals_with(
            self.postprocessing, self.lattice, duration, overlap_scores
        )

    def detections(
        self,
        overlap_scores,
        class_scores,
        duration,
        video_labels=None,
        video_id="video",
    ):
        """Detections of one video: [{"label", "score", "segment"}], seconds.

        Args:
            overlap_scores: float [P].
            class_scores: float [P, C].
            duration: seconds.
            video_labels: optional [(label, score)] (or {label: score}) of an
                external video-level classifier, fused as in evaluate.py.
            video_id: the video, named in errors.

        Raises:
            DataError: a video-label score that is not a finite number, or a
                label that is not a class of the model.
        """
        return detections.detections_with(
            self.postprocessing,
            self.lattice,
            duration,
            overlap_scores,
            class_scores,
            self.class_names,
            self._checked_video_labels(video_labels, video_id),
        )

    def _checked_video_labels(self, video_labels, video_id):
        """[(label, float score)] of `video_labels`, or None."""
        if video_labels is None:
            return None
        pairs = (
            list(video_labels.items())
            if isinstance(video_labels, dict)
            else list(video_labels)
        )
        checked = []
        for pair in pairs:
            try:
                label, score = pair
            except (TypeError, ValueError):
                raise DataError(
                    f"video {video_id}: expected video labels [(label, score), ...], "
                    f"found {pair!r}."
                ) from None
            number = finite_number(
                score.item() if isinstance(score, np.generic) else score,
                allow_string=False,
            )
            if number is None:
                raise DataError(
                    f"video {video_id}: video label {label!r} has score {score!r}; "
                    "expected a finite number."
                )
            if label not in self.class_names:
                raise DataError(
                    f"video {video_id}: video label {label!r} is not one of the "
                    f"{len(self.class_names)} classes (e.g. {self.class_names[:3]})."
                )
            checked.append((label, number))
        return checked

    def __call__(self, features, duration, video_labels=None, video_id="video"):
        """Detections of one video from its raw features [T, D]."""
        clips = self.clip_features(features, duration, video_id)
        scores = self.predict(clips[None])
        return self.detections(
            scores[metadata.OVERLAP_SCORES][0],
            scores[metadata.CLASS_SCORES][0],
            duration,
            video_labels,
            video_id,
        )

    def __repr__(self):
        return (
            f"Detector({self.model_path!r}, provider={self.provider!r}, "
            f"{self.lattice}, classes={len(self.class_names)}, "
            f"precision={self.spec.precision!r})"
        )


def _auto_session(model_path):
    """An onnxruntime session on CUDA when its provider loads, else on the CPU.

    onnxruntime-gpu lists the CUDA provider even where the CUDA libraries are
    missing; asking for it then logs an error and falls back to the CPU. The
    probe silences that and reads which provider the session really got.
    """
    if CUDA in ort.get_available_providers():
        with _quiet_onnxruntime():
            options = session_options()
            options.log_severity_level = 4
            try:
                session = ort.InferenceSession(
                    model_path, sess_options=options, providers=[CUDA, CPU]
                )
            except _ORT_ERRORS:
                session = None
        if session is not None and session.get_providers()[0] == CUDA:
            return session
    return ort.InferenceSession(model_path, session_options(), providers=[CPU])


@contextlib.contextmanager
def _quiet_onnxruntime():
    ort.set_default_logger_severity(4)  # fatal only
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
