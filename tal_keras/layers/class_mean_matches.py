"""Class-mean matches: how well each proposal's start, end and body match
each class's training mean (a departure from the report, in the `tuned`
recipe: tal_keras/recipes.py, docs/design.md)."""

import keras
import numpy as np
from keras import ops

from tal_keras.class_means import DEFAULT_CONTEXT
from tal_keras.lattice import Lattice
from tal_keras.layers.clip_encoder import standardize_per_video

# The start, end and body matches, in this order on the last axis.
NUM_MATCHES = 3


@keras.saving.register_keras_serializable(package="tal_keras")
class ClassMeanMatches(keras.layers.Layer):
    """Per proposal and class, the start, end and body matches with the class
    means (`tal_keras.class_means`), and which classes have means.

    The clips are standardised per video (each channel over the video's
    clips). For a proposal from clip s to clip e and class k:

    - start_k: the dot product of clip s's window (clips s - c .. s + c,
      the ends repeated) with class k's mean start window, minus its mean
      over the video's clips;
    - end_k: likewise at clip e with the mean end window;
    - body_k: the mean dot product of the proposal's clips with class k's
      mean body clip, minus that of its flanks (ceil(f L) clips on each side
      of a proposal of L clips, cut at the video's ends; with f = 0, or
      where there are no flanks, the rest of the video).

    The means are weights that do not train: the network kind sets them
    from the training data before the first epoch (`set_class_means`);
    classes without training instances keep all-zero means, so all their
    matches are 0, and `present` marks them 0.

    Args:
        num_clips: N.
        scale_layers: pooling layers per scale (the lattice).
        num_classes: C.
        context: c, neighbours on each side in a clip's window.
        flank_fraction: f.
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_clips, D], the clip features as given to
        the network.
    Output: [matches, present]: matches float [batch, num_proposals,
        num_classes, 3] (start, end, body; lattice order), present float
        [batch, num_classes], 1 for classes with training instances, else 0.

    Example:
        >>> layer = ClassMeanMatches(16, (4, 2, 2), num_classes=3)
        >>> [tuple(x.shape) for x in layer(np.zeros((2, 16, 8)))]
        [(2, 72, 3, 3), (2, 3)]
    """

    def __init__(
        self,
        num_clips,
        scale_layers,
        num_classes,
        context=DEFAULT_CONTEXT,
        flank_fraction=0.25,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if not 0 <= flank_fraction < float("inf"):
            raise ValueError(
                f"flank_fraction must be a finite number >= 0, got {flank_fraction!r}."
            )
        self.num_clips = int(num_clips)
        self.scale_layers = tuple(int(n) for n in scale_layers)
        self.num_classes = int(num_classes)
        self.context = int(context)
        self.flank_fraction = float(flank_fraction)

    def build(self, input_shape):
        dim = input_shape[-1]
        window = (2 * self.context + 1) * dim
        self.start_means = self._add_means("start_means", window)
        self.end_means = self._add_means("end_means", window)
        self.body_means = self._add_means("body_means", dim)
        lattice = Lattice(self.num_clips, self.scale_layers)
        starts, ends = lattice.starts, lattice.ends
        lengths = ends - starts + 1
        width = np.ceil(self.flank_fraction * lengths).astype(np.int64)
        left = np.maximum(starts - width, 0)
        right = np.minimum(ends + 1 + width, self.num_clips)
        flanks = (starts - left) + (right - ends - 1)
        # No flanks (f = 0, or a proposal flush with both ends): the rest of
        # the video, which is empty only for the whole-video proposal.
        whole = flanks == 0
        left = np.where(whole, 0, left)
        right = np.where(whole, self.num_clips, right)
        outside = np.where(whole, self.num_clips - lengths, flanks)
        # Indices into the prefix sums [batch, N + 1, C] of the matches.
        self._starts = starts.astype("int32")
        self._ends = ends.astype("int32")
        self._ends_after = (ends + 1).astype("int32")
        self._left = left.astype("int32")
        self._right = right.astype("int32")
        self._inside_weights = (1.0 / lengths).astype("float32")[:, None]
        self._outside_weights = (1.0 / np.maximum(outside, 1)).astype("float32")[
            :, None
        ]

    def _add_means(self, name, width):
        return self.add_weight(
            shape=(self.num_classes, width),
            initializer="zeros",
            trainable=False,
            name=name,
        )

    def set_class_means(self, means):
        """Sets the weights to a `tal_keras.class_means.ClassMeans`."""
        for weight, value in (
            (self.start_means, means.start),
            (self.end_means, means.end),
            (self.body_means, means.body),
        ):
            if tuple(weight.shape) != value.shape:
                raise ValueError(
                    f"{self.name}: class means of shape {value.shape} for a "
                    f"weight of shape {tuple(weight.shape)} (classes, width)."
                )
            weight.assign(value)

    def call(self, clip_features):
        standardized = standardize_per_video(clip_features)
        windows = _clip_windows(standardized, self.context)
        matches = []
        for means, cells in (
            (self.start_means, self._starts),
            (self.end_means, self._ends),
        ):
            scores = ops.matmul(windows, ops.transpose(ops.cast(means, windows.dtype)))
            scores = scores - ops.mean(scores, axis=1, keepdims=True)
            matches.append(ops.take(scores, cells, axis=1))
        body_means = ops.cast(self.body_means, standardized.dtype)
        matches.append(
            self._inside_minus_outside(
                ops.matmul(standardized, ops.transpose(body_means))
            )
        )
        present = ops.cast(
            ops.sum(ops.square(body_means), axis=-1) > 0, matches[0].dtype
        )
        present = ops.broadcast_to(
            present[None], (ops.shape(standardized)[0], self.num_classes)
        )
        return [ops.stack(matches, axis=-1), present]

    def _inside_minus_outside(self, clip_scores):
        """float [batch, P, C]: per proposal, the mean of `clip_scores`
        [batch, N, C] over its clips minus the mean over its flanks."""
        cumulative = ops.concatenate(
            [ops.zeros_like(clip_scores[:, :1]), ops.cumsum(clip_scores, axis=1)],
            axis=1,
        )

        def at(indices):
            return ops.take(cumulative, indices, axis=1)

        start, end_after = at(self._starts), at(self._ends_after)
        inside = end_after - start
        outside = (start - at(self._left)) + (at(self._right) - end_after)
        dtype = inside.dtype
        return inside * ops.cast(self._inside_weights, dtype) - outside * ops.cast(
            self._outside_weights, dtype
        )

    def compute_output_shape(self, input_shape):
        proposals = Lattice(self.num_clips, self.scale_layers).num_proposals
        return [
            (input_shape[0], proposals, self.num_classes, NUM_MATCHES),
            (input_shape[0], self.num_classes),
        ]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_clips": self.num_clips,
                "scale_layers": list(self.scale_layers),
                "num_classes": self.num_classes,
                "context": self.context,
                "flank_fraction": self.flank_fraction,
            }
        )
        return config


def _clip_windows(clip_features, context):
    """float [batch, N, (2 * context + 1) * D]: `class_means.clip_windows`
    with keras.ops."""
    padded = clip_features
    if context:
        first = ops.repeat(clip_features[:, :1], context, axis=1)
        last = ops.repeat(clip_features[:, -1:], context, axis=1)
        padded = ops.concatenate([first, clip_features, last], axis=1)
    num_clips = clip_features.shape[1]
    return ops.concatenate(
        [padded[:, shift : shift + num_clips] for shift in range(2 * context + 1)],
        axis=-1,
    )
