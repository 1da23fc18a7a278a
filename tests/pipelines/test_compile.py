"""The compiled pipeline: its steps, their order, their images, the blessing condition."""

import yaml

from components import __version__, steps
from components.core.config.schema import PipelineConfig
from pipelines.cli import main
from pipelines.transfer_learning import STEP_ORDER


def compiled(tmp_path):
    path = tmp_path / "pipeline.yaml"
    assert main(["compile", "-o", str(path)]) == 0
    return yaml.safe_load(path.read_text())


def test_the_steps_in_order_with_their_images(tmp_path):
    spec = compiled(tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    images = {name.replace("exec-", ""): executor["container"]["image"]
              for name, executor in executors.items()}
    assert sorted(images) == sorted(set(STEP_ORDER) - {"pick-trial"})  # no search: no pick
    assert images["tensorrt"] == steps.TENSORRT_IMAGE.format() and \
        images["tensorrt"].endswith(f":{__version__}")
    assert {images[s] for s in images if s != "tensorrt"} == {steps.TRAINING_IMAGE}
    for executor in executors.values():  # the image carries the package: no pip at run time
        assert "pip install" not in " ".join(executor["container"]["command"])

    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["ingest"]["dependentTasks"] == ["fingerprint"]
    assert tasks["preprocess"]["dependentTasks"] == ["ingest"]
    assert tasks["train-head"]["dependentTasks"] == ["preprocess"]
    assert sorted(tasks["finetune"]["dependentTasks"]) == ["preprocess", "train-head"]
    assert sorted(tasks["evaluate"]["dependentTasks"]) == ["finetune", "ingest", "preprocess",
                                                           "train-head"]
    blessed = tasks["condition-1"]
    assert "evaluate" in blessed["dependentTasks"]
    assert "pipelinechannel--evaluate-Output" in \
        blessed["triggerPolicy"]["condition"]
    inner = spec["components"][blessed["componentRef"]["name"]]["dag"]["tasks"]
    assert sorted(inner) == ["promote", "quantize", "report", "tensorrt"]
    assert sorted(inner["report"]["dependentTasks"]) == ["quantize", "tensorrt"]
    assert "report" in inner["promote"]["dependentTasks"]  # it registers the final card
    # what the registry holds now decides: never answered from KFP's cache
    assert tasks["evaluate"]["cachingOptions"] == inner["promote"]["cachingOptions"] == {}
    # the fingerprint step always runs; ingest is cached on its output, the others on theirs
    assert tasks["fingerprint"]["cachingOptions"] == {}
    assert all(tasks[name]["cachingOptions"] == {"enableCache": True}
               for name in STEP_ORDER[1:5])


def test_pipeline_parameters_are_the_source_and_one_struct_per_config_section(tmp_path):
    parameters = compiled(tmp_path)["root"]["inputDefinitions"]["parameters"]
    assert parameters.pop("source")["parameterType"] == "STRING"
    assert parameters.pop("registry")["parameterType"] == "STRUCT"  # {root, model, promote}
    assert sorted(parameters) == sorted(PipelineConfig().to_dict())
    assert {p["parameterType"] for p in parameters.values()} == {"STRUCT"}


def test_each_step_gets_only_the_config_sections_it_uses(tmp_path):
    """A step's KFP cache key must not change when another step's settings do."""
    tasks = compiled(tmp_path)["root"]["dag"]["tasks"]
    blessed = compiled(tmp_path)["components"]["comp-condition-1"]["dag"]["tasks"]
    sections = {name: sorted(p for p in task["inputs"].get("parameters", {}) if p != "source")
                for name, task in {**tasks, **blessed}.items() if name != "condition-1"}
    assert sections == {
        "fingerprint": [], "ingest": ["data", "source_fingerprint"],
        "preprocess": ["augment", "data", "model"],
        "train-head": ["head_config", "loss", "model"],
        # distribution: the deployment's worker count and launcher, fixed when compiled
        "finetune": ["augment", "data", "distribution", "finetune_config", "loss",
                     "model_config"],  # and "trial", one search trial's overrides, in a search
        "evaluate": ["data", "evaluate_config", "model_config", "registry"],
        "quantize": ["data", "export"], "tensorrt": ["data", "export"], "report": [],
        # the version keeps the whole config; the run's name and id come from KFP
        "promote": ["augment", "data", "evaluate_config", "export", "finetune_config",
                    "head_config", "loss", "model_config", "registry", "run_id", "run_name"]}
