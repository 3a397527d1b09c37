"""Frozen, validated configuration objects. The entry points build them from
flags; the library only ever reads them. Defaults are the report's
(docs/design.md); each says where it comes from.
"""

import dataclasses

from tal_keras.detections import DEFAULT_SOFT_NMS_SIGMA, DEFAULT_TOP_M
from tal_keras.lattice import Lattice, check_map_conv

PROPOSAL_FEATURES = ("pool", "conv")
CONV_IMPLEMENTATIONS = ("band", "taps", "frequency", "whole")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes of both networks.

    Attributes:
        num_clips: N, clips per video (docs/design.md section 2; report: 256).
        scale_layers: pooling layers per scale (docs/design.md section 3; report: 64, 32, 32).
        feature_dim: D, width of the input clip features (HACS SlowFast: 2304).
        hidden_size: H, channels of both networks (docs/design.md section 6: 512).
        kernel_size: K of the shared map convs (docs/design.md section 5: 9).
        num_conv_layers: L shared map conv layers (docs/design.md section 5: 4).
        num_classes: C, action classes (HACS: 200).
        map_mode: "s2dtan" (three compact sub-maps) or "2dtan" (one N x N map).
        proposal_features: "pool" (stacked max-pool) or "conv" (learned conv1d
            of the same kernel and stride, microsoft/VideoX#19).
        conv_implementation: "band" (only valid cells and their halo; on
            CPUs in float32 through 2-D Fourier transforms where that
            multiplies at most half as much, `MapBand.frequency_tile`: the
            paper config; else, and on GPUs, by taps), "taps" or
            "frequency" (the band in that form), or "whole" (whole maps;
            the reference). `BandMapConv`.
        clip_normalization: "none" (the report) or "video": standardise each
            input channel over the video's clips (a departure, see
            docs/benchmarks.md).
        clip_context: 0 (the report) or an odd kernel of a temporal conv
            added in the clip encoder before pooling (a departure).
        overlap_cell_bias: a learned bias per proposal on the overlap logit,
            started at the training videos' length prior (a departure).
        boundary_features: add projections of each proposal's start and end
            clip to its pooled feature in the proposal network (a departure).
        class_mean_evidence: H > 0: add the class-mean evidence of each
            proposal (`layers.ClassMeanEvidence`: a weighted sum and an MLP
            of H hidden units) to its overlap logit (a departure; 0: off).
        class_mean_logits: add per-class logits by the class-mean matches to
            the classifier's (`layers.ClassHead`; a departure).
        class_mean_flank: f of the class-mean body matches: each proposal of
            L clips against ceil(f L) clips on each side; 0: against the rest
            of the video (`layers.ClassMeanMatches`).
    """

    num_clips: int = 256
    scale_layers: tuple = (64, 32, 32)
    feature_dim: int = 2304
    hidden_size: int = 512
    kernel_size: int = 9
    num_conv_layers: int = 4
    num_classes: int = 200
    map_mode: str = "s2dtan"
    proposal_features: str = "pool"
    conv_implementation: str = "band"
    clip_normalization: str = "none"
    clip_context: int = 0
    overlap_cell_bias: bool = False
    boundary_features: bool = False
    class_mean_evidence: int = 0
    class_mean_logits: bool = False
    class_mean_flank: float = 0.25

    def __post_init__(self):
        object.__setattr__(
            self, "scale_layers", tuple(int(n) for n in self.scale_layers)
        )
        if not 0 <= self.class_mean_flank < float("inf"):
            raise ValueError(
                "class_mean_flank must be a finite number >= 0, got "
                f"{self.class_mean_flank!r}."
            )
        if (
            isinstance(self.class_mean_evidence, bool)
            or not isinstance(self.class_mean_evidence, int)
            or self.class_mean_evidence < 0
        ):
            raise ValueError(
                "class_mean_evidence must be 0 (off) or a positive integer, got "
                f"{self.class_mean_evidence!r}."
            )
        Lattice(self.num_clips, self.scale_layers)  # raises with a suggestion
        for name in ("feature_dim", "hidden_size", "num_conv_layers", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        check_map_conv(self.map_mode, self.kernel_size)
        _check_choice("proposal_features", self.proposal_features, PROPOSAL_FEATURES)
        _check_choice(
            "conv_implementation", self.conv_implementation, CONV_IMPLEMENTATIONS
        )
        _check_choice("clip_normalization", self.clip_normalization, ("none", "video"))
        if (
            not isinstance(self.clip_context, int)
            or self.clip_context < 0
            or (self.clip_context and self.clip_context % 2 == 0)
        ):
            raise ValueError(
                f"clip_context must be 0 or a positive odd integer, got {self.clip_context!r}."
            )

    @property
    def lattice(self):
        return Lattice(self.num_clips, self.scale_layers)

    def to_dict(self):
        config = dataclasses.asdict(self)
        config["scale_layers"] = list(self.scale_layers)
        return config

    @classmethod
    def from_dict(cls, config):
        known = {field.name for field in dataclasses.fields(cls)}
        config = dict(config)
        used = []
        for name, off in _REPLACED_FIELDS.items():
            if name not in config:
                continue
            value = config.pop(name)
            if off is not None and value not in off:
                used.append(name)
        if used:
            raise ValueError(
                f"The run was trained with layers this version replaced "
                f"({', '.join(sorted(used))}); retrain it (--recipe=tuned has "
                "their successor, the class-mean evidence)."
            )
        unknown = set(config) - known
        if unknown:
            raise ValueError(
                f"Unknown ModelConfig fields {sorted(unknown)}; known: {sorted(known)}."
            )
        return cls(**config)


# Fields of earlier versions and their values that meant "off" (None: a
# setting of another field, whatever its value): a run folder trained
# without those layers still loads.
_REPLACED_FIELDS = {
    "boundary_scores": (False,),
    "boundary_prototypes": (False,),
    "boundary_prototype_scales": None,
    "body_prototypes": (False,),
    "body_prototype_flank": None,
    "prototype_evidence": (0,),
    "class_prototypes": (False,),
}


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


NETWORKS = ("proposal", "classifier")
MIXED_PRECISION_DTYPES = ("float16", "bfloat16")
LR_SCHEDULES = ("constant", "cosine")
EPOCH_SELECTIONS = ("held_out", "eval_subset")
FEATURE_FORMATS = ("auto", "npy", "hdf5")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data is and how its features are timed (docs/design.md section 1).

    Attributes:
        annotations: ActivityNet-style JSON (HACS_segments_v1.1.1.json).
        features: folder of ID.npy files or one HDF5 file.
        category_file: one label per line; empty = sorted label names.
        fps, stride, window: feature timing (HACS SlowFast: 15, 8, 32).
        train_subset, eval_subset: subsets used for training and evaluation.
        blocklist: video ids to leave out everywhere.
        synthetic_videos: when > 0 and the data is missing, generate the
            synthetic dataset with this many videos there (demo only).
    """

    annotations: str = "data/hacs/annotations/HACS_segments_v1.1.1.json"
    features: str = "data/hacs/features/slowfast101_15fps_stride8_len32_hacs"
    category_file: str = ""
    fps: float = 15.0
    stride: int = 8
    window: int = 32
    train_subset: str = "training"
    eval_subset: str = "validation"
    blocklist: tuple = ()
    synthetic_videos: int = 0

    def __post_init__(self):
        object.__setattr__(self, "blocklist", tuple(self.blocklist))
        if self.fps <= 0 or self.stride < 1 or self.window < 1:
            raise ValueError(
                f"feature timing must be positive, got fps={self.fps}, "
                f"stride={self.stride}, window={self.window}."
            )
        if self.synthetic_videos < 0:
            raise ValueError(
                f"synthetic_videos must be >= 0, got {self.synthetic_videos}."
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How both networks are trained (docs/design.md section 6).

    Attributes:
        networks: which networks to train, in order.
        epochs: passes over the training subset per network.
        classifier_epochs: the classifier's, when not 0 (it may need more:
            docs/benchmarks.md).
        batch_size: videos per step (report: 32).
        learning_rate: Adam learning rate (report: 1e-3).
        lr_schedule: "constant" (the report) or "cosine": epoch e (from 0)
            of E trains at learning_rate * (1 + cos(pi * e / E)) / 2 (a
            departure, docs/benchmarks.md).
        overlap_t_min, overlap_t_max: IoU scaling of the overlap target.
        overlap_positive_weight: W; each proposal's overlap cross-entropy is
            weighted by 1 + (W - 1) * y, y its scaled target, so that the
            high-IoU proposals weigh more (1: the report, no weighting; a
            departure, docs/benchmarks.md).
        mixed_precision: train in mixed precision (float32 weights, compute
            in `mixed_precision_dtype`).
        mixed_precision_dtype: "float16" (Keras' mixed_float16, with loss
            scaling) or "bfloat16" (mixed_bfloat16: no loss scaling; for GPUs
            from NVIDIA's Ampere on, and TPUs).
        seed: seeds shuffling and initialisation.
        cache_dtype: dtype of the cached clip features (float32 or float16).
    """

    networks: tuple = NETWORKS
    epochs: int = 10
    classifier_epochs: int = 0
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    overlap_t_min: float = 0.5
    overlap_t_max: float = 1.0
    overlap_positive_weight: float = 1.0
    mixed_precision: bool = False
    mixed_precision_dtype: str = "float16"
    seed: int = 0
    cache_dtype: str = "float32"
    select_epoch_on: str = "held_out"
    selection_fraction: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "networks", tuple(self.networks))
        _check_choice("select_epoch_on", self.select_epoch_on, EPOCH_SELECTIONS)
        if not 0 < self.selection_fraction < 1:
            raise ValueError(
                "selection_fraction must be in (0, 1), got "
                f"{self.selection_fraction!r}."
            )
        if not self.networks or any(n not in NETWORKS for n in self.networks):
            raise ValueError(
                f"networks must be a non-empty subset of {NETWORKS}, got {self.networks}."
            )
        if len(set(self.networks)) != len(self.networks):
            raise ValueError(f"networks lists a network twice: {self.networks}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}."
            )
        if self.classifier_epochs < 0:
            raise ValueError(
                f"classifier_epochs must be >= 0, got {self.classifier_epochs}."
            )
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if not 0 <= self.overlap_t_min < self.overlap_t_max <= 1:
            raise ValueError(
                "need 0 <= overlap_t_min < overlap_t_max <= 1, got "
                f"{self.overlap_t_min}, {self.overlap_t_max}."
            )
        if not self.overlap_positive_weight > 0:
            raise ValueError(
                "overlap_positive_weight must be > 0, got "
                f"{self.overlap_positive_weight}."
            )
        _check_choice("cache_dtype", self.cache_dtype, ("float32", "float16"))
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice(
            "mixed_precision_dtype",
            self.mixed_precision_dtype,
            MIXED_PRECISION_DTYPES,
        )

    def epochs_of(self, network):
        """(epochs, the flag that sets them) of `network`."""
        if network == "classifier" and self.classifier_epochs:
            return self.classifier_epochs, "--classifier_epochs"
        return self.epochs, "--epochs"

    @property
    def dtype_policy(self):
        """The Keras dtype policy the networks train in."""
        if not self.mixed_precision:
            return "float32"
        return f"mixed_{self.mixed_precision_dtype}"


@dataclasses.dataclass(frozen=True)
class Postprocessing:
    """Scores -> proposals and detections (docs/design.md section 7): the settings evaluation
    and serving share. `EvalConfig` holds them for a run; an exported ONNX
    file carries them (`export.metadata`) and serving may override each.

    Attributes:
        nms_threshold: tIoU of NMS for proposals and per-class detections.
        proposals_per_video: proposals kept per video (official AR@AN: 100).
        detections_per_video: detections kept per video.
        top_pairs: best (proposal, class) pairs kept before per-class NMS
            (why 2000: `detections.DEFAULT_TOP_M`).
        soft_nms: Gaussian soft-NMS instead of hard NMS for detections.
        soft_nms_sigma: width of the soft-NMS penalty (`detections.soft_nms`).
        proposal_soft_nms_sigma: 0 (the report): proposals through NMS at
            `nms_threshold`; > 0: Gaussian soft-NMS of this width instead,
            every overlap decayed (`detections.video_proposals`), for the
            proposals and the content-blind baseline alike.
    """

    nms_threshold: float = 0.5
    proposals_per_video: int = 100
    detections_per_video: int = 100
    top_pairs: int = DEFAULT_TOP_M
    soft_nms: bool = False
    soft_nms_sigma: float = DEFAULT_SOFT_NMS_SIGMA
    proposal_soft_nms_sigma: float = 0.0

    def __post_init__(self):
        if not 0 < self.nms_threshold <= 1:
            raise ValueError(
                f"nms_threshold must be in (0, 1], got {self.nms_threshold}."
            )
        for name in ("proposals_per_video", "detections_per_video", "top_pairs"):
            _check_count(name, getattr(self, name))
        if not isinstance(self.soft_nms, bool):
            raise TypeError(f"soft_nms must be true or false, got {self.soft_nms!r}.")
        if not self.soft_nms_sigma > 0:
            raise ValueError(f"soft_nms_sigma must be > 0, got {self.soft_nms_sigma}.")
        if not 0 <= self.proposal_soft_nms_sigma < float("inf"):
            raise ValueError(
                "proposal_soft_nms_sigma must be a finite number >= 0, "
                f"got {self.proposal_soft_nms_sigma!r}."
            )

    @classmethod
    def from_eval_config(cls, eval_config):
        """The postprocessing settings of an `EvalConfig`."""
        return cls(
            **{
                field.name: getattr(eval_config, field.name)
                for field in dataclasses.fields(cls)
            }
        )


@dataclasses.dataclass(frozen=True)
class EvalConfig(Postprocessing):
    """Postprocessing and evaluation (docs/design.md sections 7, 8): the `Postprocessing`
    settings, and

    Attributes:
        batch_size: videos per inference batch.
    """

    batch_size: int = 32

    def __post_init__(self):
        super().__post_init__()
        _check_count("batch_size", self.batch_size)


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


# The config sections, named as in config.json.
SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; written to WORKDIR/config.json.

    Attributes:
        recipe: the recipe its fields started from (`tal_keras.recipes`).
    """

    workdir: str
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    recipe: str = "paper"

    def to_dict(self):
        return {
            "workdir": self.workdir,
            "recipe": self.recipe,
            "data": _plain(dataclasses.asdict(self.data)),
            "model": self.model.to_dict(),
            "train": _plain(dataclasses.asdict(self.train)),
            "eval": dataclasses.asdict(self.eval),
        }

    @classmethod
    def from_dict(cls, config):
        train = dict(config.get("train", {}))
        if train:
            # Runs saved before the held-out choice chose on the evaluation subset.
            train.setdefault("select_epoch_on", "eval_subset")
        return cls(
            workdir=config["workdir"],
            data=DataConfig(**config.get("data", {})),
            model=ModelConfig.from_dict(config.get("model", {})),
            train=TrainConfig(**train),
            eval=EvalConfig(**config.get("eval", {})),
            recipe=config.get("recipe", "paper"),
        )


def _plain(config):
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in config.items()
    }
