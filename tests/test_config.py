import re

import pytest

from components.core.config import schema as configs
from components.core.config.errors import ConfigError
from components.core.config.schema import PipelineConfig


def test_defaults_and_presets_validate():
    PipelineConfig().validate()
    for name in configs.PRESETS:
        configs.preset(name).validate()


def test_from_dict_coerces_kfp_struct_floats_and_round_trips():
    config = PipelineConfig.from_dict({"head": {"max_steps": 70.0}, "model": {"alpha": 1}})
    assert config.head.max_steps == 70 and isinstance(config.head.max_steps, int)
    assert config.model.alpha == 1.0 and isinstance(config.model.alpha, float)
    assert PipelineConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("overrides, message", [
    ({"head": {"learning_rate": 0}}, "head.learning_rate"),
    ({"finetune": {"learning_rate": 1e-2}}, "fine-tune 10-100x lower"),
    ({"data": {"val_fraction": 0.6}}, "data.val_fraction"),
    ({"model": {"backbone": "alexnet"}}, "unknown backbone 'alexnet'"),
    ({"model": {"backbone": "xception", "image_size": 64}}, "image size 64"),
    ({"model": {"backbone": "mobilenet", "alpha": 0.3}}, "alpha in [0.25"),
    ({"model": {"backbone": "resnet50", "alpha": 0.5}}, "no width multiplier"),
    ({"model": {"weights": "/no/such/file.h5"}}, "does not exist"),
    ({"evaluate": {"min_accuracy": 2}}, "evaluate.min_accuracy"),
    ({"finetune": {"unfreeze_layers": -1}}, "finetune.unfreeze_layers"),
    ({"finetune": {"precision": "float16"}}, "finetune.precision='float16'; use one of auto"),
    ({"finetune": {"xla": True}}, "finetune.xla=True must be a string"),
    ({"finetune": {"xla": "on"}}, "finetune.xla='on'; use one of auto, always, never"),
    ({"model": {"mirror_average": True}, "augment": {"flip": False}},
     "but augment.flip is off"),
])
def test_validate_names_the_field_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        PipelineConfig().with_overrides(overrides).validate()


def test_unknown_keys_and_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match="unknown config key head.epoch"):
        PipelineConfig.from_dict({"head": {"epoch": 3}})
    with pytest.raises(ConfigError, match="whole number"):
        PipelineConfig.from_dict({"head": {"max_steps": 2.5}})
    with pytest.raises(ConfigError, match="true or false"):
        PipelineConfig.from_dict({"augment": {"flip": "yes"}})


def test_yaml_overrides_apply_on_a_preset(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("head:\n  max_steps: 50\nmodel:\n  image_size: 48\n")
    config = configs.load_yaml(str(path), configs.preset("demo"))
    assert (config.head.max_steps, config.model.image_size, config.model.backbone) == (
        50, 48, "mobilenet")
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        configs.load_yaml(str(path))


@pytest.mark.parametrize("overrides, message", [
    ({"export": {"tflite_variants": ["fp16", "int4"]}}, "unknown ['int4']"),
    ({"export": {"onnx_opset": 11}}, "export.onnx_opset=11; use 13 to 18"),
    ({"export": {"onnx_variants": ["fp8"]}}, "export.onnx_variants has unknown ['fp8']; use any "
                                             "of fp16, int8"),
    ({"export": {"onnx_variants": ["fp16"], "tensorrt_precision": "int8"}},
     "export.tensorrt_precision=int8 builds the engine from the int8 ONNX model; add int8 to "
     "export.onnx_variants"),
])
def test_export_settings_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        PipelineConfig().with_overrides(overrides).validate()


def test_yaml_reads_exponent_learning_rates_as_numbers(tmp_path):
    """PyYAML follows YAML 1.1, where 1e-5 (no dot) is a string; people write rates that way."""
    path = tmp_path / "config.yaml"
    path.write_text("finetune: {learning_rate: 1e-5, scratch_learning_rate: 3E-3}\n"
                    "head: {learning_rate: 1.0e-2, l2_candidates: [1e-4, 0.01]}\n"
                    "model: {weights: 1e5x}\n")  # a string that only looks like one stays one
    config = configs.load_yaml(str(path))
    assert config.finetune.learning_rate == 1e-5 and config.finetune.scratch_learning_rate == 3e-3
    assert config.head.l2_candidates == [1e-4, 0.01]
    assert config.model.weights == "1e5x"
