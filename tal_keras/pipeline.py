"""tf.data input pipelines over a `ClipCache`: shuffle, batch, parallel
loading, prefetch."""

import numpy as np
import tensorflow as tf

TARGETS = ("max_iou", "classes")


def make_dataset(cache, target, batch_size, shuffle=False, seed=0):
    """Batches of (clip_features [B, N, D] float32, target [B, P]).

    Args:
        cache: a `ClipCache`.
        target: "max_iou" (proposal network) or "classes" (classifier).
        batch_size: videos per batch; the last batch may be smaller.
        shuffle: reshuffle the videos every epoch.
        seed: shuffling seed.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}.")
    num_videos = len(cache)
    clips, targets = cache.clips, getattr(cache, target)
    target_dtype = tf.float32 if target == "max_iou" else tf.int32

    def load(indices):
        # Sorted reads are sequential in a memory-mapped cache.
        indices = np.sort(indices)
        return (
            np.asarray(clips[indices], dtype=np.float32),
            np.asarray(targets[indices], dtype=target_dtype.as_numpy_dtype),
        )

    def load_batch(indices):
        batch_clips, batch_targets = tf.numpy_function(
            load, [indices], [tf.float32, target_dtype], stateful=False
        )
        batch_clips.set_shape([None, clips.shape[1], clips.shape[2]])
        batch_targets.set_shape([None, targets.shape[1]])
        return batch_clips, batch_targets

    dataset = tf.data.Dataset.range(num_videos)
    if shuffle:
        dataset = dataset.shuffle(num_videos, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(load_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_inference_dataset(cache, batch_size):
    """Batches of clip features [B, N, D] float32, in cache order."""
    return make_dataset(cache, "max_iou", batch_size).map(lambda clips, _: clips)
