"""The base of the layers that add a logit per proposal to the overlap
logit from each proposal's clips (an optional departure from the report,
docs/benchmarks.md)."""

import keras
from keras import ops

from tal_keras.lattice import Lattice


class ProposalLogits(keras.layers.Layer):
    """Holds the lattice of a layer whose output is one logit per proposal.

    `build` of a subclass calls `build_lattice()`, which sets the static index
    tables `_starts` and `_ends` (int32 [P], first and last clip, inclusive)
    from the lattice.

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
        return lattice

    def compute_output_shape(self, input_shape):
        lattice = Lattice(self.num_clips, self.scale_layers)
        return (input_shape[0], lattice.num_proposals)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_clips": self.num_clips, "scale_layers": list(self.scale_layers)}
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
