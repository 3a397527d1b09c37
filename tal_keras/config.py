"""Frozen, validated configuration objects. The entry points build them from
flags; the library only ever reads them. Defaults are the report's
(DESIGN.md); each says where it comes from.
"""

import dataclasses

from tal_keras.lattice import Lattice

MAP_MODES = ("s2dtan", "2dtan")
PROPOSAL_FEATURES = ("pool", "conv")
CONV_IMPLEMENTATIONS = ("band", "whole")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes of both networks.

    Attributes:
        num_clips: N, clips per video (DESIGN 2; report: 256).
        scale_layers: pooling layers per scale (DESIGN 3; report: 64, 32, 32).
        feature_dim: D, width of the input clip features (HACS SlowFast: 2304).
        hidden_size: H, channels of both networks (DESIGN 6: 512).
        kernel_size: K of the shared map convs (DESIGN 5: 9).
        num_conv_layers: L shared map conv layers (DESIGN 5: 4).
        num_classes: C, action classes (HACS: 200).
        map_mode: "s2dtan" (three compact sub-maps) or "2dtan" (one N x N map).
        proposal_features: "pool" (stacked max-pool) or "conv" (learned conv1d
            of the same kernel and stride, microsoft/VideoX#19).
        conv_implementation: "band" (only valid cells and their halo) or
            "whole" (whole maps; the reference).
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

    def __post_init__(self):
        object.__setattr__(self, "scale_layers", tuple(int(n) for n in self.scale_layers))
        Lattice(self.num_clips, self.scale_layers)  # raises with a suggestion
        for name in ("feature_dim", "hidden_size", "num_conv_layers", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be a positive odd integer ('same' padding), got {self.kernel_size!r}."
            )
        _check_choice("map_mode", self.map_mode, MAP_MODES)
        _check_choice("proposal_features", self.proposal_features, PROPOSAL_FEATURES)
        _check_choice("conv_implementation", self.conv_implementation, CONV_IMPLEMENTATIONS)

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
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"Unknown ModelConfig fields {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**config)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
