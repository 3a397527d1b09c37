"""Both losses against numpy, their edge cases and their serialisation."""

import keras
import numpy as np
import pytest

from tal_keras.losses import ProposalClassLoss, ScaledOverlapLoss


def numpy_overlap_loss(max_iou, scores, t_min=0.5, t_max=1.0, positive_weight=1.0):
    total, count = 0.0, 0
    for video_iou, video_scores in zip(max_iou, scores):
        for iou, score in zip(video_iou, video_scores):
            target = min(max((iou - t_min) / (t_max - t_min), 0.0), 1.0)
            weight = 1.0 + (positive_weight - 1.0) * target
            total += -weight * (
                target * np.log(score) + (1 - target) * np.log(1 - score)
            )
            count += 1
    return total / count


def numpy_class_loss(labels, probabilities):
    total, count = 0.0, 0
    for video_labels, video_probabilities in zip(labels, probabilities):
        for label, row in zip(video_labels, video_probabilities):
            if label >= 0:
                total += -np.log(row[label])
                count += 1
    return total / count if count else 0.0


def test_scaled_overlap_loss_matches_numpy():
    rng = np.random.default_rng(0)
    max_iou = rng.uniform(0, 1, size=(3, 20)).astype("float32")
    max_iou[0, :3] = [0.5, 1.0, 0.0]
    scores = rng.uniform(0.05, 0.95, size=(3, 20)).astype("float32")
    loss = float(ScaledOverlapLoss()(max_iou, scores))
    np.testing.assert_allclose(loss, numpy_overlap_loss(max_iou, scores), rtol=1e-5)
    custom = float(ScaledOverlapLoss(t_min=0.3, t_max=0.7)(max_iou, scores))
    np.testing.assert_allclose(
        custom, numpy_overlap_loss(max_iou, scores, 0.3, 0.7), rtol=1e-5
    )


def test_scaled_overlap_loss_positive_weight_matches_numpy():
    rng = np.random.default_rng(2)
    max_iou = rng.uniform(0, 1, size=(2, 30)).astype("float32")
    scores = rng.uniform(0.05, 0.95, size=(2, 30)).astype("float32")
    weighted = float(ScaledOverlapLoss(t_min=0.1, positive_weight=4.0)(max_iou, scores))
    np.testing.assert_allclose(
        weighted, numpy_overlap_loss(max_iou, scores, 0.1, 1.0, 4.0), rtol=1e-5
    )
    # Below t_min the weight is 1: only the cells with a positive target change.
    low = np.full((1, 4), 0.05, "float32")
    np.testing.assert_allclose(
        float(ScaledOverlapLoss(t_min=0.1, positive_weight=4.0)(low, scores[:1, :4])),
        float(ScaledOverlapLoss(t_min=0.1)(low, scores[:1, :4])),
        rtol=1e-6,
    )
    assert weighted > float(ScaledOverlapLoss(t_min=0.1)(max_iou, scores))


def test_scaled_overlap_loss_targets():
    # Score equal to the target gives the target's entropy; 0 at y = 0 or 1.
    max_iou = np.array([[0.2, 0.5, 1.0, 0.75]], "float32")
    perfect = np.array([[1e-9, 1e-9, 1.0, 0.5]], "float32")
    np.testing.assert_allclose(
        float(ScaledOverlapLoss()(max_iou, perfect)), np.log(2) / 4, rtol=1e-4
    )


def test_proposal_class_loss_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 20, 4))
    probabilities = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(
        "float32"
    )
    labels = rng.integers(-1, 4, size=(3, 20))
    labels[2] = -1  # a video with no labelled proposal still counts in the batch
    loss = float(ProposalClassLoss()(labels, probabilities))
    np.testing.assert_allclose(loss, numpy_class_loss(labels, probabilities), rtol=1e-5)


def loss_gradient(loss_fn, labels, probabilities):
    """d loss / d probabilities on the current backend (TensorFlow or JAX)."""
    if keras.backend.backend() == "jax":
        import jax

        return np.asarray(jax.grad(lambda p: loss_fn(labels, p))(probabilities))
    import tensorflow as tf

    probabilities = tf.constant(probabilities)
    with tf.GradientTape() as tape:
        tape.watch(probabilities)
        loss = loss_fn(labels, probabilities)
    return tape.gradient(loss, probabilities).numpy()


def test_proposal_class_loss_without_labels_is_zero_with_zero_gradient():
    labels = np.full((2, 5), -1)
    probabilities = np.full((2, 5, 3), 1 / 3, "float32")
    loss_fn = ProposalClassLoss()
    assert float(loss_fn(labels, probabilities)) == 0.0
    np.testing.assert_array_equal(loss_gradient(loss_fn, labels, probabilities), 0.0)


def test_proposal_class_loss_gradient_reaches_only_labelled_cells():
    labels = np.array([[2, -1], [-1, -1]])
    probabilities = np.full((2, 2, 3), 0.25, "float32")
    gradient = loss_gradient(ProposalClassLoss(), labels, probabilities)
    expected = np.zeros_like(gradient)
    expected[0, 0, 2] = -1 / 0.25  # one labelled cell: d(-log p)/dp
    np.testing.assert_allclose(gradient, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "loss, expected",
    [
        (
            ScaledOverlapLoss(t_min=0.4, t_max=0.9, positive_weight=3.0),
            {"t_min": 0.4, "t_max": 0.9, "positive_weight": 3.0},
        ),
        (ProposalClassLoss(name="classes"), {"name": "classes"}),
    ],
)
def test_losses_serialise(loss, expected):
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    config = restored.get_config()
    for key, value in expected.items():
        assert config[key] == value


def test_scaled_overlap_loss_rejects_empty_range():
    with pytest.raises(ValueError, match="t_max"):
        ScaledOverlapLoss(t_min=0.7, t_max=0.7)
    with pytest.raises(ValueError, match="positive_weight"):
        ScaledOverlapLoss(positive_weight=0.0)


def test_train_config_positive_weight_reaches_the_proposal_loss():
    from tal_keras.config import TrainConfig
    from tal_keras.networks import NETWORKS

    train = TrainConfig(overlap_t_min=0.1, overlap_positive_weight=3.0)
    loss = NETWORKS["proposal"].loss(train)
    assert (loss.t_min, loss.positive_weight) == (0.1, 3.0)
    assert NETWORKS["proposal"].loss(TrainConfig()).positive_weight == 1.0
    with pytest.raises(ValueError, match="overlap_positive_weight"):
        TrainConfig(overlap_positive_weight=-1.0)


def test_padding_videos_leave_both_losses_and_their_gradients_unchanged():
    import tensorflow as tf

    from tal_keras.pipeline import PADDING

    rng = np.random.default_rng(3)
    max_iou = rng.uniform(0, 1, size=(3, 20)).astype("float32")
    max_iou[2] = 0.0  # a real video without any overlap still counts
    labels = rng.integers(-1, 4, size=(3, 20)).astype("int32")
    scores = rng.uniform(0.05, 0.95, size=(5, 20)).astype("float32")
    probabilities = rng.dirichlet(np.ones(4), size=(5, 20)).astype("float32")
    padded_iou = np.concatenate([max_iou, np.full((2, 20), PADDING, "float32")])
    padded_labels = np.concatenate([labels, np.full((2, 20), PADDING, "int32")])
    cases = [
        (ScaledOverlapLoss(), max_iou, padded_iou, scores),
        (ProposalClassLoss(), labels, padded_labels, probabilities),
    ]
    for loss, targets, padded_targets, predictions in cases:
        variable = tf.Variable(predictions)
        with tf.GradientTape(persistent=True) as tape:
            values = tf.identity(variable)
            alone = loss(targets, values[:3])
            with_padding = loss(padded_targets, values)
        np.testing.assert_allclose(float(with_padding), float(alone), rtol=1e-6)
        gradient = tape.gradient(with_padding, variable).numpy()
        np.testing.assert_allclose(
            gradient[:3], tape.gradient(alone, variable).numpy()[:3], atol=1e-7
        )
        assert not gradient[3:].any()
    # No padding: the factor is exactly one.
    assert float(ScaledOverlapLoss()(max_iou, scores[:3])) == pytest.approx(
        numpy_overlap_loss(max_iou, scores[:3]), rel=1e-5
    )
