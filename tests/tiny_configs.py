"""The small model configuration the tests share: CPU-sized, three scales."""

from tal_keras.config import DataConfig, ModelConfig

# N 16 clips, scales 4,2,2 (P = 30 proposals), D 6, H 4, K 3, L 2, C 5.
TINY_MODEL_FIELDS = {
    "num_clips": 16,
    "scale_layers": (4, 2, 2),
    "feature_dim": 6,
    "hidden_size": 4,
    "kernel_size": 3,
    "num_conv_layers": 2,
    "num_classes": 5,
}

# Variants some tests use: one conv layer, H 8, 3 classes; and the same at N 8.
ONE_LAYER = {"hidden_size": 8, "num_conv_layers": 1, "num_classes": 3}
EIGHT_CLIPS = {**ONE_LAYER, "num_clips": 8, "scale_layers": (2, 1, 1), "hidden_size": 4}


def tiny_model(**changes):
    """The tiny `ModelConfig`, with `changes` to some of its fields."""
    return ModelConfig(**{**TINY_MODEL_FIELDS, **changes})


def data_config_of(dataset):
    """`DataConfig` of a `synthetic.generate` dataset."""
    return DataConfig(
        annotations=dataset.annotations_path,
        features=dataset.features_path,
        category_file=dataset.classes_path,
    )
