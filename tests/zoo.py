"""Real architectures the coverage tests and bench/architectures.py build.

keras.applications models are built with `weights=None`; keras-hub backbones from
their constructor arguments with random weights (no preset is downloaded), each
wrapped in a small classifier the way users fine-tune them. Inputs are small so
that a whole family builds, plans and slims in a few seconds.
"""

import keras

APPLICATIONS = {
    # family: (builder, input size)
    "ResNet50": ("ResNet50", 32),
    "ResNet50V2": ("ResNet50V2", 32),
    "VGG16": ("VGG16", 32),
    "Xception": ("Xception", 71),
    "InceptionV3": ("InceptionV3", 75),
    "InceptionResNetV2": ("InceptionResNetV2", 75),
    "MobileNet": ("MobileNet", 32),
    "MobileNetV2": ("MobileNetV2", 32),
    "MobileNetV3Small": ("MobileNetV3Small", 32),
    "DenseNet121": ("DenseNet121", 32),
    "NASNetMobile": ("NASNetMobile", 32),
    "EfficientNetB0": ("EfficientNetB0", 32),
    "EfficientNetV2B0": ("EfficientNetV2B0", 32),
    "ConvNeXtTiny": ("ConvNeXtTiny", 32),
}


def application(family: str) -> tuple[keras.Model, tuple]:
    """A keras.applications model of the family and its input shape."""
    name, size = APPLICATIONS[family]
    builder = getattr(keras.applications, name)
    shape = (size, size, 3)
    # Logits, not probabilities: a random network's softmax is nearly uniform,
    # and equivalence checks on nearly constant outputs have no power.
    model = builder(
        weights=None, input_shape=shape, classes=10, classifier_activation=None
    )
    return model, shape


def _hub_backbones():
    from keras_hub import models as hub

    return {
        "ResNetBackbone": lambda: hub.ResNetBackbone(
            input_conv_filters=[16],
            input_conv_kernel_sizes=[3],
            stackwise_num_filters=[64, 32],
            stackwise_num_blocks=[2, 2],
            stackwise_num_strides=[1, 2],
            block_type="bottleneck_block",
            image_shape=(32, 32, 3),
        ),
        "ResNetBackbone (v2, basic)": lambda: hub.ResNetBackbone(
            input_conv_filters=[64],
            input_conv_kernel_sizes=[3],
            stackwise_num_filters=[64, 64],
            stackwise_num_blocks=[2, 2],
            stackwise_num_strides=[1, 2],
            block_type="basic_block",
            use_pre_activation=True,
            image_shape=(32, 32, 3),
        ),
        "DenseNetBackbone": lambda: hub.DenseNetBackbone(
            stackwise_num_repeats=[2, 2], growth_rate=8, image_shape=(32, 32, 3)
        ),
        "VGGBackbone": lambda: hub.VGGBackbone(
            stackwise_num_repeats=[1, 2],
            stackwise_num_filters=[8, 16],
            image_shape=(32, 32, 3),
        ),
        "XceptionBackbone": lambda: hub.XceptionBackbone(
            stackwise_conv_filters=[[8, 16], [16, 32], [32, 32]],
            stackwise_pooling=[True, True, False],
            image_shape=(64, 64, 3),
        ),
        "CSPNetBackbone": lambda: hub.CSPNetBackbone(
            stem_filters=16,
            stem_kernel_size=3,
            stem_strides=2,
            stackwise_depth=[1, 2],
            stackwise_strides=[1, 2],
            stackwise_num_filters=[32, 64],
            block_type="bottleneck_block",
            stage_type="csp",
            expand_ratio=[2.0],
            image_shape=(32, 32, 3),
        ),
        "EfficientNetBackbone": lambda: hub.EfficientNetBackbone(
            stackwise_width_coefficients=[1.0, 1.0],
            stackwise_depth_coefficients=[1.0, 1.0],
            stackwise_kernel_sizes=[3, 3],
            stackwise_num_repeats=[1, 2],
            stackwise_input_filters=[16, 16],
            stackwise_output_filters=[16, 24],
            stackwise_expansion_ratios=[1, 4],
            stackwise_squeeze_and_excite_ratios=[0.25, 0.25],
            stackwise_strides=[1, 2],
            stackwise_block_types=["v1", "v1"],
            stackwise_force_input_filters=[0, 0],
            stackwise_nores_option=[False, False],
            input_shape=(32, 32, 3),
            num_features=64,
        ),
        "MobileNetBackbone": lambda: hub.MobileNetBackbone(
            stackwise_expansion=[[40, 56], [64]],
            stackwise_num_blocks=[2, 1],
            stackwise_num_filters=[[16, 16], [24]],
            stackwise_kernel_size=[[3, 3], [5]],
            stackwise_num_strides=[[2, 1], [2]],
            stackwise_se_ratio=[[None, None], [0.25]],
            stackwise_activation=[["relu", "relu"], ["hard_swish"]],
            stackwise_padding=[[1, 1], [2]],
            output_num_filters=64,
            depthwise_filters=8,
            depthwise_stride=2,
            depthwise_residual=False,
            last_layer_filter=64,
            image_shape=(32, 32, 3),
        ),
        "HGNetV2Backbone": lambda: hub.HGNetV2Backbone(
            depths=[1, 1],
            embedding_size=16,
            hidden_sizes=[32, 64],
            stem_channels=[3, 8, 16],
            hidden_act="relu",
            use_learnable_affine_block=False,
            stackwise_stage_filters=[[16, 8, 32, 1, 2, 3], [32, 16, 64, 1, 2, 3]],
            apply_downsample=[False, True],
            use_lightweight_conv_block=[False, True],
            image_shape=(32, 32, 3),
        ),
    }


HUB_FAMILIES = [
    "ResNetBackbone",
    "ResNetBackbone (v2, basic)",
    "DenseNetBackbone",
    "VGGBackbone",
    "XceptionBackbone",
    "CSPNetBackbone",
    "EfficientNetBackbone",
    "MobileNetBackbone",
    "HGNetV2Backbone",
]


def hub_classifier(family: str) -> tuple[keras.Model, tuple]:
    """A keras-hub backbone of the family inside a small classifier."""
    backbone = _hub_backbones()[family]()
    shape = tuple(backbone.input.shape[1:])
    inputs = keras.Input(shape)
    features = backbone(inputs)
    if isinstance(features, dict):
        # Pyramid outputs: classify from the widest (deepest) map.
        features = max(features.values(), key=lambda t: t.shape[-1])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    outputs = keras.layers.Dense(10, name="classes")(x)
    return keras.Model(inputs, outputs, name=f"hub_{backbone.name}"), shape


def _hub_transformers():
    from keras_hub import models as hub

    text = {"vocabulary_size": 100, "max_sequence_length": 16}
    # The decoder families' tiny config: grouped-query attention, 2 query heads
    # per key/value head.
    decoder = {
        "vocabulary_size": 100,
        "num_layers": 2,
        "num_query_heads": 4,
        "num_key_value_heads": 2,
        "hidden_dim": 32,
        "intermediate_dim": 64,
    }
    return {
        "ViTBackbone": lambda: hub.ViTBackbone(
            image_shape=(32, 32, 3),
            patch_size=4,
            num_layers=2,
            num_heads=4,
            hidden_dim=64,
            mlp_dim=128,
        ),
        "DINOV2Backbone": lambda: hub.DINOV2Backbone(
            patch_size=4,
            num_layers=2,
            hidden_dim=32,
            num_heads=2,
            intermediate_dim=64,
            image_shape=(28, 28, 3),
            position_embedding_shape=(28, 28, 3),
        ),
        "CLIPVisionEncoder": lambda: hub.CLIPVisionEncoder(
            patch_size=4,
            hidden_dim=32,
            num_layers=2,
            num_heads=2,
            intermediate_dim=64,
            image_shape=(32, 32, 3),
        ),
        "BertBackbone": lambda: hub.BertBackbone(
            num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, **text
        ),
        "DistilBertBackbone": lambda: hub.DistilBertBackbone(
            num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, **text
        ),
        "RobertaBackbone": lambda: hub.RobertaBackbone(
            num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, **text
        ),
        "ElectraBackbone": lambda: hub.ElectraBackbone(
            vocab_size=100,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            embedding_dim=16,
            intermediate_dim=64,
            max_sequence_length=16,
        ),
        "WhisperBackbone": lambda: hub.WhisperBackbone(
            vocabulary_size=100,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            intermediate_dim=64,
            num_mels=8,
            max_encoder_sequence_length=32,
            max_decoder_sequence_length=16,
        ),
        "AlbertBackbone": lambda: hub.AlbertBackbone(
            num_layers=2,
            num_heads=2,
            embedding_dim=16,
            hidden_dim=32,
            intermediate_dim=64,
            **text,
        ),
        "DeiTBackbone": lambda: hub.DeiTBackbone(
            image_shape=(32, 32, 3),
            patch_size=4,
            num_layers=2,
            num_heads=4,
            hidden_dim=64,
            intermediate_dim=128,
        ),
        "GPT2Backbone": lambda: hub.GPT2Backbone(
            num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, **text
        ),
        "GemmaBackbone": lambda: hub.GemmaBackbone(**decoder, head_dim=8),
        "MistralBackbone": lambda: hub.MistralBackbone(**decoder),
        "QwenBackbone": lambda: hub.QwenBackbone(**decoder),
        "LlamaBackbone": lambda: hub.LlamaBackbone(**decoder),
    }


# keras-hub transformer backbones with tiny random configs. Gemma and Mistral
# decoder blocks are traced at a fixed length and re-created from their configs
# (hos_keras.fixed_blocks); Qwen's heads freeze (its head size derives from
# hidden_dim // num_query_heads); AlbertBackbone shares one block across its
# layers; DeiT's encoder, GPT-2's blocks and Llama's (whose get_config fails in
# keras-hub 0.32) cannot be traced or re-created, so they freeze.
HUB_TRANSFORMERS = list(_hub_transformers())


def hub_transformer(family: str) -> keras.Model:
    """A keras-hub transformer backbone of the family (random weights)."""
    return _hub_transformers()[family]()


def transformer_inputs(model: keras.Model, batch: int = 4, length: int = 16, seed=0):
    """Inputs for a keras-hub transformer backbone, by input name.

    Token ids are drawn below 100 (the zoo's vocabulary), padding masks end some
    sequences early, segment ids are 0 or 1, float inputs (images, audio
    features) are standard normal.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    inputs = {}
    for tensor in model.inputs:
        name = tensor.name
        if name.endswith("token_ids"):
            inputs[name] = rng.integers(0, 100, size=(batch, length)).astype("int32")
        elif name.endswith("padding_mask"):
            mask = np.ones((batch, length), "int32")
            for row in range(1, batch):
                mask[row, length - 3 * row :] = 0
            inputs[name] = mask
        elif name.endswith("segment_ids"):
            inputs[name] = rng.integers(0, 2, size=(batch, length)).astype("int32")
        else:
            shape = [batch if d is None else d for d in (batch, *tensor.shape[1:])]
            shape = [length * 2 if d is None else d for d in shape]
            inputs[name] = rng.normal(size=shape).astype("float32")
    return inputs
