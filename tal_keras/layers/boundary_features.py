"""Boundary features: each proposal's own start and end clips added to its
pooled feature (an optional departure from the report, docs/benchmarks.md)."""

import keras
from keras import ops

from tal_keras.lattice import Lattice


@keras.saving.register_keras_serializable(package="tal_keras")
class BoundaryFeatures(keras.layers.Layer):
    """Adds W_s x[start] + W_e x[end] to the pooled feature of every proposal.

    A max-pooled feature says what a proposal contains, not where it starts
    and ends: a proposal that starts one clip before an action's onset pools
    the same onset as the one that starts on it. With the clip sequence's own
    features at the proposal's first and last clip (which see their
    neighbours when the clip encoder has temporal context), the map network
    can tell them apart.

    Args:
        num_clips: N.
        scale_layers: pooling layers per scale (the lattice).
        hidden_size: H, the channels of both inputs.
        **kwargs: passed on to `keras.layers.Layer` (name, dtype, ...).

    Input: [pooled, clip_sequence]: float [batch, num_proposals, H] in
        lattice order, and float [batch, num_clips, H].
    Output shape: float [batch, num_proposals, H], lattice order.

    Example:
        >>> layer = BoundaryFeatures(16, (4, 2, 2), 8)
        >>> layer([np.zeros((2, 72, 8)), np.zeros((2, 16, 8))]).shape
        (2, 72, 8)
    """

    def __init__(self, num_clips, scale_layers, hidden_size, **kwargs):
        super().__init__(**kwargs)
        self.num_clips = num_clips
        self.scale_layers = tuple(scale_layers)
        self.hidden_size = hidden_size
        self.start_projection = keras.layers.Dense(
            hidden_size, use_bias=False, dtype=self.dtype_policy, name="start"
        )
        self.end_projection = keras.layers.Dense(
            hidden_size, use_bias=False, dtype=self.dtype_policy, name="end"
        )

    def build(self, input_shapes):
        _, clip_shape = input_shapes
        self.start_projection.build(clip_shape)
        self.end_projection.build(clip_shape)
        lattice = Lattice(self.num_clips, self.scale_layers)
        self._starts = lattice.starts.astype("int32")
        self._ends = lattice.ends.astype("int32")

    def call(self, inputs):
        pooled, clip_sequence = inputs
        starts = ops.take(self.start_projection(clip_sequence), self._starts, axis=1)
        ends = ops.take(self.end_projection(clip_sequence), self._ends, axis=1)
        return pooled + starts + ends

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_clips": self.num_clips,
                "scale_layers": list(self.scale_layers),
                "hidden_size": self.hidden_size,
            }
        )
        return config
