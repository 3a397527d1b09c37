"""Reading datasets: annotations (ActivityNet JSON) and per-video features.

numpy only: nothing here imports TensorFlow. The synthetic data generator is
`tal_keras.data.synthetic` (imported on demand).
"""

from tal_keras.clips import HACS_TIMING, FeatureTiming
from tal_keras.data.annotations import (
    Annotations,
    VideoAnnotation,
    feature_key_candidates,
    load_annotations,
    read_class_names,
)
from tal_keras.data.features import (
    FeatureStore,
    Hdf5FeatureStore,
    NpyFeatureStore,
    find_usable_videos,
    load_usable_videos,
    open_feature_store,
)

__all__ = [
    "HACS_TIMING",
    "Annotations",
    "FeatureStore",
    "FeatureTiming",
    "Hdf5FeatureStore",
    "NpyFeatureStore",
    "VideoAnnotation",
    "feature_key_candidates",
    "find_usable_videos",
    "load_annotations",
    "load_usable_videos",
    "open_feature_store",
    "read_class_names",
]
