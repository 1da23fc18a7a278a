"""The transfer-learning pipeline: fingerprint -> ingest -> preprocess -> train_head -> finetune
(with a search: one finetune per trial -> pick-trial) -> evaluate (against the registry's
production model), then, for an exportable model only, quantize and tensorrt, the report with
every exported format, and promote (a new registry version; production moves to it when it
beats the production model). Deployment settings
(images, resources, placement, secrets, retries, caching, time-outs) are applied when it is
built. No environment is read at import time."""

import functools
import os

from kfp import compiler, dsl

from components import steps
from components.core.cluster.distribution import CLUSTER_LAUNCHERS
from components.core.errors import ConfigError
from pipelines import deploy, settings as deployment

PIPELINE_NAME = "tlpipe-transfer-learning"
STEP_ORDER = ("fingerprint", "ingest", "preprocess", "train-head", "finetune", "pick-trial",
              "evaluate", "quantize", "tensorrt", "report", "promote")
IMAGE_NAMES = {"tensorrt": "tlpipe-tensorrt"}  # every other step: tlpipe-train


def build_pipeline(settings: deployment.Settings | None = None, launcher: str | None = None,
                   trials: list[dict] = ()):
    """The pipeline function with `settings` (default: `Settings()`) applied to every step.
    launcher: how a multi-worker fine-tune step starts its workers: None for a cluster, as the
    job of steps.finetune.launcher (trainjob or tfjob), or "local" (processes beside the step,
    for kfp.local). trials: the fine-tuning search (`components.core.train.search.trials`):
    one fine-tune task per trial in a ParallelFor (all at once on a cluster, one after another
    locally), then pick-trial ships the best; () for one fine-tune task. ConfigError when the
    settings lack what a cluster run needs."""
    settings = settings or deployment.Settings()
    distribution = deploy.distribution(settings, launcher)
    if distribution.launcher in CLUSTER_LAUNCHERS:
        found = deployment.cluster_problems(settings)
        if found:
            raise ConfigError(found[0])

    def configure(task, step: str):
        own = settings.step(step)
        if step == deployment.MULTI_WORKER_STEP and distribution.runs_a_cluster_job:
            own = deploy.launcher_step(own)
            deploy.prepare_launcher(task, settings)
        deploy.apply(task, own, settings.image(IMAGE_NAMES.get(step, "tlpipe-train")))
        return task

    @dsl.pipeline(name=PIPELINE_NAME, pipeline_root=settings.pipeline_root or None,
                  description="Transfer learning from a pretrained keras.applications backbone: "
                              "head on cached features, fine-tuning, evaluation, "
                              "TFLite/ONNX/TensorRT.")
    def transfer_learning(source: str, data: dict = {}, model: dict = {}, augment: dict = {},
                          loss: dict = {}, head: dict = {}, finetune: dict = {},
                          evaluate: dict = {}, export: dict = {}, registry: dict = {}):
        """source: a folder of class subfolders (or train/val/test subfolders of class folders).
        registry: the model registry {"root", "model", "promote"} (`deployment.registry`; {}
        for none). The other parameters are the sections of
        `components.core.config.schema.PipelineConfig` (overrides of its defaults); each step
        receives only the sections it uses."""
        listed = configure(steps.fingerprint(source=source), "fingerprint")
        ingested = configure(steps.ingest(source=source, source_fingerprint=listed.output,
                                          data=data), "ingest")
        prepared = configure(steps.preprocess(dataset=ingested.outputs["dataset"], data=data,
                                              model=model, augment=augment), "preprocess")
        trained = configure(steps.train_head(features=prepared.outputs["features"], model=model,
                                             loss=loss, head_config=head), "train-head")
        tune = functools.partial(
            steps.finetune, images=prepared.outputs["images"],
            backbone=prepared.outputs["backbone"], head=trained.outputs["head"], data=data,
            model_config=model, augment=augment, loss=loss, finetune_config=finetune,
            distribution=distribution.to_dict())
        if trials:
            with dsl.ParallelFor(list(trials), name="search",
                                 parallelism=1 if distribution.launcher == "local" else None
                                 ) as trial:
                tried = configure(tune(trial=trial), "finetune")
            tuned = configure(steps.pick_trial(trials=dsl.Collected(tried.outputs["model"])),
                              "pick-trial")
        else:
            tuned = configure(tune(), "finetune")
        evaluated = configure(steps.evaluate(
            model=tuned.outputs["model"], images=prepared.outputs["images"],
            dataset=ingested.outputs["dataset"], backbone=prepared.outputs["backbone"],
            head=trained.outputs["head"], data=data, model_config=model,
            evaluate_config=evaluate, registry=registry), "evaluate")
        with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712
            quantized = configure(steps.quantize(model=tuned.outputs["model"],
                                                 images=prepared.outputs["images"], data=data,
                                                 export=export), "quantize")
            converted = configure(steps.tensorrt(model=tuned.outputs["model"],
                                                 images=prepared.outputs["images"], data=data,
                                                 export=export), "tensorrt")
            reported = configure(steps.report(evaluation=evaluated.outputs["evaluation"],
                                              tflite=quantized.outputs["tflite"],
                                              onnx=converted.outputs["onnx"]), "report")
            configure(steps.promote(
                model=tuned.outputs["model"], evaluation=evaluated.outputs["evaluation"],
                tflite=quantized.outputs["tflite"], onnx=converted.outputs["onnx"],
                images=prepared.outputs["images"], model_card=reported.outputs["model_card"],
                data=data, model_config=model, augment=augment, loss=loss, head_config=head,
                finetune_config=finetune, evaluate_config=evaluate, export=export,
                registry=registry, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "promote")

    return transfer_learning


transfer_learning = build_pipeline()


def compile_pipeline(path: str, settings: deployment.Settings | None = None,
                     launcher: str | None = None, trials: list[dict] = ()) -> str:
    """Writes the pipeline (with `settings` applied; `launcher` and `trials` as in
    build_pipeline) as KFP v2 YAML to `path`, whole or not at all (written beside it, then
    renamed); returns `path`. ConfigError when its folder cannot be written to."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    try:
        handle, partial = tempfile.mkstemp(prefix=".pipeline-", suffix=".yaml", dir=folder)
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error.strerror} in {folder}; write the "
                          f"pipeline to a folder you can write to") from None
    os.close(handle)
    try:
        compiler.Compiler().compile(build_pipeline(settings, launcher, trials),
                                    package_path=partial)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)  # as a plain open() would have made it
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return path
