import re

import pytest

from components.core.config import schema as configs
from components.core.errors import ConfigError
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
        PipelineConfig().with_overrides(overrides).preflight()


def test_only_the_preflight_and_the_preprocess_step_look_for_the_weights_file():
    config = PipelineConfig().with_overrides({"model": {"weights": "/no/such/file.h5"}})
    config.validate()  # a step pod that does not mount the file
    with pytest.raises(ConfigError, match="weights file /no/such/file.h5 does not exist"):
        config.preflight()


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


def step_sections() -> dict[str, tuple[str, ...]]:
    """{pipeline step or "worker": the config sections it receives}, read from the step
    functions of components/steps.py (a dict parameter named SECTION or SECTION_config)."""
    import inspect

    from components import steps
    from components.core import stages

    found = {"worker": stages.WORKER_SECTIONS}
    for name, component in vars(steps).items():
        function = getattr(component, "python_func", None)
        if function is None:
            continue
        found[name] = tuple(
            parameter.name.removesuffix("_config")
            for parameter in inspect.signature(function).parameters.values()
            if parameter.annotation is dict
            and parameter.name.removesuffix("_config") in configs.SECTIONS)
    return found


def assert_every_step_accepts_its_sections(config: PipelineConfig) -> None:
    from components.core import stages

    values = config.to_dict()
    for step, sections in step_sections().items():
        try:
            stages.step_config({name: values[name] for name in sections})
        except ConfigError as error:
            raise AssertionError(f"step {step} refused what the CLI accepted: {error}") from None


def test_the_steps_receive_the_sections_they_use():
    sections = step_sections()
    assert sections["train_head"] == ("model", "loss", "head")
    assert set(sections["finetune"]) == {"data", "model", "augment", "loss", "finetune"}
    assert "head" not in sections["finetune"] and "finetune" not in sections["train_head"]


@pytest.mark.parametrize("head_rate, finetune_rate", [(0.1, 0.02), (1e-6, 1e-7)])
def test_learning_rates_the_cli_accepts_are_accepted_by_every_step(head_rate, finetune_rate):
    config = PipelineConfig().with_overrides({"head": {"learning_rate": head_rate},
                                              "finetune": {"learning_rate": finetune_rate}})
    assert_every_step_accepts_its_sections(config.preflight())
    with pytest.raises(ConfigError, match="is not below head.learning_rate"):  # still the CLI's
        config.with_overrides({"finetune": {"learning_rate": head_rate}}).preflight()


def _section_values():
    """Hypothesis strategy: overrides of the fields whose rules tie sections together or
    depend on each other, drawn across and beyond their valid ranges."""
    from hypothesis import strategies as st

    rates = st.sampled_from([0.0, 1e-7, 1e-6, 1e-4, 3e-4, 1e-3, 0.01, 0.02, 0.1, 1.0])
    return st.fixed_dictionaries({
        "model": st.fixed_dictionaries({"weights": st.sampled_from(["imagenet", "none"]),
                                        "mirror_average": st.booleans(),
                                        "dropout": st.sampled_from([0.0, 0.2, 0.9])}),
        "augment": st.fixed_dictionaries({"flip": st.booleans(),
                                          "views": st.integers(0, 3)}),
        "head": st.fixed_dictionaries({"learning_rate": rates,
                                       "patience": st.integers(1, 30)}),
        "finetune": st.fixed_dictionaries({
            "learning_rate": rates, "epochs": st.sampled_from([-1, 0, 2, 5]),
            "warmup_epochs": st.integers(-1, 1), "batch_size": st.integers(1, 64),
            "search": st.fixed_dictionaries({
                "learning_rates": st.lists(rates.filter(bool), max_size=2),
                "epochs": st.lists(st.integers(2, 6), max_size=2)})}),
        "export": st.fixed_dictionaries({
            "tensorrt_precision": st.sampled_from(["fp32", "fp16", "int8"]),
            "onnx_variants": st.lists(st.sampled_from(["fp16", "int8"]), unique=True)}),
    })


def test_every_config_the_cli_accepts_is_accepted_by_every_step():
    from hypothesis import HealthCheck, assume, given, settings

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(_section_values())
    def check(overrides):
        config = PipelineConfig().with_overrides(overrides)
        assume(not config.problems())  # what `tlpipe run` accepts
        assert_every_step_accepts_its_sections(config)

    check()
