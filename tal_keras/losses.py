"""Training losses of the two networks (docs/design.md section 6)."""

import keras
from keras import ops

# Probabilities are clipped to [EPSILON, 1 - EPSILON] before the log, as
# keras.losses.binary_crossentropy does.
EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="tal_keras")
class ScaledOverlapLoss(keras.losses.Loss):
    """Binary cross-entropy of P_over against the rescaled max IoU.

    y = clip((t - t_min) / (t_max - t_min), 0, 1), t = a proposal's max IoU
    with the video's ground truth (2D-TAN's bce_rescale_loss without its
    bias). With positive_weight W != 1 each proposal's term is multiplied by
    1 + (W - 1) * y (a departure from the report: the high-IoU proposals,
    the few that the top of the ranking needs, weigh more). Averaged over the
    proposals of each video, then over the batch's videos; a padding video
    (every target < 0, `pipeline.PADDING`) is left out of both. Every
    lattice proposal is valid in every video (all are resampled to N clips),
    so no other mask is needed. The average is returned as per-video values
    whose mean is that average (as `ProposalClassLoss`): keep the default
    reduction "sum_over_batch_size".

    Args:
        t_min: IoU at and below which the target is 0 (docs/design.md: 0.5).
        t_max: IoU at and above which the target is 1 (docs/design.md: 1.0).
        positive_weight: W > 0, the weight of a proposal of target 1 relative
            to one of target 0 (the report: 1, unweighted).
        name, reduction, dtype: as `keras.losses.Loss`.

    y_true: float [batch, num_proposals], max IoU in [0, 1] (< 0 all over a
        padding video).
    y_pred: float [batch, num_proposals], P_over in (0, 1).
    Returns: scalar (default reduction).

    Example:
        >>> loss = ScaledOverlapLoss()
        >>> loss(np.array([[0.4, 1.0]]), np.array([[0.1, 0.9]]))  # ~0.105
    """

    def __init__(
        self,
        t_min=0.5,
        t_max=1.0,
        positive_weight=1.0,
        name="scaled_overlap_loss",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not t_max > t_min:
            raise ValueError(
                f"t_max must exceed t_min, got t_min={t_min}, t_max={t_max}."
            )
        if not positive_weight > 0:
            raise ValueError(f"positive_weight must be > 0, got {positive_weight}.")
        self.t_min = t_min
        self.t_max = t_max
        self.positive_weight = positive_weight

    def call(self, y_true, y_pred):
        targets = ops.clip((y_true - self.t_min) / (self.t_max - self.t_min), 0.0, 1.0)
        scores = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
        cross_entropy = -(
            targets * ops.log(scores) + (1.0 - targets) * ops.log(1.0 - scores)
        )
        if self.positive_weight != 1.0:
            cross_entropy = cross_entropy * (
                1.0 + (self.positive_weight - 1.0) * targets
            )
        real = ops.cast(ops.max(y_true, axis=-1) >= 0.0, cross_entropy.dtype)
        per_video = ops.mean(cross_entropy, axis=-1) * real
        batch_size = ops.cast(ops.shape(real)[0], real.dtype)
        replicas, real_count = _sum_over_replicas(ops.sum(real))
        # Exactly 1 in a batch without padding (one replica).
        return per_video * (batch_size * replicas / ops.maximum(real_count, 1.0))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "t_min": self.t_min,
                "t_max": self.t_max,
                "positive_weight": self.positive_weight,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tal_keras")
class ProposalClassLoss(keras.losses.Loss):
    """Cross-entropy of the class probabilities on the labelled proposals.

    Averaged over all proposals of the batch whose label is >= 0 (those whose
    max IoU exceeds 0.5; tal_keras.targets sets the others to -1, so the IoU
    threshold lives there only). A batch with no labelled proposal gives 0.
    The batch-wide average is returned as per-video values whose mean is that
    average, so keep the default reduction "sum_over_batch_size". Under
    MirroredStrategy the labelled cells are counted over all replicas, so
    that the gradient is the one device's.

    Args:
        name, reduction, dtype: as `keras.losses.Loss`.

    y_true: int [batch, num_proposals], class index, -1 for "no class".
    y_pred: float [batch, num_proposals, num_classes], probabilities.
    Returns: scalar (default reduction).

    Example:
        >>> loss = ProposalClassLoss()
        >>> loss(np.array([[1, -1]]), np.array([[[0.5, 0.5], [0.9, 0.1]]]))  # log 2
    """

    def __init__(
        self, name="proposal_class_loss", reduction="sum_over_batch_size", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        # Loss.__call__ casts y_true to float; class indices are exact in it.
        labels = ops.cast(ops.round(y_true), "int32")
        labelled = ops.cast(labels >= 0, y_pred.dtype)
        chosen = ops.take_along_axis(y_pred, ops.maximum(labels, 0)[..., None], axis=-1)
        cross_entropy = -ops.log(ops.clip(ops.squeeze(chosen, axis=-1), EPSILON, 1.0))
        per_video = ops.sum(cross_entropy * labelled, axis=-1)
        batch_size = ops.cast(ops.shape(labelled)[0], y_pred.dtype)
        replicas, labelled_count = _sum_over_replicas(ops.sum(labelled))
        return per_video * batch_size * replicas / ops.maximum(labelled_count, 1.0)


def _sum_over_replicas(value):
    """(replicas, value summed over them) in a TensorFlow replica context of
    several replicas (MirroredStrategy), else (1, value).

    Keras divides each replica's loss by the replica count and sums the
    gradients, so a loss averaged over the labelled cells of the whole batch
    needs the count of all replicas, not of its own share of the batch.
    """
    if keras.backend.backend() != "tensorflow":
        return 1.0, value  # JAX's DataParallel computes on the whole batch
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return 1.0, value
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, value)
    return float(context.num_replicas_in_sync), total
