"""The overlap head: P_over for every proposal (DESIGN.md section 5)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tal_keras")
class OverlapHead(keras.layers.Layer):
    """1x1 conv H -> 1 and a sigmoid: the overlap score P_over per proposal.

    Applied per proposal in lattice order, which is the same as 2D-TAN's
    1x1 conv over the map followed by `* map_mask` and reading the proposal
    cells back.

    Args:
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_proposals, hidden_size], lattice order.
    Output shape: float [batch, num_proposals], in (0, 1).

    Example:
        >>> head = OverlapHead()
        >>> head(np.zeros((2, 17472, 512), "float32")).shape
        (2, 17472)
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.projection = keras.layers.Dense(
            1, dtype=self.dtype_policy, name="projection"
        )

    def build(self, input_shape):
        self.projection.build(input_shape)

    def call(self, map_features):
        return ops.sigmoid(ops.squeeze(self.projection(map_features), axis=-1))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])
