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
def transfer_learning(source: str, data: dict = {}, model: dict = {}, augment: dict = {},
                      loss: dict = {}, head: dict = {}, finetune: dict = {},
                      evaluate: dict = {}, export: dict = {}):
    """source: a folder of class subfolders (or train/val/test subfolders of class folders).
    The other parameters are the sections of `components.core.config.PipelineConfig` (overrides
    of its defaults); each step receives only the sections it uses."""
    ingested = steps.ingest(source=source, data=data)
    prepared = steps.preprocess(dataset=ingested.outputs["dataset"], data=data, model=model,
                                augment=augment)
    trained = steps.train_head(features=prepared.outputs["features"], model=model, loss=loss,
                               head_config=head)
    tuned = steps.finetune(images=prepared.outputs["images"],
                           backbone=prepared.outputs["backbone"], head=trained.outputs["head"],
                           data=data, model_config=model, augment=augment, loss=loss,
                           finetune_config=finetune)
    evaluated = steps.evaluate(model=tuned.outputs["model"], images=prepared.outputs["images"],
                               evaluate_config=evaluate)
    with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712 (KFP condition)
        steps.quantize(model=tuned.outputs["model"], images=prepared.outputs["images"],
                       data=data, export=export)
        steps.tensorrt(model=tuned.outputs["model"], images=prepared.outputs["images"],
                       data=data, export=export)


def compile_pipeline(path: str) -> str:
    """Writes the pipeline as KFP v2 YAML to `path`; returns `path`."""
    compiler.Compiler().compile(transfer_learning, package_path=path)
    return path
