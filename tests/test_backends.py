"""Same outputs on the TensorFlow and JAX backends: models saved as `.keras`
on this backend are loaded and run on the other one in a subprocess."""

import dataclasses
import textwrap

import keras
import numpy as np
from python_process import run_python
from tiny_configs import EVERY_DEPARTURE

from tal_keras.losses import ProposalClassLoss, ScaledOverlapLoss
from tal_keras.models import (
    build_classifier_network,
    build_inference_model,
    build_proposal_network,
)

OTHER_BACKEND_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import keras
    import numpy as np

    import tal_keras.layers  # noqa: F401  registers the layers
    from tal_keras.losses import ProposalClassLoss, ScaledOverlapLoss

    folder = Path(sys.argv[1])
    clip_features = np.load(folder / "clip_features.npy")
    for path in sorted(folder.glob("*.keras")):
        outputs = keras.saving.load_model(path)(clip_features)
        if not isinstance(outputs, dict):
            outputs = {"output": outputs}
        for name, value in outputs.items():
            np.save(folder / f"{path.stem}.{name}.other.npy", keras.ops.convert_to_numpy(value))
    overlap_loss = ScaledOverlapLoss()(np.load(folder / "max_iou.npy"), np.load(folder / "scores.npy"))
    class_loss = ProposalClassLoss()(np.load(folder / "labels.npy"), np.load(folder / "probabilities.npy"))
    np.save(folder / "losses.other.npy", np.array([float(overlap_loss), float(class_loss)]))
    print(keras.backend.backend())
    """
)


def test_tensorflow_and_jax_give_the_same_outputs(small_config, tmp_path):
    this_backend = keras.backend.backend()
    other_backend = "jax" if this_backend == "tensorflow" else "tensorflow"
    keras.utils.set_random_seed(0)
    models = {
        "proposal_s2dtan_pool": build_proposal_network(small_config),
        "proposal_2dtan_conv": build_proposal_network(
            dataclasses.replace(
                small_config, map_mode="2dtan", proposal_features="conv"
            )
        ),
        "proposal_departures": build_proposal_network(
            dataclasses.replace(small_config, **EVERY_DEPARTURE)
        ),
        "inference": build_inference_model(
            build_proposal_network(small_config), build_classifier_network(small_config)
        ),
    }
    # The class means start at zero and the MLP's output layer too: give
    # them a say.
    departures = models["proposal_departures"]
    rng = np.random.default_rng(1)
    for weight in departures.get_layer("class_mean_matches").weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    evidence = departures.get_layer("class_mean_evidence")
    evidence.output_layer.kernel.assign(
        np.linspace(-1, 1, 4).reshape(4, 1).astype("float32")
    )
    rng = np.random.default_rng(0)
    clip_features = rng.normal(
        size=(2, small_config.num_clips, small_config.feature_dim)
    ).astype("float32")
    np.save(tmp_path / "clip_features.npy", clip_features)
    expected = {}
    for stem, model in models.items():
        model.save(tmp_path / f"{stem}.keras")
        outputs = model(clip_features)
        if not isinstance(outputs, dict):
            outputs = {"output": outputs}
        for name, value in outputs.items():
            expected[f"{stem}.{name}"] = keras.ops.convert_to_numpy(value)

    proposals = small_config.lattice.num_proposals
    max_iou = rng.uniform(0, 1, size=(2, proposals)).astype("float32")
    scores = rng.uniform(0.01, 0.99, size=(2, proposals)).astype("float32")
    labels = rng.integers(-1, 5, size=(2, proposals))
    probabilities = rng.dirichlet(np.ones(5), size=(2, proposals)).astype("float32")
    for name, value in [
        ("max_iou", max_iou),
        ("scores", scores),
        ("labels", labels),
        ("probabilities", probabilities),
    ]:
        np.save(tmp_path / f"{name}.npy", value)
    expected["losses"] = np.array(
        [
            float(ScaledOverlapLoss()(max_iou, scores)),
            float(ProposalClassLoss()(labels, probabilities)),
        ]
    )

    result = run_python(
        ["-c", OTHER_BACKEND_SCRIPT, tmp_path], backend=other_backend, timeout=600
    )
    assert result.stdout.strip().splitlines()[-1] == other_backend
    assert len(expected) == 6
    for key, value in expected.items():
        np.testing.assert_allclose(
            np.load(tmp_path / f"{key}.other.npy"), value, atol=1e-5, err_msg=key
        )
