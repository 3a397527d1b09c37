"""Class-mean evidence: the proposal network's head on the class-mean
matches, a logit per proposal added to its overlap logit (a departure from
the report, in the `tuned` recipe: tal_keras/recipes.py, docs/design.md)."""

import keras
import numpy as np
from keras import ops

from tal_keras.lattice import Lattice

# The evidence of a proposal, in this order (see the class docstring).
EVIDENCE = (
    "best_start",
    "best_end",
    "best_body",
    "min_best_start_end",
    "class_start",
    "class_end",
    "class_body",
    "best_joint",
    "joint_spread",
    "start_position",
    "end_position",
    "length",
)
# Where the weighted sum starts: a proposal scores high where one class
# matches at its start and at its end (the min), and inside.
INITIAL_WEIGHTS = {"min_best_start_end": 1.0, "best_body": 0.5}
# Classes without means sit this many temperatures below the lowest score:
# their softmax weight is below e^-30.
ABSENT_MARGIN = 30.0


@keras.saving.register_keras_serializable(package="tal_keras")
class ClassMeanEvidence(keras.layers.Layer):
    """Per-proposal logit w . v + MLP(v) of the class-mean evidence v.

    v holds 12 numbers per proposal, from its per-class start, end and body
    matches (`ClassMeanMatches`) and its place, with smooth maxima and
    weights over the classes that have means:

    - best_start, best_end, best_body: the smooth maximum over classes of
      each match, its mean with the weights softmax(x / T) (the maximum
      where one class stands out by several T);
    - min_best_start_end: min(best_start, best_end), high only where both
      boundaries match;
    - class_start, class_end, class_body: each match averaged over the
      classes with the weights softmax(joint / T), joint_k = start_k + end_k
      + sqrt(L) body_k, so the scores of the class that matches at the
      start, the end and inside at once;
    - best_joint, the smooth maximum of joint, and joint_spread, T times the
      entropy of its weights (0 where one class stands out);
    - s / N, (e + 1) / N and L / N, so that the weights may depend on where
      a proposal lies and how long it is.

    Every choice among classes is a softmax, never a hard
    maximum's one-hot: the output is a smooth function of the input, and an
    exported graph that rounds differently moves it by a rounding error, not
    by a jump where two classes nearly tie.

    w starts at 1 on min_best_start_end and 0.5 on best_body, 0 elsewhere;
    the MLP (two ReLU layers of `hidden_units`; none when 0) starts with a
    zero output layer, so that training starts from the weighted sum.

    Args:
        num_clips: N.
        scale_layers: pooling layers per scale (the lattice).
        hidden_units: H of the MLP; 0: the weighted sum alone.
        temperature: T > 0 of the smooth maxima and weights, in match units.
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input: [matches, present], `ClassMeanMatches`' output: float [batch,
        num_proposals, C, 3] and float [batch, C].
    Output shape: float [batch, num_proposals], logits in lattice order.

    Example:
        >>> head = ClassMeanEvidence(16, (4, 2, 2), hidden_units=8)
        >>> head([np.zeros((2, 72, 3, 3)), np.ones((2, 3))]).shape
        (2, 72)
    """

    def __init__(
        self, num_clips, scale_layers, hidden_units=64, temperature=1.0, **kwargs
    ):
        super().__init__(**kwargs)
        if hidden_units < 0:
            raise ValueError(f"hidden_units must be >= 0, got {hidden_units}.")
        if not 0 < temperature < float("inf"):
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.num_clips = int(num_clips)
        self.scale_layers = tuple(int(n) for n in scale_layers)
        self.hidden_units = int(hidden_units)
        self.temperature = float(temperature)
        initial = np.zeros((len(EVIDENCE), 1), "float32")
        for name, value in INITIAL_WEIGHTS.items():
            initial[EVIDENCE.index(name)] = value
        self.weighted_sum = keras.layers.Dense(
            1,
            kernel_initializer=keras.initializers.Constant(initial),
            dtype=self.dtype_policy,
            name="weighted_sum",
        )
        self.hidden_layers = [
            keras.layers.Dense(
                self.hidden_units,
                activation="relu",
                dtype=self.dtype_policy,
                name=f"hidden{i}",
            )
            for i in ((1, 2) if self.hidden_units else ())
        ]
        self.output_layer = (
            keras.layers.Dense(
                1, kernel_initializer="zeros", dtype=self.dtype_policy, name="output"
            )
            if self.hidden_units
            else None
        )

    def build(self, input_shape):
        inputs = (None, len(EVIDENCE))
        self.weighted_sum.build(inputs)
        for layer in self.hidden_layers:
            layer.build(inputs)
            inputs = (None, self.hidden_units)
        if self.output_layer is not None:
            self.output_layer.build(inputs)
        lattice = Lattice(self.num_clips, self.scale_layers)
        lengths = lattice.ends - lattice.starts + 1
        self._root_lengths = np.sqrt(lengths).astype("float32")[:, None]
        self._positions = (
            np.stack([lattice.starts, lattice.ends + 1, lengths], axis=-1)
            / self.num_clips
        ).astype("float32")

    def call(self, inputs):
        evidence = self.evidence(*inputs)
        logits = self.weighted_sum(evidence)
        if self.output_layer is not None:
            hidden = evidence
            for layer in self.hidden_layers:
                hidden = layer(hidden)
            logits = logits + self.output_layer(hidden)
        return ops.squeeze(logits, axis=-1)

    def evidence(self, matches, present):
        """float [batch, P, 12]: v (class docstring)."""
        dtype = matches.dtype
        present = ops.cast(present, dtype)[:, None, :]
        starts, ends, bodies = (matches[..., i] for i in range(3))
        joint = starts + ends + ops.cast(self._root_lengths, dtype) * bodies
        best = [self._smooth_max(score, present) for score in (starts, ends, bodies)]
        joint_logits = self._masked(joint, present) / self.temperature
        weights = ops.softmax(joint_logits, axis=-1)
        entropy = -ops.sum(weights * ops.log_softmax(joint_logits, axis=-1), axis=-1)
        features = [
            *best,
            ops.minimum(best[0], best[1]),
            *(ops.sum(weights * score, axis=-1) for score in (starts, ends, bodies)),
            ops.sum(weights * joint, axis=-1),
            self.temperature * entropy,
        ]
        positions = ops.broadcast_to(
            ops.cast(self._positions, dtype)[None],
            (ops.shape(matches)[0], *self._positions.shape),
        )
        return ops.concatenate([ops.stack(features, axis=-1), positions], axis=-1)

    def _masked(self, scores, present):
        """`scores` [batch, P, C], absent classes moved below the lowest."""
        lowest = (
            ops.min(scores, axis=-1, keepdims=True) - ABSENT_MARGIN * self.temperature
        )
        return ops.where(present > 0, scores, lowest)

    def _smooth_max(self, scores, present):
        """float [batch, P]: the mean of `scores` [batch, P, C] over the
        present classes with the weights softmax(scores / T)."""
        weights = ops.softmax(self._masked(scores, present) / self.temperature, axis=-1)
        return ops.sum(weights * scores, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:2])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_clips": self.num_clips,
                "scale_layers": list(self.scale_layers),
                "hidden_units": self.hidden_units,
                "temperature": self.temperature,
            }
        )
        return config
