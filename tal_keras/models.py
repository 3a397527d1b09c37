"""Builders of the two networks and of the inference model that runs both
(docs/design.md sections 5 and 6). Each reads one `ModelConfig`."""

import keras

from tal_keras.layers import (
    BoundaryFeatures,
    ClassHead,
    ClassMeanEvidence,
    ClassMeanMatches,
    ClipEncoder,
    OverlapHead,
    StackedMaxPool,
    SubMapNetwork,
)


def build_proposal_network(config):
    """The proposal network: clip features -> P_over for every proposal.

    ClipEncoder -> StackedMaxPool -> SubMapNetwork -> OverlapHead.

    Args:
        config: `ModelConfig`.

    Returns:
        keras.Model named "proposal_network", input "clip_features" float
        [batch, N, D], output "overlap_scores" float [batch, P] in (0, 1),
        lattice order.
    """
    clip_features = keras.Input(
        (config.num_clips, config.feature_dim), name="clip_features"
    )
    clip_sequence = _clip_encoder(config)(clip_features)
    proposal_features = _proposal_features(config)(clip_sequence)
    if config.boundary_features:
        proposal_features = BoundaryFeatures(
            config.num_clips,
            config.scale_layers,
            config.hidden_size,
            name="boundary_features",
        )([proposal_features, clip_sequence])
    map_features = SubMapNetwork(
        config.num_clips,
        config.scale_layers,
        config.hidden_size,
        kernel_size=config.kernel_size,
        num_conv_layers=config.num_conv_layers,
        map_mode=config.map_mode,
        conv_implementation=config.conv_implementation,
        name="sub_map_network",
    )(proposal_features)
    head_inputs = map_features
    if config.class_mean_evidence:
        evidence = ClassMeanEvidence(
            config.num_clips,
            config.scale_layers,
            hidden_units=config.class_mean_evidence,
            name="class_mean_evidence",
        )(_class_mean_matches(config)(clip_features))
        head_inputs = [map_features, evidence]
    overlap_scores = OverlapHead(
        cell_bias=config.overlap_cell_bias, name="overlap_scores"
    )(head_inputs)
    return keras.Model(clip_features, overlap_scores, name="proposal_network")


def build_classifier_network(config):
    """The classifier: clip features -> class probabilities for every proposal.

    Its own ClipEncoder and StackedMaxPool, no map convs, then Dense(C) +
    softmax per proposal (with class_mean_logits, the class-mean matches'
    logits added before the softmax).

    Args:
        config: `ModelConfig` (map_mode, kernel_size, num_conv_layers and
            conv_implementation are not used).

    Returns:
        keras.Model named "classifier_network", input "clip_features" float
        [batch, N, D], output "class_scores" float [batch, P, C], lattice
        order, each row summing to 1.
    """
    clip_features = keras.Input(
        (config.num_clips, config.feature_dim), name="clip_features"
    )
    clip_sequence = _clip_encoder(config)(clip_features)
    proposal_features = _proposal_features(config)(clip_sequence)
    head_inputs = proposal_features
    if config.class_mean_logits:
        matches, _ = _class_mean_matches(config)(clip_features)
        head_inputs = [proposal_features, matches]
    class_scores = ClassHead(config.num_classes, name="class_scores")(head_inputs)
    return keras.Model(clip_features, class_scores, name="classifier_network")


def build_inference_model(proposal_network, classifier_network):
    """One model running both trained networks on the same clip features.

    Args:
        proposal_network: from `build_proposal_network` (or loaded).
        classifier_network: from `build_classifier_network` (or loaded), for
            the same num_clips, scale_layers and feature_dim.

    Returns:
        keras.Model named "inference_model", input "clip_features" float
        [batch, N, D], output a dict {"overlap_scores": [batch, P],
        "class_scores": [batch, P, C]}, both in lattice order.
    """
    proposal_shape = tuple(proposal_network.inputs[0].shape[1:])
    classifier_shape = tuple(classifier_network.inputs[0].shape[1:])
    if proposal_shape != classifier_shape:
        raise ValueError(
            f"The proposal network takes clip features of shape {proposal_shape} "
            f"but the classifier takes {classifier_shape}; both must be built "
            "with the same num_clips and feature_dim."
        )
    proposal_count = proposal_network.outputs[0].shape[1]
    classifier_count = classifier_network.outputs[0].shape[1]
    if proposal_count != classifier_count:
        raise ValueError(
            f"The proposal network scores {proposal_count} proposals but the "
            f"classifier {classifier_count}; both must use the same scale_layers."
        )
    clip_features = keras.Input(proposal_shape, name="clip_features")
    # Identity layers give the outputs their own names (not the sub-models').
    outputs = {
        "overlap_scores": keras.layers.Identity(name="overlap_scores")(
            proposal_network(clip_features)
        ),
        "class_scores": keras.layers.Identity(name="class_scores")(
            classifier_network(clip_features)
        ),
    }
    return keras.Model(clip_features, outputs, name="inference_model")


def _clip_encoder(config):
    return ClipEncoder(
        config.hidden_size,
        normalization=config.clip_normalization,
        context_kernel=config.clip_context,
        name="clip_encoder",
    )


def _class_mean_matches(config):
    return ClassMeanMatches(
        config.num_clips,
        config.scale_layers,
        config.num_classes,
        flank_fraction=config.class_mean_flank,
        name="class_mean_matches",
    )


def _proposal_features(config):
    return StackedMaxPool(
        config.num_clips,
        config.scale_layers,
        mode=config.proposal_features,
        hidden_size=config.hidden_size,
        name="proposal_features",
    )
