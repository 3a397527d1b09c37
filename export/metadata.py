"""What an exported ONNX file carries besides its graph: everything serving
needs, as ONNX `metadata_props` with one JSON value per key. numpy only.

Keys (values are JSON):
    format: "tal_keras.s2dtan/1", this layout.
    tal_keras_version: the project version that exported the file.
    num_clips, scale_layers, feature_dim, num_classes: the lattice and shapes.
    model_config: the whole `ModelConfig` of the run, for the record.
    feature_timing: {"fps", "stride", "window"} of the input features.
    class_names: the C labels, the column order of class_scores.
    postprocessing: NMS and fusion settings of the run (`Postprocessing`).
    precision: "float32" or "float16" (weights and activations; the graph's
        inputs and outputs are float32 either way).
    inputs, outputs: {name: shape} with null for the batch.
    parity: how the export was checked against Keras (inputs, max abs
        differences, tolerance).
"""

import dataclasses
import json

from tal_keras.clips import FeatureTiming
from tal_keras.lattice import Lattice

FORMAT = "tal_keras.s2dtan/1"
INPUT_NAME = "clip_features"
OVERLAP_SCORES = "overlap_scores"
CLASS_SCORES = "class_scores"
PRECISIONS = ("float32", "float16")
# How detections are scored; written so a reader of the file knows it.
FUSION = "P_over * P_class (* video-level label score when video labels are given)"


@dataclasses.dataclass(frozen=True)
class Postprocessing:
    """NMS, fusion and top-k settings (DESIGN.md section 7; `EvalConfig`).

    Attributes:
        nms_threshold: tIoU of NMS for proposals and per-class detections.
        proposals_per_video: class-agnostic proposals kept per video.
        detections_per_video: detections kept per video.
        top_pairs: best (proposal, class) pairs kept before per-class NMS.
        soft_nms: Gaussian soft-NMS instead of hard NMS for detections.
        soft_nms_sigma: width of the soft-NMS penalty
            (`tal_keras.detections.video_detections`' default).
    """

    nms_threshold: float = 0.5
    proposals_per_video: int = 100
    detections_per_video: int = 100
    top_pairs: int = 2000
    soft_nms: bool = False
    soft_nms_sigma: float = 0.5

    def __post_init__(self):
        if not 0 < self.nms_threshold <= 1:
            raise ValueError(
                f"nms_threshold must be in (0, 1], got {self.nms_threshold}."
            )
        for name in ("proposals_per_video", "detections_per_video", "top_pairs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if not isinstance(self.soft_nms, bool):
            raise TypeError(f"soft_nms must be true or false, got {self.soft_nms!r}.")
        if not self.soft_nms_sigma > 0:
            raise ValueError(f"soft_nms_sigma must be > 0, got {self.soft_nms_sigma}.")

    @classmethod
    def from_eval_config(cls, eval_config):
        return cls(
            nms_threshold=eval_config.nms_threshold,
            proposals_per_video=eval_config.proposals_per_video,
            detections_per_video=eval_config.detections_per_video,
            top_pairs=eval_config.top_pairs,
            soft_nms=eval_config.soft_nms,
        )

    def to_dict(self):
        return {**dataclasses.asdict(self), "fusion": FUSION}


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """The metadata of an exported file, parsed and checked.

    Attributes:
        num_clips: N.
        scale_layers: pooling layers per scale.
        feature_dim: D, width of the raw features and of the clip features.
        class_names: the C labels, in class_scores column order.
        timing: `FeatureTiming` of the raw features.
        postprocessing: `Postprocessing` the run was evaluated with.
        precision: "float32" or "float16".
        version: tal_keras version that exported the file.
        model_config: the run's `ModelConfig` as a dict.
        parity: the export's check against Keras, as recorded.
    """

    num_clips: int
    scale_layers: tuple
    feature_dim: int
    class_names: tuple
    timing: FeatureTiming
    postprocessing: Postprocessing
    precision: str
    version: str
    model_config: dict
    parity: dict

    @property
    def lattice(self):
        return Lattice(self.num_clips, self.scale_layers)

    @property
    def num_classes(self):
        return len(self.class_names)


def build_metadata(run_config, class_names, precision, parity, version):
    """{key: JSON string} for `onnx.ModelProto.metadata_props`.

    Args:
        run_config: the run's `RunConfig`.
        class_names: the C labels, column order of class_scores.
        precision: "float32" or "float16".
        parity: dict describing the check against Keras.
        version: the tal_keras version.
    """
    model = run_config.model
    if len(class_names) != model.num_classes:
        raise ValueError(
            f"{len(class_names)} class names for a model of {model.num_classes} classes."
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    num_proposals = model.lattice.num_proposals
    data = run_config.data
    values = {
        "format": FORMAT,
        "tal_keras_version": version,
        "num_clips": model.num_clips,
        "scale_layers": list(model.scale_layers),
        "feature_dim": model.feature_dim,
        "num_classes": model.num_classes,
        "model_config": model.to_dict(),
        "feature_timing": {
            "fps": data.fps,
            "stride": data.stride,
            "window": data.window,
        },
        "class_names": list(class_names),
        "postprocessing": Postprocessing.from_eval_config(run_config.eval).to_dict(),
        "precision": precision,
        "inputs": {INPUT_NAME: [None, model.num_clips, model.feature_dim]},
        "outputs": {
            OVERLAP_SCORES: [None, num_proposals],
            CLASS_SCORES: [None, num_proposals, model.num_classes],
        },
        "parity": parity,
    }
    return {key: json.dumps(value) for key, value in values.items()}


def parse_metadata(properties, source):
    """`ServingSpec` of {key: JSON string} read from the ONNX file `source`.

    Raises:
        ValueError: the file was not exported by `export.onnx_export`, or a
            value is missing or malformed (the message names the file and key).
    """
    found = properties.get("format")
    if found is None:
        raise ValueError(
            f"{source}: no 'format' metadata: not exported by export.onnx_export "
            f"(expected format {json.dumps(FORMAT)})."
        )

    def value(key):
        if key not in properties:
            raise ValueError(f"{source}: metadata key {key!r} is missing.")
        try:
            return json.loads(properties[key])
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{source}: metadata key {key!r} is not JSON: {error}"
            ) from None

    if value("format") != FORMAT:
        raise ValueError(
            f"{source}: metadata format {properties['format']} is not {FORMAT!r}; "
            "re-export the run with this version of export.onnx_export."
        )
    try:
        timing = FeatureTiming(**value("feature_timing"))
        postprocessing_values = dict(value("postprocessing"))
        postprocessing_values.pop("fusion", None)
        postprocessing = Postprocessing(**postprocessing_values)
        spec = ServingSpec(
            num_clips=int(value("num_clips")),
            scale_layers=tuple(int(n) for n in value("scale_layers")),
            feature_dim=int(value("feature_dim")),
            class_names=tuple(str(name) for name in value("class_names")),
            timing=timing,
            postprocessing=postprocessing,
            precision=value("precision"),
            version=str(value("tal_keras_version")),
            model_config=dict(value("model_config")),
            parity=dict(value("parity")),
        )
        Lattice(spec.num_clips, spec.scale_layers)  # raises on a bad pair
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: malformed metadata: {error}") from None
    if spec.num_classes != int(value("num_classes")):
        raise ValueError(
            f"{source}: metadata lists {spec.num_classes} class names but "
            f"num_classes is {value('num_classes')}."
        )
    if spec.precision not in PRECISIONS:
        raise ValueError(
            f"{source}: metadata precision {spec.precision!r} is not one of {PRECISIONS}."
        )
    return spec
