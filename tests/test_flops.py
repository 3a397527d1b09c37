"""model_cost: the paper's figures, hand counts, and the printout."""

import dataclasses

from python_process import run_python

from tal_keras.config import ModelConfig
from tal_keras.flops import model_cost


def test_paper_config_costs():
    cost = model_cost(ModelConfig())
    assert cost["num_proposals"] == 17472
    assert cost["map_cells"] == 256**2 + 96**2 + 32**2
    # Per cell: 4 layers x 81 taps x 512 x 512 multiply-adds, 2 FLOPs each.
    per_cell = 2 * 4 * 81 * 512 * 512
    assert cost["map_conv_flops_whole"] == per_cell * 75776
    assert cost["map_conv_flops_valid_cells"] == per_cell * 17472
    assert round(cost["map_conv_flops_whole"] / 1e12, 1) == 12.9
    assert round(cost["map_conv_flops_valid_cells"] / 1e12, 1) == 3.0
    # Band rows per tap, zero row included: layers 1-2 multiply their input
    # band (17,472 and 22,428 cells), layers 3-4 their output band.
    per_row = 2 * 81 * 512 * 512
    assert cost["map_conv_flops_band"] == per_row * (17473 + 22429 + 22429 + 17473)
    assert cost["map_conv_flops_band"] <= 1.3 * cost["map_conv_flops_valid_cells"]
    assert round(cost["map_conv_flops_band"] / 1e12, 3) == 3.389
    assert (
        cost["proposal_flops_whole"] - cost["proposal_flops_band"]
        == cost["map_conv_flops_whole"] - cost["map_conv_flops_band"]
    )
    assert (
        cost["total_flops_band"]
        == cost["proposal_flops_band"] + cost["classifier_flops"]
    )
    assert cost["proposal_params"] == (
        (2304 * 512 + 512) + (512 * 512 + 512) + 4 * (81 * 512 * 512 + 512) + (512 + 1)
    )
    assert cost["classifier_params"] == (2304 * 512 + 512) + (512 * 200 + 200)
    assert cost["classifier_flops"] == 2 * 256 * 2304 * 512 + 2 * 17472 * 512 * 200
    assert (
        cost["total_flops_whole"]
        == cost["proposal_flops_whole"] + cost["classifier_flops"]
    )
    assert cost["total_params"] == cost["proposal_params"] + cost["classifier_params"]


def test_band_flops_between_valid_cells_and_whole_maps():
    for fields in (
        {"num_clips": 64, "scale_layers": (64,), "map_mode": "2dtan"},
        {"map_mode": "2dtan"},
        {"num_clips": 64, "scale_layers": (16, 8, 8), "kernel_size": 5},
    ):
        cost = model_cost(ModelConfig(**fields))
        assert (
            cost["map_conv_flops_valid_cells"]
            < cost["map_conv_flops_band"]
            < cost["map_conv_flops_whole"]
        )
    # K 1, L 1 (Table 1, row 4): the band is the proposal cells, plus the
    # zero row.
    row_4 = ModelConfig(
        num_clips=64,
        scale_layers=(64,),
        map_mode="2dtan",
        kernel_size=1,
        num_conv_layers=1,
    )
    cost = model_cost(row_4)
    assert cost["map_conv_flops_band"] == 2 * 512 * 512 * (2080 + 1)


def test_map_modes_and_conv_proposal_features():
    dense = model_cost(ModelConfig(num_clips=64, scale_layers=(64,), map_mode="2dtan"))
    assert dense["num_proposals"] == 64 * 65 // 2
    assert dense["map_cells"] == 64 * 64
    sparse_in_one_map = model_cost(ModelConfig(map_mode="2dtan"))
    assert sparse_in_one_map["map_cells"] == 256 * 256
    config = ModelConfig(num_clips=16, scale_layers=(4, 2, 2), hidden_size=8)
    conv = model_cost(dataclasses.replace(config, proposal_features="conv"))
    pool = model_cost(config)
    # Kernels 1, 2, 2, 2 | 3, 2 | 3, 2, each 8 x 8 plus a bias.
    conv_params = (1 + 2 + 2 + 2 + 3 + 2 + 3 + 2) * 64 + 8 * 8
    assert conv["proposal_params"] - pool["proposal_params"] == conv_params
    assert conv["classifier_params"] - pool["classifier_params"] == conv_params
    # Output positions 16, 15, 14, 13 | 6, 5 | 2, 1.
    assert conv["proposal_features_flops"] == 2 * 64 * (
        16 + 15 * 2 + 14 * 2 + 13 * 2 + 6 * 3 + 5 * 2 + 2 * 3 + 1 * 2
    )


def test_printout_runs_without_tensorflow():
    code = (
        "import runpy, sys; runpy.run_module('tal_keras.flops', run_name='__main__'); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    result = run_python(["-c", code], timeout=120)
    assert "12.872" in result.stdout and "2.968" in result.stdout
    assert "3.389" in result.stdout and "map_conv_flops_band" in result.stdout
    assert "4 2D-TAN" in result.stdout
