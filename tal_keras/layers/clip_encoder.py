"""Clip encoder: the 1x1 conv D -> H + ReLU that turns clip features into the
clip sequence x[0..N-1] (DESIGN.md section 2)."""

import keras


@keras.saving.register_keras_serializable(package="tal_keras")
class ClipEncoder(keras.layers.Layer):
    """1x1 temporal conv D -> H followed by a ReLU, applied to every clip.

    A 1x1 conv over time is a dense layer applied per clip, so it is one
    `Dense` on the last axis.

    Args:
        hidden_size: H, output channels (DESIGN.md: 512).
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_clips, feature_dim], the clip features.
    Output shape: float [batch, num_clips, hidden_size], non-negative.

    Example:
        >>> encoder = ClipEncoder(hidden_size=512)
        >>> encoder(np.zeros((2, 256, 2304), "float32")).shape
        (2, 256, 512)
    """

    def __init__(self, hidden_size, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.projection = keras.layers.Dense(
            hidden_size, activation="relu", dtype=self.dtype_policy, name="projection"
        )

    def build(self, input_shape):
        self.projection.build(input_shape)

    def call(self, clip_features):
        return self.projection(clip_features)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_size": self.hidden_size})
        return config
