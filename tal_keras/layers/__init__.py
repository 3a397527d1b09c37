"""Keras 3 layers of both networks, one public class per file, in data-flow
order: clips -> proposal features -> sub-maps -> scores."""

from tal_keras.layers.band_map_conv import BandMapConv
from tal_keras.layers.boundary_features import BoundaryFeatures
from tal_keras.layers.class_head import ClassHead
from tal_keras.layers.class_mean_evidence import ClassMeanEvidence
from tal_keras.layers.class_mean_matches import ClassMeanMatches
from tal_keras.layers.clip_encoder import ClipEncoder
from tal_keras.layers.masked_map_conv import MaskedMapConv
from tal_keras.layers.overlap_head import OverlapHead
from tal_keras.layers.stacked_max_pool import StackedMaxPool
from tal_keras.layers.sub_map_network import SubMapNetwork

__all__ = [
    "BandMapConv",
    "BoundaryFeatures",
    "ClassHead",
    "ClassMeanEvidence",
    "ClassMeanMatches",
    "ClipEncoder",
    "MaskedMapConv",
    "OverlapHead",
    "StackedMaxPool",
    "SubMapNetwork",
]
