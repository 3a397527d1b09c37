"""Which training videos are held out to choose each network's kept epoch
(`TrainConfig.select_epoch_on="held_out"`), so that the evaluation subset,
whose numbers are reported, is never used to choose. numpy only."""

import hashlib

import numpy as np


def held_out_rows(video_ids, fraction):
    """int64 [K]: ascending rows of `video_ids` to hold out, K =
    round(fraction * V), at least 1 and at most V - 1 when V >= 2.

    The videos are ranked by a hash of their id, so the choice depends on
    the ids alone: the same for both networks, on resuming, and whatever
    the order of the annotation file.
    """
    count = len(video_ids)
    if count < 2:
        return np.zeros(0, np.int64)
    held = min(max(round(fraction * count), 1), count - 1)
    ranks = [
        hashlib.sha256(str(video_id).encode()).hexdigest() for video_id in video_ids
    ]
    return np.sort(np.argsort(ranks, kind="stable")[:held]).astype(np.int64)
