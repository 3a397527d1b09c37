"""Prototype evidence: a small learned combination of the class-mean start,
end and body scores of each proposal, added to its overlap logit (an
optional departure from the report, docs/benchmarks.md)."""

import keras
import numpy as np
from keras import ops

from tal_keras.layers.boundary_prototypes import clip_windows
from tal_keras.layers.clip_encoder import standardize_per_video
from tal_keras.layers.proposal_logits import ProposalLogits, best_present_match

NUM_EVIDENCE = 7


@keras.saving.register_keras_serializable(package="tal_keras")
class PrototypeEvidence(ProposalLogits):
    """Per-proposal logits MLP(evidence), one hidden ReLU layer.

    The evidence of a proposal from clip s to clip e (L clips, N in all):

    - start: max over classes k of start_k(s), the dot product of clip s's
      window (`clip_windows`) with class k's start prototype minus its mean
      over the video's clips;
    - end: max over k of end_k(e), likewise with the end prototypes;
    - body: max over k of body_k, the mean dot product of the proposal's
      standardised clips with class k's body prototype minus that of its
      flanks (ceil(f L) clips on each side; with f = 0 the rest of the
      video);
    - joint: max over k of start_k(s) + end_k(e) + sqrt(L) body_k, high only
      where one class matches at the start, the end and inside;
    - s / N, (e + 1) / N and L / N, so that the weight of each score can
      depend on where the proposal lies and how long it is.

    These are the scores `BoundaryPrototypes` and `BodyPrototypes` add
    with one learned scale each. A linear sum of them is a weak scorer: on
    a benchmark dataset whose drift and scene cuts move every score, an MLP
    of the same three scores on the training videos gains about 2.5 times
    what their best weighted sum does (docs/benchmarks.md, "Session 6").

    The prototypes are not trained: training sets them to the class means
    (`class_mean_prototypes`, `class_mean_bodies`); classes without training
    instances (all-zero prototypes) take no part in the maxima. The output
    layer starts at zero, so that a new network starts as it would without
    this layer.

    Args:
        num_clips: N.
        scale_layers: pooling layers per scale (the lattice).
        num_prototypes: K, one per class.
        hidden_units: H of the MLP.
        context: c, neighbours on each side in a clip's window.
        flank_fraction: f.
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_clips, D], the clip features (as given to
        the network; standardised per video here).
    Output shape: float [batch, num_proposals], logits in lattice order.

    Example:
        >>> layer = PrototypeEvidence(16, (4, 2, 2), num_prototypes=3)
        >>> layer(np.zeros((2, 16, 8))).shape
        (2, 72)
    """

    def __init__(
        self,
        num_clips,
        scale_layers,
        num_prototypes,
        hidden_units=32,
        context=1,
        flank_fraction=0.25,
        **kwargs,
    ):
        super().__init__(num_clips, scale_layers, **kwargs)
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}.")
        if hidden_units < 1:
            raise ValueError(f"hidden_units must be >= 1, got {hidden_units}.")
        if not 0 <= flank_fraction < float("inf"):
            raise ValueError(
                f"flank_fraction must be a finite number >= 0, got {flank_fraction!r}."
            )
        self.num_prototypes = int(num_prototypes)
        self.hidden_units = int(hidden_units)
        self.context = int(context)
        self.flank_fraction = float(flank_fraction)
        self.hidden = keras.layers.Dense(self.hidden_units, activation="relu")
        self.output_layer = keras.layers.Dense(1, kernel_initializer="zeros")

    def build(self, input_shape):
        dim = input_shape[-1]
        width = (2 * self.context + 1) * dim
        self.start_prototypes = self._frozen("start_prototypes", width)
        self.end_prototypes = self._frozen("end_prototypes", width)
        self.body_prototypes = self._frozen("body_prototypes", dim)
        self.hidden.build((None, NUM_EVIDENCE))
        self.output_layer.build((None, self.hidden_units))
        lattice = self.build_lattice()
        if self.flank_fraction > 0:
            self.build_flanks(self.flank_fraction)
        lengths = lattice.ends - lattice.starts + 1
        self._root_lengths = np.sqrt(lengths).astype("float32")[:, None]
        self._positions = (
            np.stack([lattice.starts, lattice.ends + 1, lengths], axis=-1)
            / self.num_clips
        ).astype("float32")

    def _frozen(self, name, width):
        return self.add_weight(
            shape=(self.num_prototypes, width),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / np.sqrt(width)),
            trainable=False,
            name=name,
        )

    def call(self, clip_features):
        standardized = standardize_per_video(clip_features)
        windows = clip_windows(standardized, self.context)
        boundaries = []
        for prototypes, cells in (
            (self.start_prototypes, self._starts),
            (self.end_prototypes, self._ends),
        ):
            matches = ops.matmul(
                windows, ops.transpose(ops.cast(prototypes, windows.dtype))
            )
            matches = matches - ops.mean(matches, axis=1, keepdims=True)
            boundaries.append(ops.take(matches, cells, axis=1))
        body_prototypes = ops.cast(self.body_prototypes, standardized.dtype)
        body_matches = ops.matmul(standardized, ops.transpose(body_prototypes))
        bodies = (
            self.inside_minus_flanks(body_matches)
            if self.flank_fraction > 0
            else self.inside_minus_outside(body_matches)
        )
        joint = (
            boundaries[0]
            + boundaries[1]
            + ops.cast(self._root_lengths, bodies.dtype) * bodies
        )
        scores = [
            best_present_match(score, body_prototypes)
            for score in (boundaries[0], boundaries[1], bodies, joint)
        ]
        positions = ops.broadcast_to(
            ops.cast(self._positions, bodies.dtype)[None],
            (ops.shape(bodies)[0], *self._positions.shape),
        )
        evidence = ops.concatenate([ops.stack(scores, axis=-1), positions], axis=-1)
        return ops.squeeze(self.output_layer(self.hidden(evidence)), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_prototypes": self.num_prototypes,
                "hidden_units": self.hidden_units,
                "context": self.context,
                "flank_fraction": self.flank_fraction,
            }
        )
        return config
