"""Parameter counts and FLOPs per video of both networks, from layer shapes.

numpy only (no Keras): FLOPs count 2 per multiply-add of the dense and conv
layers; biases, activations, pooling, normalisation and the mask step are
left out (each is below 0.1% of the total for the paper config). The map
convs are reported on whole maps (what `MaskedMapConv` computes), on each
layer's band by taps (cell counts from `MapBand`), in the band's frequency
form (`MapBand.frequency_multiply_adds`; what the default `BandMapConv`
computes on CPUs where `MapBand.frequency_tile` picks it), and on the
proposal cells only (the valid-cell minimum: every layer on every
proposal, nothing else).

Run `python -m tal_keras.flops` for the paper config and the report's Table 1.
"""

from tal_keras.config import ModelConfig
from tal_keras.map_band import MapBand

# ClassMeanEvidence's inputs (tal_keras/layers/class_mean_evidence.py).
NUM_EVIDENCE = 12


def model_cost(config):
    """Parameters and FLOPs per video of the proposal and classifier networks.

    Args:
        config: `ModelConfig`.

    Returns:
        dict of ints:
            num_proposals, map_cells: P, and the cells of all maps together.
            proposal_params, classifier_params, total_params.
            clip_encoder_flops, proposal_features_flops (0 for max-pooling),
            map_projection_flops, overlap_head_flops, class_head_flops.
            map_conv_flops_whole: the L KxK convs on every cell of every map.
            map_conv_flops_band: the same on each layer's band, by taps.
            map_conv_flops_frequency: the same in the band's frequency form,
                tiles of the side that multiplies least.
            frequency_tile: the tile side the default `BandMapConv` takes
                on CPUs (0: the taps).
            map_conv_flops_valid_cells: the same on the proposal cells only.
            proposal_flops_whole, proposal_flops_band,
                proposal_flops_frequency, proposal_flops_valid_cells: the
                proposal network with each map conv figure.
            classifier_flops.
            total_flops_whole, total_flops_band, total_flops_valid_cells:
                both networks.
    """
    lattice = config.lattice
    clips, features, hidden = config.num_clips, config.feature_dim, config.hidden_size
    kernel, conv_layers = config.kernel_size, config.num_conv_layers
    proposals = lattice.num_proposals
    if config.map_mode == "2dtan":
        map_cells = clips * clips
    else:
        map_cells = sum(size * size for size in lattice.map_sizes)

    encoder_params = features * hidden + hidden
    encoder_flops = 2 * clips * features * hidden
    if config.clip_context:
        encoder_params += config.clip_context * hidden * hidden + hidden
        encoder_flops += 2 * clips * config.clip_context * hidden * hidden
    if config.proposal_features == "conv":
        pooling_params = sum(
            layer.kernel * hidden * hidden + hidden for layer in lattice.layers
        )
        pooling_flops = sum(
            2 * layer.count * layer.kernel * hidden * hidden for layer in lattice.layers
        )
    else:
        pooling_params, pooling_flops = 0, 0

    projection_params = hidden * hidden + hidden
    projection_flops = 2 * proposals * hidden * hidden
    conv_params = conv_layers * (kernel * kernel * hidden * hidden + hidden)
    conv_flops_per_cell = 2 * conv_layers * kernel * kernel * hidden * hidden
    overlap_params = hidden + 1 + (proposals if config.overlap_cell_bias else 0)
    boundary_params = 2 * hidden * hidden if config.boundary_features else 0
    boundary_flops = 2 * 2 * clips * hidden * hidden if config.boundary_features else 0
    # The class-mean matches, in each network that has them: frozen start,
    # end and body means (context 1); matches per clip, and per (proposal,
    # class) the body's inside and flank sums and means (7 operations).
    window = 3 * config.feature_dim
    class_mean_params = config.num_classes * (2 * window + config.feature_dim)
    class_mean_flops = (
        2 * clips * config.num_classes * (2 * window + config.feature_dim)
        + 7 * proposals * config.num_classes
    )
    if config.class_mean_evidence:
        units, inputs = config.class_mean_evidence, NUM_EVIDENCE
        # The weighted sum and the MLP's three Dense layers.
        boundary_params += class_mean_params + (inputs + 1) * (units + 1)
        boundary_params += (units + 1) * units + units + 1
        # Per (proposal, class): the joint score (3), four softmaxes (4 x 4),
        # the weighted sums (4 x 2) and the entropy (3); per proposal: the
        # Dense layers' multiply-adds, biases and ReLUs.
        boundary_flops += (
            class_mean_flops
            + 30 * proposals * config.num_classes
            + proposals * (2 * inputs * (units + 1) + 2 * units * units + 6 * units + 2)
        )
    overlap_flops = 2 * proposals * hidden
    class_params = hidden * config.num_classes + config.num_classes
    class_flops = 2 * proposals * hidden * config.num_classes
    if config.class_mean_logits:
        # Three scales; per (proposal, class) three products, their sum and
        # the head's sum (6).
        class_params += class_mean_params + 3
        class_flops += class_mean_flops + 6 * proposals * config.num_classes

    proposal_params = (
        encoder_params
        + pooling_params
        + projection_params
        + conv_params
        + overlap_params
        + boundary_params
    )
    classifier_params = encoder_params + pooling_params + class_params
    conv_whole = conv_flops_per_cell * map_cells
    conv_valid = conv_flops_per_cell * proposals
    band = MapBand(lattice, kernel, conv_layers, config.map_mode)
    conv_band = 2 * band.multiply_adds(hidden, hidden)
    conv_frequency = 2 * band.frequency_multiply_adds(
        hidden, hidden, band.frequency_tile(hidden, hidden, at_most=None)
    )
    proposal_rest = (
        encoder_flops
        + pooling_flops
        + projection_flops
        + overlap_flops
        + boundary_flops
    )
    classifier_flops = encoder_flops + pooling_flops + class_flops
    return {
        "num_proposals": proposals,
        "map_cells": map_cells,
        "proposal_params": proposal_params,
        "classifier_params": classifier_params,
        "total_params": proposal_params + classifier_params,
        "clip_encoder_flops": encoder_flops,
        "proposal_features_flops": pooling_flops,
        "map_projection_flops": projection_flops,
        "map_conv_flops_whole": conv_whole,
        "map_conv_flops_band": conv_band,
        "map_conv_flops_frequency": conv_frequency,
        "frequency_tile": band.frequency_tile(hidden, hidden),
        "map_conv_flops_valid_cells": conv_valid,
        "overlap_head_flops": overlap_flops,
        "class_head_flops": class_flops,
        "proposal_flops_whole": proposal_rest + conv_whole,
        "proposal_flops_band": proposal_rest + conv_band,
        "proposal_flops_frequency": proposal_rest + conv_frequency,
        "proposal_flops_valid_cells": proposal_rest + conv_valid,
        "classifier_flops": classifier_flops,
        "total_flops_whole": proposal_rest + conv_whole + classifier_flops,
        "total_flops_band": proposal_rest + conv_band + classifier_flops,
        "total_flops_valid_cells": proposal_rest + conv_valid + classifier_flops,
    }


# The report's Table 1 (docs/design.md section 9); every other field is the paper's.
TABLE_1 = (
    (
        "1 S-2D-TAN",
        {"num_clips": 256, "scale_layers": (64, 32, 32), "map_mode": "s2dtan"},
    ),
    ("2 2D-TAN", {"num_clips": 128, "scale_layers": (128,), "map_mode": "2dtan"}),
    ("3 2D-TAN", {"num_clips": 64, "scale_layers": (64,), "map_mode": "2dtan"}),
    (
        "4 2D-TAN",
        {
            "num_clips": 64,
            "scale_layers": (64,),
            "map_mode": "2dtan",
            "kernel_size": 1,
            "num_conv_layers": 1,
        },
    ),
)


def format_table(rows):
    """A text table of `model_cost` for (label, ModelConfig) rows."""
    header = (
        f"{'row':<12}{'N':>5}{'K':>3}{'L':>3}{'P':>7}{'cells':>7}"
        f"{'prop M':>9}{'class M':>9}{'conv whole':>12}{'conv band':>11}"
        f"{'conv valid':>12}{'band/valid':>11}{'conv freq':>11}{'total band':>12}"
    )
    lines = [header, "-" * len(header)]
    for label, config in rows:
        cost = model_cost(config)
        lines.append(
            f"{label:<12}{config.num_clips:>5}{config.kernel_size:>3}"
            f"{config.num_conv_layers:>3}{cost['num_proposals']:>7}{cost['map_cells']:>7}"
            f"{cost['proposal_params'] / 1e6:>9.2f}{cost['classifier_params'] / 1e6:>9.2f}"
            f"{_tflop(cost['map_conv_flops_whole']):>12}"
            f"{_tflop(cost['map_conv_flops_band']):>11}"
            f"{_tflop(cost['map_conv_flops_valid_cells']):>12}"
            f"{cost['map_conv_flops_band'] / cost['map_conv_flops_valid_cells']:>11.3f}"
            f"{_tflop(cost['map_conv_flops_frequency']):>11}"
            f"{_tflop(cost['total_flops_band']):>12}"
        )
    return "\n".join(lines)


def _tflop(flops):
    return f"{flops / 1e12:.3f}"


def main():
    paper = ModelConfig()
    print("Paper config:", paper.to_dict())
    for key, value in model_cost(paper).items():
        print(f"  {key:<28}{value:>20,}")
    print()
    print(
        "Table 1 of the report (row 1 is the paper config). Per video; params in millions (prop = proposal network), FLOPs in TFLOP"
    )
    print(
        "(2 per multiply-add); conv = the shared map convs on whole maps, on the bands by taps, on the proposal\n"
        "cells only (valid), or in the band's frequency form (freq; BandMapConv's on CPUs where it multiplies\n"
        "at most half the taps' count);\n"
        "total band = both networks with the band convs by taps."
    )
    print(format_table([(label, ModelConfig(**fields)) for label, fields in TABLE_1]))


if __name__ == "__main__":
    main()
