"""The band of map cells the shared masked conv network must compute, layer by
layer, and the gather tables that compute it (docs/design.md section 5). numpy only,
so that the cost model reads the same cell counts as the layer.

2D-TAN's mask step makes the map's nonzero set grow by h = K // 2 cells
(Chebyshev distance) per layer: after layer m the cells within m * h of a
proposal are nonzero, every other cell is zero. Only the proposal cells are
read after the last layer L, and layer m + 1 reads layer m within h, so layer
m's output matters only within (L - m) * h of a proposal. Layer m therefore
computes the cells within min(m, L - m) * h of a proposal (its "band"); every
other cell is zero or never read. Cells outside the map are zero padding and
are never in a band.

Each band is a flat list of cells (all maps of the network in one list, map by
map, row by row), followed by one zero row: n_m cells, row n_m always zero.
The first and last bands are the proposals in lattice order. A KxK conv from
band m - 1 to band m is, per kernel tap t, a gather: output row o reads input
row `forward_index[t, o]`, the zero row n_{m-1} where the tapped cell is zero
or off the map (and for o = n_m, so that the zero row stays zero).
`backward_index[t, i]` is its inverse: the output row that reads input row i
through tap t, or the zero row n_m; it makes the gradient of a gather a gather
too.
"""

import numpy as np

from tal_keras.lattice import check_map_conv


class MapBand:
    """Band cells, gather tables and mask-step weights of every conv layer.

    Args:
        lattice: `Lattice`.
        kernel_size: K, odd side of the square conv kernels.
        num_conv_layers: L.
        map_mode: "s2dtan" (one compact map per scale, proposal p at
            (`map_rows[p]`, `map_cols[p]`)) or "2dtan" (one N x N map,
            proposal p at (start, end)).

    Attributes (layer m = 0 is the input of the first conv, m = L the output
    of the last; tables of conv layer m = 1..L sit at index m - 1):
        map_sizes: tuple, side of each map.
        band_sizes: tuple of L + 1 ints n_m, cells of band m (its zero row
            not counted); n_0 = n_L = P.
        band_cells: tuple of L + 1 int64 [n_m, 3] arrays, (map, row, col) of
            each cell of band m, in band order (lattice order for m = 0, L).
        forward_index: tuple of L int32 [K * K, n_m + 1], taps in kernel
            order (row-major, as a Keras Conv2D kernel [K, K, C, H] reshaped
            to [K * K, C, H]); values in [0, n_{m-1}].
        backward_index: tuple of L int32 [K * K, n_{m-1} + 1]; values in
            [0, n_m].
        mask_weights: tuple of L float32 [n_m + 1], 1 / (valid input cells
            under the kernel) at each cell of band m (2D-TAN's mask step;
            never 0 in a band), 0 at the zero row.
        gather_first: tuple of L bools: gather the inputs of each tap then
            multiply by the kernel (n_m + 1 rows per tap), or multiply the
            inputs then gather (n_{m-1} + 1 rows), whichever is fewer rows.
        rows_multiplied: tuple of L ints, rows of each tap's matrix product
            (the zero row included).

    Example:
        >>> band = MapBand(Lattice(256, (64, 32, 32)), 9, 4)
        >>> band.band_sizes
        (17472, 22428, 27064, 22428, 17472)
    """

    def __init__(self, lattice, kernel_size, num_conv_layers, map_mode="s2dtan"):
        check_map_conv(map_mode, kernel_size)
        if num_conv_layers < 1:
            raise ValueError(
                f"num_conv_layers must be a positive integer, got {num_conv_layers!r}."
            )
        self.kernel_size = kernel_size
        self.num_conv_layers = num_conv_layers
        self.map_mode = map_mode
        maps = _proposal_places(lattice, map_mode)
        self.map_sizes = tuple(size for size, _, _, _ in maps)
        positions, weights = _bands(maps, kernel_size, num_conv_layers)
        self.band_cells = tuple(
            _cells_in_order(layer_positions) for layer_positions in positions
        )
        self.band_sizes = tuple(len(cells) for cells in self.band_cells)
        forward, backward, weights_with_zero = [], [], []
        for layer in range(1, num_conv_layers + 1):
            forward.append(
                _tap_index(
                    self.band_cells[layer], positions[layer - 1], kernel_size, +1
                )
            )
            backward.append(
                _tap_index(
                    self.band_cells[layer - 1], positions[layer], kernel_size, -1
                )
            )
            cell_weights = weights[layer - 1][tuple(self.band_cells[layer].T)]
            weights_with_zero.append(np.append(cell_weights, np.float32(0.0)))
        self.forward_index = tuple(forward)
        self.backward_index = tuple(backward)
        self.mask_weights = tuple(weights_with_zero)
        self.gather_first = tuple(
            self.band_sizes[layer] <= self.band_sizes[layer - 1]
            for layer in range(1, num_conv_layers + 1)
        )
        self.rows_multiplied = tuple(
            min(self.band_sizes[layer], self.band_sizes[layer - 1]) + 1
            for layer in range(1, num_conv_layers + 1)
        )
        self._frequency_counts = {}  # (C, H) -> {tile: multiply-adds}

    def multiply_adds(self, in_channels, out_channels):
        """Multiply-adds of the L band convs on one video, as computed."""
        taps = self.kernel_size**2
        return sum(
            taps * rows * channels * out_channels
            for rows, channels in zip(
                self.rows_multiplied,
                [in_channels] + [out_channels] * (self.num_conv_layers - 1),
            )
        )

    def frequency_multiply_adds(self, in_channels, out_channels, tile):
        """Multiply-adds of the L layers on one video in the frequency form
        (`band_map_conv._frequency_taps`) with tiles of tile x tile output
        cells: each tile's input spectrum, the kernels' spectra, the channel
        mixing (four real products per frequency) and the inverse."""
        side = tile + self.kernel_size - 1
        frequencies = side * (side // 2 + 1)
        total = 0
        for layer in range(1, self.num_conv_layers + 1):
            channels = in_channels if layer == 1 else out_channels
            tiles = len(self._tiles(layer, tile)[0])
            total += (
                2
                * frequencies
                * (
                    side * side * tiles * channels
                    + self.kernel_size**2 * channels * out_channels
                    + 2 * tiles * channels * out_channels
                    + tile * tile * tiles * out_channels
                )
            )
        return total

    def frequency_tile(self, in_channels, out_channels, at_most=0.5):
        """The tile side (1 to 4 K) whose frequency form multiplies least, or 0
        where even that is more than `at_most` times what the taps multiply
        (`multiply_adds`; None: no bound): the frequency form's gathers and
        reshapes cost more per multiply-add than the taps'. Paper config (H
        512): 11, 0.19 of the taps' multiply-adds; the demo's (H 64, K 5):
        0."""
        # Counted once per band and channels: every trace of a layer asks.
        key = (in_channels, out_channels)
        if key not in self._frequency_counts:
            self._frequency_counts[key] = {
                tile: self.frequency_multiply_adds(in_channels, out_channels, tile)
                for tile in range(1, 4 * self.kernel_size + 1)
            }
        counts = self._frequency_counts[key]
        best = min(counts, key=counts.get)
        taps = self.multiply_adds(in_channels, out_channels)
        if at_most is not None and counts[best] > at_most * taps:
            return 0
        return best

    def _tiles(self, layer, tile):
        """(int64 [tiles, 3] (map, tile row, tile col) of the tile-aligned
        squares holding a cell of band `layer`, sorted; int64 [n_layer] the
        tile of each cell)."""
        cells = self.band_cells[layer]
        side = max(self.map_sizes) // tile + 1  # tile rows or cols a map has
        codes, tile_of_cell = np.unique(
            (cells[:, 0] * side + cells[:, 1] // tile) * side + cells[:, 2] // tile,
            return_inverse=True,
        )
        tiles = np.stack([codes // side**2, codes // side % side, codes % side], 1)
        return tiles, tile_of_cell.reshape(-1)

    def frequency_tiles(self, layer, tile):
        """Gather tables of conv layer `layer` (1..L) computed in tiles of
        tile x tile output cells (`band_map_conv.taps_written_out`'s
        frequency form).

        The tiles are the tile-aligned squares of each map that hold a cell
        of band `layer`; a tile reads the P x P input cells around it,
        P = tile + K - 1 (zero row where a cell is off band `layer - 1` or
        off the map).

        Returns:
            (input_index int32 [P * P, tiles]: the band `layer - 1` row of
            each tile's input cell, row-major within the tile;
            output_index int32 [n_layer + 1]: the place of each band
            `layer` cell in the tiles' outputs laid out [tile * tile, tiles],
            row-major within the tile, 0 for the zero row).
        """
        if not 1 <= layer <= self.num_conv_layers or tile < 1:
            raise ValueError(
                f"need a conv layer in 1..{self.num_conv_layers} and a tile >= 1, "
                f"got layer {layer!r}, tile {tile!r}."
            )
        half = self.kernel_size // 2
        side = self.kernel_size + tile - 1
        inputs, outputs = self.band_cells[layer - 1], self.band_cells[layer]
        # Every input cell's row in a grid with room for any tile's window.
        margin = side + tile
        grid = max(self.map_sizes) + 2 * margin
        places = np.full((len(self.map_sizes), grid, grid), len(inputs), dtype=np.int64)
        places[inputs[:, 0], inputs[:, 1] + margin, inputs[:, 2] + margin] = np.arange(
            len(inputs)
        )
        tiles, tile_of_cell = self._tiles(layer, tile)
        window = np.arange(side) - half + margin
        rows = tiles[:, 1, None, None] * tile + window[:, None]
        cols = tiles[:, 2, None, None] * tile + window[None, :]
        input_index = places[tiles[:, 0, None, None], rows, cols]
        within = (outputs[:, 1] % tile) * tile + outputs[:, 2] % tile
        output_index = within * len(tiles) + tile_of_cell
        return (
            input_index.reshape(len(tiles), side * side).T.astype(np.int32),
            np.append(output_index, 0).astype(np.int32),
        )

    def __repr__(self):
        return (
            f"MapBand(map_sizes={self.map_sizes}, kernel_size={self.kernel_size}, "
            f"band_sizes={self.band_sizes})"
        )


def _proposal_places(lattice, map_mode):
    """[(side, proposal ids, rows, cols)] of each map, from the lattice."""
    ids = np.arange(lattice.num_proposals)
    if map_mode == "2dtan":
        return [(lattice.num_clips, ids, lattice.starts, lattice.ends)]
    return [
        (size, ids[part], lattice.map_rows[part], lattice.map_cols[part])
        for size, part in zip(lattice.map_sizes, lattice.scale_slices)
    ]


def _box_count(mask, half):
    """int64 [S, S]: True cells of `mask` in the (2 half + 1)^2 window, zero padded."""
    if half == 0:
        return mask.astype(np.int64)
    size = mask.shape[0]
    integral = np.zeros((size + 2 * half + 1,) * 2, dtype=np.int64)
    integral[half + 1 : half + 1 + size, half + 1 : half + 1 + size] = mask
    integral = integral.cumsum(axis=0).cumsum(axis=1)
    width = 2 * half + 1
    return (
        integral[width:, width:]
        - integral[:-width, width:]
        - integral[width:, :-width]
        + integral[:-width, :-width]
    )


def _bands(maps, kernel_size, num_layers):
    """Per layer 0..L, a map -> int64 [S, S] place of each cell in the band
    (-1 off the band); per conv layer, a full float32 [num_maps, S_max, S_max]
    table of 1 / count (0 where count is 0)."""
    half = kernel_size // 2
    largest = max(size for size, _, _, _ in maps)
    positions = [[] for _ in range(num_layers + 1)]
    weights = np.zeros((num_layers, len(maps), largest, largest), np.float32)
    for map_id, (size, ids, rows, cols) in enumerate(maps):
        proposals = np.zeros((size, size), dtype=bool)
        proposals[rows, cols] = True
        # 2D-TAN's get_padded_mask_and_weight, layer by layer: reached[m] are
        # the cells nonzero after layer m.
        reached = [proposals]
        for layer in range(num_layers):
            count = _box_count(reached[-1], half)
            weights[layer, map_id, :size, :size] = np.where(
                count > 0, 1.0 / np.maximum(count, 1), 0.0
            )
            reached.append(count > 0)
        for layer in range(num_layers + 1):
            needed = _box_count(proposals, (num_layers - layer) * half) > 0
            place = np.full((size, size), -1, dtype=np.int64)
            if layer in (0, num_layers):
                place[rows, cols] = ids  # lattice order
            else:
                band = reached[layer] & needed
                place[band] = np.arange(int(band.sum()))
            positions[layer].append(place)
    # Intermediate bands: one flat list, map after map.
    for layer in range(1, num_layers):
        offset = 0
        for place in positions[layer]:
            count = int((place >= 0).sum())
            place[place >= 0] += offset
            offset += count
    return positions, weights


def _cells_in_order(places):
    """int64 [n, 3] (map, row, col) of the band cells, sorted by their place."""
    cells = [
        np.stack([np.full(len(rows), map_id), rows, cols], axis=1)
        for map_id, place in enumerate(places)
        for rows, cols in [np.nonzero(place >= 0)]
    ]
    cells = np.concatenate(cells, axis=0)
    order = np.concatenate(
        [place[place >= 0] for place in places]
    )  # same row-major order as np.nonzero
    sorted_cells = np.empty_like(cells)
    sorted_cells[order] = cells
    return sorted_cells


def _tap_index(cells, source_places, kernel_size, direction):
    """int32 [K * K, n + 1]: for each tap (a, b) and cell (map, r, c), the place
    of (r + direction * (a - h), c + direction * (b - h)) in `source_places`,
    or the number of source cells (their zero row) where it is off the band or
    the map; the last column (the zero row of `cells`) reads the zero row."""
    half = kernel_size // 2
    num_sources = sum(int((place >= 0).sum()) for place in source_places)
    index = np.full(
        (kernel_size * kernel_size, len(cells) + 1), num_sources, dtype=np.int64
    )
    map_ids, rows, cols = cells.T
    for map_id, place in enumerate(source_places):
        in_map = np.flatnonzero(map_ids == map_id)
        size = place.shape[0]
        for tap in range(kernel_size * kernel_size):
            row_offset, col_offset = divmod(tap, kernel_size)
            source_rows = rows[in_map] + direction * (row_offset - half)
            source_cols = cols[in_map] + direction * (col_offset - half)
            inside = (
                (source_rows >= 0)
                & (source_rows < size)
                & (source_cols >= 0)
                & (source_cols < size)
            )
            found = np.full(len(in_map), -1, dtype=np.int64)
            found[inside] = place[source_rows[inside], source_cols[inside]]
            index[tap, in_map[found >= 0]] = found[found >= 0]
    return index.astype(np.int32)
