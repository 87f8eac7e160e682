"""The one test harness of the grdnet_tf layers and networks (after keras-hub's
`run_layer_test`): config round trip, `.keras` save/load round trip and `tf.train.Checkpoint`
round trip, each with bit-identical outputs."""
import keras
import numpy as np
import tensorflow as tf


def _assert_same_outputs(expected, actual):
    expected, actual = tf.nest.flatten(expected), tf.nest.flatten(actual)
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        np.testing.assert_array_equal(a, b)


def _keras_model(layer, inputs):
    """`layer` itself when it is a Model, else a functional Model around it."""
    if isinstance(layer, keras.Model):
        return layer
    x = keras.Input(inputs.shape[1:], batch_size=None)
    return keras.Model(x, layer(x))


def run_layer_test(make, inputs, tmp_path, prepare=None):
    """Checks the serialisation contracts of the layer (or model) ``make()`` builds.

    1. ``from_config(get_config())`` gives a layer with the same config;
    2. a ``.keras`` save/load round trip gives the same config and the same outputs;
    3. a ``tf.train.Checkpoint`` holds every variable (Keras 3 lists of layers would be
       invisible to it) and restores all of them into a fresh ``make()``: same outputs.

    Args:
      make: () -> a new, unbuilt layer; two calls must give layers of the same structure.
      inputs: one input batch (numpy or tensor).
      tmp_path: folder for the saved files.
      prepare: optional ``prepare(layer)`` run after one training call (which builds the
        layer and moves batch-norm statistics away from their initial values), e.g. to set
        weights that stay at their initial values otherwise.
    Returns:
      (layer, checkpoint keys of its variables), for test-specific assertions.
    """
    layer = make()
    layer(inputs, training=True)
    if prepare is not None:
        prepare(layer)
    expected = layer(inputs)

    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config

    model = _keras_model(layer, inputs)
    path = str(tmp_path / "layer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    _assert_same_outputs(expected, loaded(inputs))
    loaded_layer = loaded if model is layer else loaded.layers[-1]
    assert loaded_layer.get_config() == config

    checkpoint_path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    keys = [name for name, _ in tf.train.list_variables(checkpoint_path)
            if name.endswith("VARIABLE_VALUE") and not name.startswith("save_counter")]
    assert len(keys) == len(layer.variables)
    fresh = make()
    fresh(inputs)
    tf.train.Checkpoint(layer=fresh).restore(checkpoint_path).assert_consumed()
    _assert_same_outputs(expected, fresh(inputs))
    return layer, keys
