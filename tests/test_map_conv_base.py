"""MapConvBase: the arguments, checks and config the map conv layers share,
and the map modes and kernel check defined once (lattice.check_map_conv)."""

import pytest

from tal_keras.config import ModelConfig
from tal_keras.lattice import MAP_MODES, Lattice, check_map_conv
from tal_keras.layers import BandMapConv, MaskedMapConv, SubMapNetwork
from tal_keras.map_band import MapBand

LAYERS = (BandMapConv, MaskedMapConv, SubMapNetwork)
# The keys saved in .keras files before the base class existed: unchanged.
SAVED_KEYS = {
    "num_clips",
    "scale_layers",
    "hidden_size",
    "kernel_size",
    "num_conv_layers",
    "map_mode",
}


@pytest.mark.parametrize("layer_class", LAYERS)
def test_config_keys_are_the_saved_ones_and_round_trip(layer_class):
    layer = layer_class(16, (4, 2, 2), 8, kernel_size=3, num_conv_layers=2, name="m")
    config = layer.get_config()
    extra = {
        SubMapNetwork: {"conv_implementation"},
        BandMapConv: {"frequency"},  # `--conv_implementation=frequency`
    }.get(layer_class, set())
    assert SAVED_KEYS | extra <= set(config)
    assert not (set(config) - SAVED_KEYS - extra) - {"name", "trainable", "dtype"}
    assert config["scale_layers"] == [4, 2, 2] and config["kernel_size"] == 3
    again = layer_class.from_config(config)
    assert again.get_config() == config


@pytest.mark.parametrize("layer_class", LAYERS)
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"kernel_size": 4}, "odd"),
        ({"kernel_size": 0}, "odd"),
        ({"map_mode": "3dtan"}, "map_mode must be one of"),
        ({"scale_layers": (4, 2, 3)}, "longer than num_clips"),
    ],
)
def test_every_map_layer_checks_its_arguments_alike(layer_class, arguments, message):
    values = {"num_clips": 16, "scale_layers": (4, 2, 2), "hidden_size": 8}
    with pytest.raises(ValueError, match=message):
        layer_class(**{**values, **arguments})


def test_weights_live_in_the_conv_layers_of_the_map_convs_only():
    for layer_class in (BandMapConv, MaskedMapConv):
        layer = layer_class(16, (4, 2, 2), 8, kernel_size=3, num_conv_layers=2)
        assert [conv.name for conv in layer.convs] == ["conv_0", "conv_1"]
    network = SubMapNetwork(16, (4, 2, 2), 8, kernel_size=3, num_conv_layers=2)
    assert not hasattr(network, "convs")
    assert len(network.map_conv.convs) == 2


def test_config_band_and_layers_share_one_kernel_and_mode_check():
    assert MAP_MODES == ("s2dtan", "2dtan")
    messages = set()
    for make in (
        lambda: check_map_conv("s2dtan", 4),
        lambda: ModelConfig(kernel_size=4),
        lambda: MapBand(Lattice(16, (4, 2, 2)), 4, 2),
        lambda: MaskedMapConv(16, (4, 2, 2), 8, kernel_size=4),
    ):
        with pytest.raises(ValueError) as error:
            make()
        messages.add(str(error.value))
    assert messages == {
        "kernel_size must be a positive odd integer ('same' padding), got 4."
    }
