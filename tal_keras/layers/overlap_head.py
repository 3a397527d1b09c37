"""The overlap head: P_over for every proposal (docs/design.md section 5)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tal_keras")
class OverlapHead(keras.layers.Layer):
    """1x1 conv H -> 1 and a sigmoid: the overlap score P_over per proposal.

    Applied per proposal in lattice order, which is the same as 2D-TAN's
    1x1 conv over the map followed by `* map_mask` and reading the proposal
    cells back.

    Args:
        cell_bias: False (the report) or True: a learned bias per proposal
            (lattice cell), zero at the start, added to the logit. The map
            convs are translation invariant, so without it the network can
            tell a proposal's length and place only through its features;
            with it, it can learn the length and position prior a
            content-blind baseline uses (a departure, docs/benchmarks.md).
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input: float [batch, num_proposals, hidden_size], lattice order; or a
        list [that, logits], logits float [batch, num_proposals] added to
        the overlap logit (`ClassMeanEvidence`).
    Output shape: float [batch, num_proposals], in (0, 1).

    Example:
        >>> head = OverlapHead()
        >>> head(np.zeros((2, 17472, 512), "float32")).shape
        (2, 17472)
    """

    def __init__(self, cell_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.cell_bias = bool(cell_bias)
        self.projection = keras.layers.Dense(
            1, dtype=self.dtype_policy, name="projection"
        )

    def build(self, input_shape):
        input_shape = features_shape(input_shape)
        self.projection.build(input_shape)
        self.cell_biases = None
        if self.cell_bias:
            self.cell_biases = self.add_weight(
                shape=(input_shape[-2],), initializer="zeros", name="cell_biases"
            )

    def call(self, inputs):
        extra = None
        if isinstance(inputs, (list, tuple)):
            inputs, extra = inputs
        logits = ops.squeeze(self.projection(inputs), axis=-1)
        if extra is not None:
            logits = logits + ops.cast(extra, logits.dtype)
        if self.cell_biases is not None:
            logits = logits + ops.cast(self.cell_biases, logits.dtype)
        return ops.sigmoid(logits)

    def get_config(self):
        config = super().get_config()
        config.update({"cell_bias": self.cell_bias})
        return config

    def compute_output_shape(self, input_shape):
        return tuple(features_shape(input_shape)[:-1])


def features_shape(input_shape):
    """The features' shape of a head's input shape (that shape, or the
    first of [features, extra logits]); `ClassHead` takes the same inputs."""
    if isinstance(input_shape, (list, tuple)) and isinstance(
        input_shape[0], (list, tuple)
    ):
        return input_shape[0]
    return input_shape
