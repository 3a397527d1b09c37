"""Boundary scores: a start logit of each proposal's first clip and an end
logit of its last, added to its overlap logit (an optional departure from
the report, docs/benchmarks.md)."""

import keras
from keras import ops

from tal_keras.layers.proposal_logits import ProposalLogits


@keras.saving.register_keras_serializable(package="tal_keras")
class BoundaryScores(ProposalLogits):
    """Per-proposal logits s(x[start]) + e(x[end]), with s and e linear.

    The map network scores a proposal through convs over its neighbours'
    pooled features, so a proposal's own boundaries reach its score only
    after several layers. This layer gives the overlap logit a direct,
    additive path from one start score per clip and one end score per clip
    (the form of the boundary-probability methods, BSN/BMN): every proposal
    that starts on a clip shares its start score, so the overlap loss of all
    of them trains the one detector.

    Args:
        num_clips: N.
        scale_layers: pooling layers per scale (the lattice).
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input shape: float [batch, num_clips, H], the clip sequence.
    Output shape: float [batch, num_proposals], logits in lattice order.

    Example:
        >>> layer = BoundaryScores(16, (4, 2, 2))
        >>> layer(np.zeros((2, 16, 8))).shape
        (2, 72)
    """

    def __init__(self, num_clips, scale_layers, **kwargs):
        super().__init__(num_clips, scale_layers, **kwargs)
        self.projection = keras.layers.Dense(
            2, dtype=self.dtype_policy, name="start_end"
        )

    def build(self, input_shape):
        self.projection.build(input_shape)
        self.build_lattice()

    def call(self, clip_sequence):
        logits = self.projection(clip_sequence)
        starts = ops.take(logits[..., 0], self._starts, axis=1)
        ends = ops.take(logits[..., 1], self._ends, axis=1)
        return starts + ends
