"""The base of the layers that add a logit per proposal to the overlap
logit from each proposal's clips (an optional departure from the report,
docs/benchmarks.md)."""

import keras
import numpy as np
from keras import ops

from tal_keras.lattice import Lattice


class ProposalLogits(keras.layers.Layer):
    """Holds the lattice of a layer whose output is one logit per proposal.

    `build` of a subclass calls `build_lattice()`, which sets the static index
    tables `_starts` and `_ends` (int32 [P], first and last clip, inclusive)
    from the lattice, and the tables `inside_minus_outside` uses. Subclasses
    with prototypes set `num_prototypes` and use `add_prototypes`.

    Args:
        num_clips: N.
        scale_layers: pooling layers per scale (the lattice).
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Output shape: float [batch, num_proposals], logits in lattice order.
    """

    def __init__(self, num_clips, scale_layers, **kwargs):
        super().__init__(**kwargs)
        self.num_clips = num_clips
        self.scale_layers = tuple(scale_layers)

    def build_lattice(self):
        lattice = Lattice(self.num_clips, self.scale_layers)
        self._starts = lattice.starts.astype("int32")
        self._ends = lattice.ends.astype("int32")
        self._ends_after = self._ends + 1
        lengths = (lattice.ends - lattice.starts + 1).astype("float32")
        self._inside_weights = (1.0 / lengths)[:, None]
        self._outside_weights = (1.0 / np.maximum(self.num_clips - lengths, 1.0))[
            :, None
        ]
        return lattice

    def inside_minus_outside(self, matches):
        """float [batch, P, K]: per proposal, the mean of `matches` [batch, N,
        K] over its clips minus the mean over the video's other clips (0 when
        there are none)."""
        cumulative = self._prefix_sums(matches)
        inside = ops.take(cumulative, self._ends_after, axis=1) - ops.take(
            cumulative, self._starts, axis=1
        )
        outside = cumulative[:, -1:] - inside
        return inside * ops.cast(
            self._inside_weights, inside.dtype
        ) - outside * ops.cast(self._outside_weights, inside.dtype)

    def build_flanks(self, fraction):
        """Sets the tables `inside_minus_flanks` uses: each proposal of L
        clips has flanks of ceil(fraction * L) clips on each side, cut at
        the video's ends."""
        width = np.ceil(fraction * (self._ends - self._starts + 1)).astype("int32")
        self._left_flank = np.maximum(self._starts - width, 0).astype("int32")
        self._right_flank = np.minimum(self._ends_after + width, self.num_clips).astype(
            "int32"
        )
        counts = (self._starts - self._left_flank) + (
            self._right_flank - self._ends_after
        )
        self._flank_weights = (1.0 / np.maximum(counts, 1)).astype("float32")[:, None]

    def inside_minus_flanks(self, matches):
        """float [batch, P, K]: per proposal, the mean of `matches` [batch, N,
        K] over its clips minus the mean over its flanks (`build_flanks`; 0
        when it has none: it covers the whole video)."""
        cumulative = self._prefix_sums(matches)

        def at(indices):
            return ops.take(cumulative, indices, axis=1)

        start, end_after = at(self._starts), at(self._ends_after)
        inside = end_after - start
        flanks = (start - at(self._left_flank)) + (at(self._right_flank) - end_after)
        return inside * ops.cast(
            self._inside_weights, inside.dtype
        ) - flanks * ops.cast(self._flank_weights, inside.dtype)

    def add_prototypes(self, name, width):
        """A frozen [K, width] prototype weight (K = `self.num_prototypes`,
        which a subclass sets), random until training sets it to the class
        means."""
        return self.add_weight(
            shape=(self.num_prototypes, width),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / np.sqrt(width)),
            trainable=False,
            name=name,
        )

    def boundary_matches(self, windows, start_prototypes, end_prototypes):
        """(start, end) float [batch, P, K]: the dot product of each
        proposal's first (last) clip window with each start (end)
        prototype, minus that prototype's mean over the video's clips."""
        found = []
        for prototypes, cells in (
            (start_prototypes, self._starts),
            (end_prototypes, self._ends),
        ):
            matches = ops.matmul(
                windows, ops.transpose(ops.cast(prototypes, windows.dtype))
            )
            matches = matches - ops.mean(matches, axis=1, keepdims=True)
            found.append(ops.take(matches, cells, axis=1))
        return found

    @staticmethod
    def _prefix_sums(matches):
        """[batch, N + 1, K]: 0, then the running sums of `matches` over clips."""
        return ops.concatenate(
            [ops.zeros_like(matches[:, :1]), ops.cumsum(matches, axis=1)], axis=1
        )

    def compute_output_shape(self, input_shape):
        lattice = Lattice(self.num_clips, self.scale_layers)
        return (input_shape[0], lattice.num_proposals)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_clips": self.num_clips, "scale_layers": list(self.scale_layers)}
        )
        return config


class WindowPrototypeLogits(ProposalLogits):
    """The shared part of the layers that match clip windows with K frozen
    class prototypes and weigh three scores by learned scales
    (`BoundaryPrototypes`, `ClassPrototypes`): their arguments, their
    scale weights, and their config.

    Args:
        num_clips: N.
        scale_layers: pooling layers per scale (the lattice).
        num_prototypes: K, one per class.
        context: c, neighbours on each side in a clip's window.
        initial_scales: the three scales at the start.
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).
    """

    def __init__(
        self, num_clips, scale_layers, num_prototypes, context, initial_scales, **kwargs
    ):
        super().__init__(num_clips, scale_layers, **kwargs)
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}.")
        self.num_prototypes = int(num_prototypes)
        self.context = int(context)
        self.initial_scales = tuple(float(scale) for scale in initial_scales)
        if len(self.initial_scales) != 3:
            raise ValueError(
                f"initial_scales must be three numbers, got {initial_scales}."
            )

    def add_scales(self):
        """The learned float [3] scales, started at `initial_scales`."""
        return self.add_weight(
            shape=(3,),
            initializer=keras.initializers.Constant(
                np.asarray(self.initial_scales, "float32")
            ),
            name="scales",
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_prototypes": self.num_prototypes,
                "context": self.context,
                "initial_scales": list(self.initial_scales),
            }
        )
        return config


def best_present_match(matches, prototypes):
    """float [..., N]: the max over the last axis of `matches` [..., N, K],
    the scores of K `prototypes` [K, W], leaving out all-zero prototypes
    (classes without training instances), whose score would be 0 whatever
    the input; 0 everywhere when every prototype is zero."""
    present = ops.sum(ops.square(prototypes), axis=-1) > 0
    lowest = ops.min(matches, axis=-1, keepdims=True)
    return ops.max(ops.where(present, matches, lowest), axis=-1)
