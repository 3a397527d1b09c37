"""Class prototypes: per-proposal class logits of the classifier from the
class means the proposal network's prototype layers use (an optional
departure from the report, docs/benchmarks.md)."""

import keras
from keras import ops

from tal_keras.layers.boundary_prototypes import clip_windows
from tal_keras.layers.clip_encoder import standardize_per_video
from tal_keras.layers.proposal_logits import WindowPrototypeLogits


@keras.saving.register_keras_serializable(package="tal_keras")
class ClassPrototypes(WindowPrototypeLogits):
    """Per-proposal logits of each class k:
    b_s start_k(first clip) + b_e end_k(last clip) + b_b body_k.

    start_k(n) is the dot product of clip n's window (the standardised
    features of clips n - c .. n + c, `clip_windows`) with class k's start
    prototype, minus its mean over the video's clips; end_k(n) likewise with
    its end prototype. body_k is the mean dot product of the proposal's
    standardised clips with class k's body prototype minus that of the
    video's other clips. These are the scores `BoundaryPrototypes` and
    `BodyPrototypes` take the best class of; here every class keeps its own,
    so that the classifier can name the class whose start, end and body a
    proposal matches. b_s, b_e and b_b are learned scales.

    The prototypes are not trained: training sets them to each class's mean
    start and end window (`class_mean_prototypes`) and mean clip inside its
    instances (`class_mean_bodies`) over the training videos; a class
    without instances keeps zeros, and so a logit of 0 here, which the
    classifier's own bias outweighs.

    Args:
        num_clips: N.
        scale_layers: pooling layers per scale (the lattice).
        num_prototypes: K, one per class.
        context: c, neighbours on each side in a clip's window.
        initial_scales: (b_s, b_e, b_b) at the start.
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_clips, D], the clip features (as given to
        the network; standardised per video here).
    Output shape: float [batch, num_proposals, K], logits in lattice order.

    Example:
        >>> layer = ClassPrototypes(16, (4, 2, 2), num_prototypes=3)
        >>> layer(np.zeros((2, 16, 8))).shape
        (2, 72, 3)
    """

    def __init__(
        self,
        num_clips,
        scale_layers,
        num_prototypes,
        context=1,
        initial_scales=(1.0, 1.0, 1.0),
        **kwargs,
    ):
        super().__init__(
            num_clips, scale_layers, num_prototypes, context, initial_scales, **kwargs
        )

    def build(self, input_shape):
        dim = input_shape[-1]
        width = (2 * self.context + 1) * dim
        self.start_prototypes = self.add_prototypes("start_prototypes", width)
        self.end_prototypes = self.add_prototypes("end_prototypes", width)
        self.body_prototypes = self.add_prototypes("body_prototypes", dim)
        self.scales = self.add_scales()
        self.build_lattice()

    def call(self, clip_features):
        standardized = standardize_per_video(clip_features)
        windows = clip_windows(standardized, self.context)
        boundaries = self.boundary_matches(
            windows, self.start_prototypes, self.end_prototypes
        )
        bodies = self.inside_minus_outside(
            ops.matmul(
                standardized,
                ops.transpose(ops.cast(self.body_prototypes, standardized.dtype)),
            )
        )
        scales = ops.cast(self.scales, windows.dtype)
        return (
            scales[0] * boundaries[0] + scales[1] * boundaries[1] + scales[2] * bodies
        )

    def compute_output_shape(self, input_shape):
        return (*super().compute_output_shape(input_shape), self.num_prototypes)
