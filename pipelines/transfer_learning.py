"""The transfer-learning pipeline: ingest -> preprocess -> train_head -> finetune -> evaluate,
then, for a blessed model only, quantize and tensorrt. No environment is read at import time."""

from kfp import compiler, dsl

from components import steps

PIPELINE_NAME = "tlpipe-transfer-learning"
STEP_ORDER = ("ingest", "preprocess", "train-head", "finetune", "evaluate", "quantize",
              "tensorrt")


@dsl.pipeline(name=PIPELINE_NAME,
              description="Transfer learning from a pretrained keras.applications backbone: "
                          "head on cached features, fine-tuning, evaluation, TFLite/ONNX/TensorRT.")
def transfer_learning(source: str, config: dict = {}):
    """source: a folder of class subfolders (or train/val/test subfolders of class folders).
    config: overrides of `components.core.config.PipelineConfig` (nested dict)."""
    ingested = steps.ingest(source=source, config=config)
    prepared = steps.preprocess(dataset=ingested.outputs["dataset"], config=config)
    head = steps.train_head(features=prepared.outputs["features"], config=config)
    tuned = steps.finetune(images=prepared.outputs["images"],
                           backbone=prepared.outputs["backbone"], head=head.outputs["head"],
                           config=config)
    evaluated = steps.evaluate(model=tuned.outputs["model"], images=prepared.outputs["images"],
                               config=config)
    with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712 (KFP condition)
        steps.quantize(model=tuned.outputs["model"], images=prepared.outputs["images"],
                       config=config)
        steps.tensorrt(model=tuned.outputs["model"], images=prepared.outputs["images"],
                       config=config)


def compile_pipeline(path: str) -> str:
    """Writes the pipeline as KFP v2 YAML to `path`; returns `path`."""
    compiler.Compiler().compile(transfer_learning, package_path=path)
    return path
