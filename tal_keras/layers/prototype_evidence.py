"""Prototype evidence: a small learned combination of the class-mean start,
end and body scores of each proposal, added to its overlap logit (an
optional departure from the report, docs/benchmarks.md)."""

import keras
import numpy as np
from keras import ops

from tal_keras.layers.boundary_prototypes import clip_windows
from tal_keras.layers.clip_encoder import standardize_per_video
from tal_keras.layers.proposal_logits import ProposalLogits, best_present_match

NUM_EVIDENCE = 11


@keras.saving.register_keras_serializable(package="tal_keras")
class PrototypeEvidence(ProposalLogits):
    """Per-proposal logits MLP(evidence), two hidden ReLU layers.

    The evidence of a proposal from clip s to clip e (L clips, N in all), 11
    numbers:

    - per class k: start_k, the dot product of clip s's window
      (`clip_windows`) with class k's start prototype minus its mean over
      the video's clips; end_k, likewise at clip e with the end prototypes;
      body_k, the mean dot product of the proposal's standardised clips with
      class k's body prototype minus that of its flanks (ceil(f L) clips on
      each side; with f = 0 the rest of the video); and
      joint_k = start_k + end_k + sqrt(L) body_k, high only where one class
      matches at the start, the end and inside;
    - the max over classes of start_k, end_k and body_k;
    - start_k, end_k and body_k of the class k* of the best joint score;
    - the best joint score and its margin over the second best;
    - s / N, (e + 1) / N and L / N, so that the weight of each score can
      depend on where the proposal lies and how long it is.

    `BoundaryPrototypes` and `BodyPrototypes` add the best start, end and
    body scores with one learned scale each. A weighted sum is a weak
    scorer where drift and scene cuts move every score: on the scene
    benchmark datasets the same scores through this MLP raise the
    proposal AUC by several points (docs/benchmarks.md, "Session 6").

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
        self.hidden_layers = [
            keras.layers.Dense(self.hidden_units, activation="relu", name=f"hidden{i}")
            for i in (1, 2)
        ]
        self.output_layer = keras.layers.Dense(
            1, kernel_initializer="zeros", name="output"
        )

    def build(self, input_shape):
        dim = input_shape[-1]
        width = (2 * self.context + 1) * dim
        self.start_prototypes = self.add_prototypes("start_prototypes", width)
        self.end_prototypes = self.add_prototypes("end_prototypes", width)
        self.body_prototypes = self.add_prototypes("body_prototypes", dim)
        inputs = NUM_EVIDENCE
        for layer in self.hidden_layers:
            layer.build((None, inputs))
            inputs = self.hidden_units
        self.output_layer.build((None, inputs))
        lattice = self.build_lattice()
        if self.flank_fraction > 0:
            self.build_flanks(self.flank_fraction)
        lengths = lattice.ends - lattice.starts + 1
        self._root_lengths = np.sqrt(lengths).astype("float32")[:, None]
        self._positions = (
            np.stack([lattice.starts, lattice.ends + 1, lengths], axis=-1)
            / self.num_clips
        ).astype("float32")

    def call(self, clip_features):
        evidence = self.evidence(clip_features)
        for layer in self.hidden_layers:
            evidence = layer(evidence)
        return ops.squeeze(self.output_layer(evidence), axis=-1)

    def evidence(self, clip_features):
        """float [batch, P, NUM_EVIDENCE]: the MLP's inputs (class docstring)."""
        standardized = standardize_per_video(clip_features)
        windows = clip_windows(standardized, self.context)
        boundaries = self.boundary_matches(
            windows, self.start_prototypes, self.end_prototypes
        )
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
        # Classes without training instances (all-zero prototypes) get the
        # proposal's lowest joint score: never the best, at most the second.
        present = ops.sum(ops.square(body_prototypes), axis=-1) > 0
        joint = ops.where(present, joint, ops.min(joint, axis=-1, keepdims=True))
        best_two = ops.top_k(joint, 2 if self.num_prototypes > 1 else 1)[0]
        # The best class as a one-hot row (ties share it); not argmax, which
        # Keras' TensorFlow backend writes with a Bitcast ONNX lacks.
        chosen = ops.cast(joint >= best_two[..., :1], joint.dtype)
        chosen = chosen / ops.sum(chosen, axis=-1, keepdims=True)
        scores = [
            best_present_match(score, body_prototypes)
            for score in (boundaries[0], boundaries[1], bodies)
        ]
        scores += [ops.sum(score * chosen, axis=-1) for score in (*boundaries, bodies)]
        scores += [best_two[..., 0], best_two[..., 0] - best_two[..., -1]]
        positions = ops.broadcast_to(
            ops.cast(self._positions, bodies.dtype)[None],
            (ops.shape(bodies)[0], *self._positions.shape),
        )
        return ops.concatenate([ops.stack(scores, axis=-1), positions], axis=-1)

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
