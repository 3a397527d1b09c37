"""The proposal lattice: which (start, end) clip pairs exist, their order, and
their place in every map. numpy only; every other module reads it from here.

Proposals come out of the stacked max-pooling of docs/design.md section 4, layer by
layer: scale 0 starts with the identity and adds one max-pool(2, 1) per layer;
every later scale starts with a max-pool(3, 2) on the last output of the
previous scale, then adds max-pool(2, 1) layers. Layer m of a scale yields all
proposals of one length, one per pooled position. The lattice order is that
output order: scale by scale, layer by layer (length ascending), start
ascending. So `StackedMaxPool` can concatenate its layer outputs and be in
lattice order with no gather.
"""

import dataclasses

import numpy as np

# Where the proposals are laid out for the map convs: "s2dtan", one compact
# map per scale (`Lattice.map_index`); "2dtan", one N x N map at (start, end)
# (`Lattice.full_map_index`).
MAP_MODES = ("s2dtan", "2dtan")


def check_map_conv(map_mode, kernel_size):
    """Raises ValueError on a map mode or kernel size the map convs cannot use
    (their zero 'same' padding needs an odd K)."""
    if map_mode not in MAP_MODES:
        raise ValueError(f"map_mode must be one of {MAP_MODES}, got {map_mode!r}.")
    if (
        isinstance(kernel_size, bool)
        or not isinstance(kernel_size, int)
        or kernel_size < 1
        or kernel_size % 2 == 0
    ):
        raise ValueError(
            f"kernel_size must be a positive odd integer ('same' padding), got {kernel_size!r}."
        )


def pooling_kernel_and_stride(scale, layer):
    """(kernel, stride) of the max-pool of one layer of the stacked pooling
    (docs/design.md section 4): the identity (1, 1) first, (3, 2) to open
    every later scale, (2, 1) inside a scale."""
    if scale == 0 and layer == 0:
        return 1, 1
    if layer == 0:
        return 3, 2
    return 2, 1


@dataclasses.dataclass(frozen=True)
class PoolingLayer:
    """One layer of the stacked pooling and the proposals it yields.

    Attributes:
        scale: index of the scale the layer belongs to.
        layer: index of the layer inside its scale.
        kernel: max-pool kernel applied to the previous layer's output
            (1 = identity, first layer of scale 0).
        stride: max-pool stride (1, or 2 for the first layer of scale > 0).
        length: proposal length in clips.
        start_stride: distance in clips between consecutive starts.
        count: number of proposals (pooled positions) of this layer.
        offset: index of this layer's first proposal in lattice order.
    """

    scale: int
    layer: int
    kernel: int
    stride: int
    length: int
    start_stride: int
    count: int
    offset: int


class Lattice:
    """The proposals of a (num_clips, scale_layers) configuration.

    Args:
        num_clips: N, the number of clips a video is resampled to.
        scale_layers: pooling layers per scale, e.g. (64, 32, 32) for N = 256
            (S-2D-TAN) or (N,) for the dense 2D-TAN lattice.

    Attributes (arrays have one entry per proposal, in lattice order):
        num_proposals: P.
        starts, ends: int64 [P], first and last clip (inclusive).
        lengths: int64 [P], ends - starts + 1.
        scales: int64 [P], the scale each proposal belongs to.
        map_rows, map_cols: int64 [P], place in the compact sub-map of its
            scale (row = start / stride, col = (end - first_end) / stride).
        map_index: int64 [P], row * size + col in its flattened sub-map.
        full_map_index: int64 [P], start * N + end in the flattened N x N map.
        map_sizes: tuple, side of each scale's square sub-map.
        scale_strides: tuple, start stride of each scale.
        scale_slices: tuple of slices of the lattice order, one per scale.
        layers: tuple of `PoolingLayer`, in pooling order.

    Example:
        >>> lattice = Lattice(256, (64, 32, 32))
        >>> lattice.num_proposals, lattice.map_sizes
        (17472, (256, 96, 32))
    """

    def __init__(self, num_clips, scale_layers):
        self.num_clips = _positive_int(num_clips, "num_clips")
        if isinstance(scale_layers, (int, np.integer)):
            scale_layers = (scale_layers,)
        self.scale_layers = tuple(
            _positive_int(n, "scale_layers entry") for n in scale_layers
        )
        if not self.scale_layers:
            raise ValueError("scale_layers must name at least one scale, e.g. (N,).")
        self.layers = self._pooling_layers()
        self.num_scales = len(self.scale_layers)
        self.num_proposals = sum(layer.count for layer in self.layers)
        self._build_tables()

    def _pooling_layers(self):
        num_clips = self.num_clips
        largest_stride = 2 ** (len(self.scale_layers) - 1)
        if num_clips % largest_stride:
            raise ValueError(
                f"num_clips={num_clips} is not divisible by the largest scale "
                f"stride {largest_stride} of scale_layers={self.scale_layers}; "
                f"{_suggestion(num_clips)}"
            )
        layers = []
        positions, length, start_stride, offset = num_clips, 0, 1, 0
        for scale, num_layers in enumerate(self.scale_layers):
            for layer in range(num_layers):
                kernel, stride = pooling_kernel_and_stride(scale, layer)
                if positions < kernel:
                    raise ValueError(
                        f"scale_layers={self.scale_layers} asks for proposals "
                        f"longer than num_clips={num_clips} (scale {scale}, "
                        f"layer {layer}); {_suggestion(num_clips)}"
                    )
                # A max-pool of kernel k and stride s widens each window by
                # (k - 1) times the current start stride, then multiplies it.
                length = 1 if kernel == 1 else length + (kernel - 1) * start_stride
                positions = (positions - kernel) // stride + 1
                start_stride *= stride
                layers.append(
                    PoolingLayer(
                        scale,
                        layer,
                        kernel,
                        stride,
                        length,
                        start_stride,
                        positions,
                        offset,
                    )
                )
                offset += positions
        return tuple(layers)

    def _build_tables(self):
        starts, ends, scales, rows, cols, sizes, strides, slices = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
        )
        for scale in range(len(self.scale_layers)):
            scale_layers = [layer for layer in self.layers if layer.scale == scale]
            first = scale_layers[0]
            # The map is as wide as the first layer's number of starts; every
            # later layer of the scale is one diagonal further out.
            sizes.append(first.count)
            strides.append(first.start_stride)
            slices.append(
                slice(first.offset, scale_layers[-1].offset + scale_layers[-1].count)
            )
            for layer in scale_layers:
                row = np.arange(layer.count)
                layer_starts = row * layer.start_stride
                starts.append(layer_starts)
                ends.append(layer_starts + layer.length - 1)
                scales.append(np.full(layer.count, scale))
                rows.append(row)
                cols.append(row + layer.layer)
        self.starts = np.concatenate(starts).astype(np.int64)
        self.ends = np.concatenate(ends).astype(np.int64)
        self.lengths = self.ends - self.starts + 1
        self.scales = np.concatenate(scales).astype(np.int64)
        self.map_rows = np.concatenate(rows).astype(np.int64)
        self.map_cols = np.concatenate(cols).astype(np.int64)
        self.map_sizes = tuple(int(size) for size in sizes)
        self.scale_strides = tuple(int(stride) for stride in strides)
        self.scale_slices = tuple(slices)
        self.map_index = self.map_rows * np.asarray(self.map_sizes)[self.scales]
        self.map_index += self.map_cols
        self.full_map_index = self.starts * self.num_clips + self.ends
        for array in (
            self.starts,
            self.ends,
            self.lengths,
            self.scales,
            self.map_rows,
            self.map_cols,
            self.map_index,
            self.full_map_index,
        ):
            array.setflags(write=False)

    def sub_map_mask(self, scale):
        """bool [size, size]: the cells of `scale`'s sub-map that are proposals."""
        size = self.map_sizes[scale]
        mask = np.zeros(size * size, dtype=bool)
        mask[self.map_index[self.scale_slices[scale]]] = True
        return mask.reshape(size, size)

    def full_map_mask(self):
        """bool [N, N]: the cells (start, end) of the N x N map that are proposals."""
        mask = np.zeros(self.num_clips * self.num_clips, dtype=bool)
        mask[self.full_map_index] = True
        return mask.reshape(self.num_clips, self.num_clips)

    def seconds(self, duration):
        """float64 [P, 2]: (start, end) of every proposal in seconds.

        Proposal (i, j) covers [i * d / N, (j + 1) * d / N).
        """
        clip_seconds = float(duration) / self.num_clips
        return np.stack(
            [self.starts * clip_seconds, (self.ends + 1) * clip_seconds], axis=1
        )

    def get_config(self):
        return {"num_clips": self.num_clips, "scale_layers": list(self.scale_layers)}

    def __repr__(self):
        return (
            f"Lattice(num_clips={self.num_clips}, scale_layers={self.scale_layers}, "
            f"num_proposals={self.num_proposals})"
        )


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _suggestion(num_clips):
    if num_clips % 8 == 0:
        return (
            f"for num_clips={num_clips} use scale_layers="
            f"({num_clips // 4}, {num_clips // 8}, {num_clips // 8}) or "
            f"({num_clips},) for the dense lattice."
        )
    return f"use scale_layers=({num_clips},) for the dense lattice, or num_clips divisible by 8."
