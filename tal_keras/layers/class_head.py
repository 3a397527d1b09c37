"""The classifier head: class probabilities per proposal (docs/design.md section 6)."""

import keras
from keras import ops

from tal_keras.layers.overlap_head import features_shape


@keras.saving.register_keras_serializable(package="tal_keras")
class ClassHead(keras.layers.Layer):
    """Dense(C) and a softmax over the classes, per proposal; with the
    class-mean matches (`ClassMeanMatches`, the `tuned` recipe), each class
    k's logit also gets b_s start_k + b_e end_k + b_b body_k, the b learned
    and started at 1, so that the classifier can name the class whose
    start, end and body a proposal matches (a class without training
    instances has matches 0, and its own bias decides).

    Args:
        num_classes: C, action classes (HACS: 200).
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_proposals, hidden_size], lattice order,
        or a list of that and the class-mean matches [batch, num_proposals,
        num_classes, 3].
    Output shape: float [batch, num_proposals, num_classes], rows sum to 1.

    Example:
        >>> head = ClassHead(num_classes=200)
        >>> head(np.zeros((2, 17472, 512), "float32")).shape
        (2, 17472, 200)
    """

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.projection = keras.layers.Dense(
            num_classes, dtype=self.dtype_policy, name="projection"
        )

    def build(self, input_shape):
        self.projection.build(features_shape(input_shape))
        self.match_scales = None
        if features_shape(input_shape) is not input_shape:
            self.match_scales = self.add_weight(
                shape=(3,), initializer="ones", name="match_scales"
            )

    def call(self, inputs):
        matches = None
        if isinstance(inputs, (list, tuple)):
            inputs, matches = inputs
        logits = self.projection(inputs)
        if matches is not None:
            matches = ops.cast(matches, logits.dtype)
            logits = logits + ops.sum(
                matches * ops.cast(self.match_scales, logits.dtype), axis=-1
            )
        return ops.softmax(logits, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*features_shape(input_shape)[:-1], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes})
        return config
