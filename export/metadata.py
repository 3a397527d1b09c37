"""What an exported ONNX file carries besides its graph: everything serving
needs, as ONNX `metadata_props` with one JSON value per key. numpy only.

Keys (values are JSON):
    format: "tal_keras.s2dtan/1", this layout.
    tal_keras_version: the project version that exported the file.
    num_clips, scale_layers, feature_dim, num_classes: the lattice and shapes.
    model_config: the whole `ModelConfig` of the run, for the record.
    feature_timing: {"fps", "stride", "window"} of the input features.
    class_names: the C labels, the column order of class_scores.
    postprocessing: NMS and fusion settings of the run
        (`tal_keras.config.Postprocessing`, and "fusion").
    precision: "float32", "float16" (weights and activations) or "int8"
        (the matrix products, `export.onnx_export.to_int8`); the graph's
        inputs and outputs are float32 either way.
    inputs, outputs: {name: shape} with null for the batch.
    parity: how the export was checked against Keras (inputs, max abs
        differences, tolerance).
"""

import dataclasses
import json

from tal_keras.clips import FeatureTiming
from tal_keras.config import Postprocessing
from tal_keras.lattice import Lattice

FORMAT = "tal_keras.s2dtan/1"
INPUT_NAME = "clip_features"
OVERLAP_SCORES = "overlap_scores"
CLASS_SCORES = "class_scores"
PRECISIONS = ("float32", "float16", "int8")
# How detections are scored; written so a reader of the file knows it.
FUSION = "P_over * P_class (* video-level label score when video labels are given)"


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
        precision: "float32", "float16" or "int8".
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
        precision: "float32", "float16" or "int8".
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
        "postprocessing": {
            **dataclasses.asdict(Postprocessing.from_eval_config(run_config.eval)),
            "fusion": FUSION,
        },
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
