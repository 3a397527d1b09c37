"""The shared conv network over the proposal maps, with 2D-TAN's mask step
(docs/design.md section 5), computed on whole maps."""

import keras
import numpy as np
from keras import ops

from tal_keras.layers.map_conv_base import MapConvBase


@keras.saving.register_keras_serializable(package="tal_keras")
class MaskedMapConv(MapConvBase):
    """L layers of KxK conv + ReLU + mask step over the proposal maps.

    Proposal features are scattered from lattice order into their maps (zeros
    in every other cell), run through the same conv stack (weights shared by
    all maps) and read back into lattice order. Each conv layer has H output
    channels, zero 'same' padding and a ReLU, followed by 2D-TAN's mask step
    (`get_padded_mask_and_weight`): out *= 1 / count, where count is the
    number of valid input cells under the kernel; cells with count 0 are
    zeroed and become valid for the next layer when count > 0. The valid set
    of the first layer is the map's proposal cells. Scatter, read-back and
    counts are static numpy tables rebuilt from the lattice in `build()`.

    Maps, per `map_mode`:
        "s2dtan": one compact map per scale, sides `Lattice.map_sizes`,
            proposal p at (`map_rows[p]`, `map_cols[p]`).
        "2dtan": one N x N map, proposal p at (start, end).

    Args, input and output shapes: those of `MapConvBase` (num_clips,
    scale_layers, hidden_size, kernel_size, num_conv_layers, map_mode).

    Example:
        >>> conv = MaskedMapConv(256, (64, 32, 32), hidden_size=512)
        >>> conv(np.zeros((1, 17472, 512), "float32")).shape
        (1, 17472, 512)
        >>> conv.convs[0].kernel.shape  # the weights BandMapConv shares
        (9, 9, 512, 512)
    """

    def build(self, input_shape):
        lattice = self.checked_lattice(input_shape)
        self._map_sizes, self._scatter_indices, self._gather_indices = _map_tables(
            lattice, self.map_mode
        )
        self._mask_weights = tuple(
            _mask_step_weights(
                np.asarray(scatter).reshape(size, size) < lattice.num_proposals,
                self.kernel_size,
                self.num_conv_layers,
            )
            for size, scatter in zip(self._map_sizes, self._scatter_indices)
        )
        self.build_convs(self.convs, input_shape[-1])

    def to_maps(self, proposal_features):
        """[B, P, C] lattice order -> list of maps [B, S, S, C], zero off the lattice."""
        padded = ops.concatenate(
            [proposal_features, ops.zeros_like(proposal_features[:, :1, :])], axis=1
        )
        channels = ops.shape(proposal_features)[-1]
        return [
            ops.reshape(ops.take(padded, scatter, axis=1), (-1, size, size, channels))
            for size, scatter in zip(self._map_sizes, self._scatter_indices)
        ]

    def from_maps(self, maps):
        """list of maps [B, S, S, C] -> [B, P, C], the proposal cells in lattice order."""
        channels = ops.shape(maps[0])[-1]
        flat = ops.concatenate(
            [
                ops.reshape(feature_map, (-1, size * size, channels))
                for size, feature_map in zip(self._map_sizes, maps)
            ],
            axis=1,
        )
        return ops.take(flat, self._gather_indices, axis=1)

    def call(self, proposal_features):
        maps = []
        for feature_map, mask_weights in zip(
            self.to_maps(proposal_features), self._mask_weights
        ):
            for conv, weights in zip(self.convs, mask_weights):
                feature_map = conv(feature_map) * ops.cast(
                    weights[None, :, :, None], feature_map.dtype
                )
            maps.append(feature_map)
        return self.from_maps(maps)


def _map_tables(lattice, map_mode):
    """Map sides, per-map scatter tables and the read-back table.

    scatter[m]: int32 [S * S], for each cell of map m the lattice index of its
    proposal, or P (the appended zero row) where the cell holds none.
    gather: int32 [P], each proposal's place in the maps flattened and
    concatenated in order.
    """
    num_proposals = lattice.num_proposals
    proposal_ids = np.arange(num_proposals)
    if map_mode == "2dtan":
        sizes = (lattice.num_clips,)
        cells = (lattice.full_map_index,)
        ids = (proposal_ids,)
        gather = lattice.full_map_index
    else:
        sizes = lattice.map_sizes
        cells = tuple(lattice.map_index[part] for part in lattice.scale_slices)
        ids = tuple(proposal_ids[part] for part in lattice.scale_slices)
        offsets = np.cumsum([0] + [size * size for size in sizes[:-1]])
        gather = offsets[lattice.scales] + lattice.map_index
    scatters = []
    for size, map_cells, map_ids in zip(sizes, cells, ids):
        scatter = np.full(size * size, num_proposals, dtype=np.int32)
        scatter[map_cells] = map_ids
        scatters.append(scatter)
    return tuple(sizes), tuple(scatters), gather.astype(np.int32)


def _mask_step_weights(valid, kernel_size, num_layers):
    """2D-TAN's get_padded_mask_and_weight, layer by layer, on one map.

    valid: bool [S, S], the cells holding proposals. Returns one float32
    [S, S] per layer: 1 / (valid input cells under the kernel), 0 where none.
    """
    half = kernel_size // 2
    size = valid.shape[0]
    weights = []
    for _ in range(num_layers):
        padded = np.pad(valid.astype(np.int64), half)
        count = np.zeros(valid.shape, dtype=np.int64)
        for row in range(kernel_size):
            for col in range(kernel_size):
                count += padded[row : row + size, col : col + size]
        weights.append(
            np.where(count > 0, 1.0 / np.maximum(count, 1), 0.0).astype(np.float32)
        )
        valid = count > 0
    return tuple(weights)
