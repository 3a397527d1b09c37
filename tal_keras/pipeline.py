"""tf.data input pipelines over a `ClipCache` (or a `CacheSubset` view):
shuffle, batch, parallel loading, prefetch.

A shuffled dataset visits the videos of epoch e in `epoch_order(V, seed, e)`,
a pure function of (seed, e): a run resumed at epoch e sees the same batches
as one that never stopped. Keras `fit` tells the dataset its epoch through
`epoch_callbacks(dataset)`; iterated without them, successive passes are
epochs 0, 1, 2, ...

Every batch holds exactly `batch_size` videos: the last batch of a pass is
filled up with padding videos (all-zero clips, every target `PADDING`),
which the losses leave out and inference drops, so each network compiles
one step shape per pass instead of a second one for a shorter last batch.
"""

import keras
import numpy as np
import tensorflow as tf

from tal_keras.data.cache import drop_mapped_pages

TARGETS = ("max_iou", "classes")
# The target of every proposal of a padding video: no overlap value (real
# ones are >= 0) and no class (as an unlabelled proposal).
PADDING = -1


def epoch_order(num_videos, seed, epoch):
    """int64 [V]: the order of the videos in epoch `epoch` (from 0), a
    permutation that depends on (seed, epoch) alone."""
    return np.random.default_rng((seed, epoch)).permutation(num_videos)


class EpochOrder(keras.callbacks.Callback):
    """The epoch whose order a shuffled dataset serves next.

    As a Keras callback it takes the epoch from `fit` (`on_epoch_begin`, which
    runs before `fit` starts that epoch's pass over the dataset), so passes
    `fit` makes for other reasons (a peek to build the model, an iterator made
    ahead at an epoch's end) do not shift it. Without `fit`, each pass serves
    the next epoch.

    Args:
        num_videos: V.
        seed: the shuffling seed.
    """

    def __init__(self, num_videos, seed):
        super().__init__()
        self.num_videos = num_videos
        self.seed = seed
        self.next_epoch = 0
        self.epoch_from_fit = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_from_fit = epoch

    def on_train_end(self, logs=None):
        if self.epoch_from_fit is not None:
            self.next_epoch = self.epoch_from_fit + 1
        self.epoch_from_fit = None

    def order_of_this_pass(self):
        """int64 [V]: the order of the pass starting now."""
        if self.epoch_from_fit is not None:
            epoch = self.epoch_from_fit
        else:
            epoch = self.next_epoch
            self.next_epoch += 1
        return epoch_order(self.num_videos, self.seed, epoch)


def make_dataset(cache, target, batch_size, shuffle=False, seed=0):
    """Batches of (clip_features [B, N, D] float32, target [B, P]).

    Args:
        cache: a `ClipCache` or a `CacheSubset` of one.
        target: "max_iou" (proposal network) or "classes" (classifier).
        batch_size: B, videos per batch; the last batch of a pass ends with
            padding videos (zero clips, targets `PADDING`) to make up B.
        shuffle: a new order every epoch, `epoch_order(V, seed, epoch)`; pass
            `epoch_callbacks(dataset)` to Keras `fit`.
        seed: shuffling seed.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}.")
    num_videos = len(cache)
    clips, targets = cache.clips, getattr(cache, target)
    target_dtype = tf.float32 if target == "max_iou" else tf.int32

    cache_dtype = tf.as_dtype(clips.dtype)

    def load(indices):
        # Sorted reads are sequential in a memory-mapped cache.
        indices = np.sort(indices)
        padding = batch_size - len(indices)
        batch_clips = np.asarray(clips[indices])  # a copy, never a view of the map
        batch_targets = np.asarray(targets[indices], dtype=target_dtype.as_numpy_dtype)
        if padding:
            batch_clips = np.concatenate(
                [batch_clips, np.zeros((padding, *clips.shape[1:]), clips.dtype)]
            )
            batch_targets = np.concatenate(
                [
                    batch_targets,
                    np.full((padding, targets.shape[1]), PADDING, batch_targets.dtype),
                ]
            )
        # The RSS of a pass over a HACS-sized cache stays that of a few batches.
        drop_mapped_pages(clips)
        drop_mapped_pages(targets)
        return batch_clips, batch_targets

    def load_batch(indices):
        batch_clips, batch_targets = tf.numpy_function(
            load, [indices], [cache_dtype, target_dtype], stateful=False
        )
        # TensorFlow's float16 -> float32 cast is vectorised; numpy's is not.
        batch_clips = tf.cast(batch_clips, tf.float32)
        batch_clips.set_shape([batch_size, clips.shape[1], clips.shape[2]])
        batch_targets.set_shape([batch_size, targets.shape[1]])
        return batch_clips, batch_targets

    order = None
    if shuffle:
        order = EpochOrder(num_videos, seed)

        def order_of_pass(_):
            videos = tf.numpy_function(
                order.order_of_this_pass, [], tf.int64, stateful=True
            )
            videos.set_shape([num_videos])
            return videos

        dataset = tf.data.Dataset.from_tensors(0).map(order_of_pass).unbatch()
    else:
        dataset = tf.data.Dataset.range(num_videos)
    dataset = dataset.batch(batch_size)
    if shuffle:
        num_batches = -(-num_videos // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
    dataset = dataset.map(load_batch, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    dataset.epoch_order = order
    return dataset


def epoch_callbacks(dataset):
    """The Keras callbacks `fit` needs to give `dataset` its epoch: [] unless
    it is a shuffled `make_dataset`."""
    order = getattr(dataset, "epoch_order", None)
    return [] if order is None else [order]


def make_inference_dataset(cache, batch_size):
    """Batches of clip features [B, N, D] float32, in cache order; the last
    one ends with all-zero padding videos, whose outputs the caller drops."""
    return make_dataset(cache, "max_iou", batch_size).map(lambda clips, _: clips)
