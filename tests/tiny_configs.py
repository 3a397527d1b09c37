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


def tiny_run_flagfile(tmp_path, name, *extra_flags):
    """Writes tmp_path/NAME.flags for a train.py run in tmp_path/NAME on a
    40-video synthetic dataset generated in tmp_path/data (N 16, scales
    4,2,2, H 8, K 3, batch 4), with `extra_flags` appended."""
    data = tmp_path / "data"
    flagfile = tmp_path / f"{name}.flags"
    lines = [
        f"--workdir={tmp_path / name}",
        f"--annotations={data / 'annotations.json'}",
        f"--features={data / 'features'}",
        f"--category_file={data / 'classes.txt'}",
        "--synthetic_videos=40",
        "--feature_dim=256",
        "--num_clips=16",
        "--scale_layers=4,2,2",
        "--hidden_size=8",
        "--kernel_size=3",
        "--batch_size=4",
        *extra_flags,
    ]
    flagfile.write_text("\n".join(lines))
    return flagfile
