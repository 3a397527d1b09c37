"""The one layer test every layer file uses (keras-hub's `run_layer_test`):
construct, call, compare with a numpy reference, `.keras` round trip."""

import json

import keras
import numpy as np


def to_numpy(outputs):
    """Keras outputs (a tensor or a list of them) as numpy arrays."""
    if isinstance(outputs, (list, tuple)):
        return [keras.ops.convert_to_numpy(output) for output in outputs]
    return keras.ops.convert_to_numpy(outputs)


def round_trip(layer, inputs, folder):
    """(outputs, outputs of the reloaded model, the reloaded layer): a
    one-layer model of `layer` on `inputs` (an array or a list of arrays)
    saved as FOLDER/layer.keras and loaded back."""
    many = isinstance(inputs, (list, tuple))
    model_inputs = [
        keras.Input(np.shape(item)[1:]) for item in (inputs if many else [inputs])
    ]
    if not many:
        model_inputs = model_inputs[0]
    model = keras.Model(model_inputs, layer(model_inputs))
    path = folder / "layer.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    return to_numpy(model(inputs)), to_numpy(loaded(inputs)), loaded.layers[-1]


def run_layer_test(
    layer_class,
    arguments,
    inputs,
    folder,
    reference=None,
    expected_shapes=None,
    atol=1e-5,
    set_weights=None,
):
    """Checks one layer; returns its outputs (numpy).

    Args:
        layer_class: the layer's class.
        arguments: its constructor's arguments; each must come back from
            the reloaded layer's `get_config()`.
        inputs: an array or a list of arrays, batch first.
        folder: a temporary folder (pytest's tmp_path).
        reference: (layer, inputs) -> the expected outputs, a numpy
            reference written without the layer's code; None: none.
        expected_shapes: the output shapes (a tuple or a list of tuples).
        atol: of the comparison with `reference`.
        set_weights: layer -> None, run once the layer is built (e.g. to
            give weights that start at zero values that matter).
    """
    layer = layer_class(**arguments)
    layer(inputs)  # builds it
    if set_weights is not None:
        set_weights(layer)
    outputs, reloaded_outputs, loaded = round_trip(layer, inputs, folder)
    listed = outputs if isinstance(outputs, list) else [outputs]
    if expected_shapes is not None:
        shapes = (
            expected_shapes if isinstance(expected_shapes, list) else [expected_shapes]
        )
        assert [tuple(output.shape) for output in listed] == [tuple(s) for s in shapes]
    if reference is not None:
        expected = reference(layer, inputs)
        for actual, wanted in zip(
            listed, expected if isinstance(expected, list) else [expected]
        ):
            np.testing.assert_allclose(actual, wanted, atol=atol, rtol=1e-5)
    for actual, reloaded in zip(
        listed,
        reloaded_outputs if isinstance(reloaded_outputs, list) else [reloaded_outputs],
    ):
        np.testing.assert_array_equal(reloaded, actual)
    assert type(loaded) is layer_class
    config = loaded.get_config()
    for key, value in json.loads(json.dumps(arguments)).items():
        assert config[key] == value, key
    assert [w.shape for w in loaded.weights] == [w.shape for w in layer.weights]
    return outputs
