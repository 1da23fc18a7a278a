"""The pipeline steps as KFP v2 lightweight Python components.

Each body maps typed artifacts to paths, calls `components.core.stages` with the config sections
the step uses (only those, so KFP's cache key of a step changes only when its own settings do),
and copies the returned facts onto the output artifacts' metadata (what the KFP UI shows). KFP
ships only the function body to the container, so every import is inside it; the images already
hold this package.
"""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components import __version__

IMAGE_REGISTRY = "ghcr.io/tlpipe"
TRAINING_IMAGE = f"{IMAGE_REGISTRY}/tlpipe-train:{__version__}"
TENSORRT_IMAGE = f"{IMAGE_REGISTRY}/tlpipe-tensorrt:{__version__}"


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def fingerprint(source: str) -> str:
    """List the source (no file is read) and return its fingerprint: the ingest step's cache key
    on a cluster, so unchanged data is not ingested again. Never cached itself."""
    from components.core import stages

    return stages.fingerprint(source)


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def ingest(source: str, source_fingerprint: str, data: dict, dataset: Output[Dataset],
           data_report: Output[Markdown]):
    """Fetch the source, decode and check every image, split train/val/test, write shards, a
    manifest and the validation report."""
    from components.core import stages

    dataset.metadata.update(stages.ingest(source, dataset.path, data_report.path,
                                          config={"data": data}))
    dataset.metadata["source_fingerprint"] = source_fingerprint


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def preprocess(dataset: Input[Dataset], data: dict, model: dict, augment: dict,
               images: Output[Dataset], features: Output[Dataset], backbone: Output[Model]):
    """Resize once to the backbone's size; cache frozen-backbone features of train and val."""
    from components.core import stages

    facts = stages.preprocess(dataset.path, images.path, features.path, backbone.path,
                              config={"data": data, "model": model, "augment": augment})
    for artifact in (images, features, backbone):
        artifact.metadata.update(facts)


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def train_head(features: Input[Dataset], model: dict, loss: dict, head_config: dict,
               head: Output[Model], metrics: Output[Metrics]):
    """Train the new classification head on the cached features, early stopping on val loss."""
    from components.core import stages

    facts = stages.train_head(features.path, head.path,
                              config={"model": model, "loss": loss, "head": head_config})
    head.metadata.update(facts)
    for name, value in facts.items():
        metrics.log_metric(name, value)


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def finetune(images: Input[Dataset], backbone: Input[Model], head: Input[Model], data: dict,
             model_config: dict, augment: dict, loss: dict, finetune_config: dict,
             distribution: dict, model: Output[Model], metrics: Output[Metrics],
             trial: dict = {}):
    """Fine-tune the backbone with the head (MultiWorkerMirroredStrategy: in this pod, or
    across the `distribution` contract's workers it launches); ship the better model. trial: the
    finetune overrides of one search trial ({} without a search)."""
    from components.core import stages

    facts = stages.finetune_step(
        images.path, backbone.path, head.path, model.path,
        uris={"images": images.uri, "backbone": backbone.uri, "head": head.uri,
              "model": model.uri},
        distribution=distribution, trial=trial, config={
            "data": data, "model": model_config, "augment": augment, "loss": loss,
            "finetune": finetune_config})
    model.metadata.update(facts)
    for name in ("head_only_val_accuracy", "finetuned_val_accuracy", "trained_layers"):
        metrics.log_metric(name, facts[name])


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def pick_trial(trials: Input[List[Model]], model: Output[Model], metrics: Output[Metrics],
               search: Output[Markdown]):
    """The fine-tuning search's fan-in: ship the trial with the lowest val loss; the trials as
    a Markdown table."""
    from components.core import stages

    facts = stages.pick_trial([trial.path for trial in trials], model.path, search.path)
    model.metadata.update(facts)
    for name in ("head_only_val_accuracy", "finetuned_val_accuracy", "trained_layers",
                 "trials"):
        metrics.log_metric(name, facts[name])


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def evaluate(model: Input[Model], images: Input[Dataset], dataset: Input[Dataset],
             backbone: Input[Model], head: Input[Model], data: dict, model_config: dict,
             evaluate_config: dict, registry: dict, metrics: Output[Metrics],
             confusion: Output[ClassificationMetrics], evaluation: Output[Dataset],
             report: Output[HTML], model_card: Output[Markdown]) -> bool:
    """Test-split metrics, confusion matrix (and ROC for two classes), blessing against the
    thresholds and the baseline (evaluate.baseline_model, else the registry's production
    model); HTML report and model card. Returns whether the model is exported."""
    from components.core import stages

    facts = stages.evaluate(model.path, images.path, dataset.path, backbone.path, head.path,
                            evaluation.path, report.path, model_card.path, registry=registry,
                            config={"data": data, "model": model_config,
                                    "evaluate": evaluate_config})
    scores = facts["metrics"]
    for name in ("accuracy", "macro_f1", "weighted_f1", "roc_auc_ovr", "log_loss",
                 "expected_calibration_error", "top_3_accuracy", "top_5_accuracy"):
        if scores.get(name) is not None:
            metrics.log_metric(name, scores[name])
    metrics.log_metric("test_examples", scores["examples"])
    for bound, value in zip(("low", "high"), facts["intervals"]["accuracy"]):
        metrics.log_metric(f"accuracy_95ci_{bound}", value)
    for name, per_class in scores["per_class"].items():
        for score in ("precision", "recall", "f1", "roc_auc"):
            if per_class[score] is not None:
                metrics.log_metric(f"{score}_{name}", per_class[score])
    metrics.metadata["blessing_reason"] = facts["blessing_reason"]
    if facts["baseline"]:
        metrics.log_metric("baseline_accuracy", facts["baseline"]["metrics"]["accuracy"])
    if facts.get("champion"):
        metrics.metadata["champion"] = facts["champion"]["text"]
    confusion.log_confusion_matrix(facts["classes"], scores["confusion_matrix"])
    if facts["roc"]:  # two classes: the ROC curve of the second against the first
        confusion.log_roc_curve(facts["roc"]["fpr"], facts["roc"]["tpr"],
                                facts["roc"]["thresholds"])
    evaluation.metadata.update({"blessed": facts["blessed"],
                                "blessing_reason": facts["blessing_reason"],
                                "champion": facts.get("champion")})
    return facts["exportable"]


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def quantize(model: Input[Model], images: Input[Dataset], data: dict, export: dict,
             tflite: Output[Model], metrics: Output[Metrics]) -> str:
    """SavedModel and TFLite float32 / FP16 / dynamic INT8 / full INT8 / 16x8, each evaluated on
    the test split and gated; returns the recommended variant's file name."""
    from components.core import stages

    facts = stages.quantize(model.path, images.path, tflite.path,
                            config={"data": data, "export": export})
    tflite.metadata.update(facts)
    for variant, figures in facts["variants"].items():
        for name, value in figures.items():
            if isinstance(value, (int, float)):
                metrics.log_metric(f"{variant}_{name}", value)
    metrics.metadata["recommended"] = facts["recommended"]
    return facts["recommended_file"]


@dsl.component(base_image=TENSORRT_IMAGE, install_kfp_package=False)
def tensorrt(model: Input[Model], images: Input[Dataset], data: dict, export: dict,
             onnx: Output[Model], metrics: Output[Metrics]):
    """ONNX export checked with ONNX Runtime; TensorRT engine on a GPU, else skipped with why."""
    from components.core import stages

    facts = stages.tensorrt(model.path, images.path, onnx.path,
                            config={"data": data, "export": export})
    onnx.metadata.update(facts)
    for runtime in ("onnx", "tensorrt"):
        for name, value in facts[runtime].items():
            if isinstance(value, (int, float)):
                metrics.log_metric(f"{runtime}_{name}", value)
    metrics.metadata["tensorrt"] = facts["tensorrt"]


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def report(evaluation: Input[Dataset], tflite: Input[Model], onnx: Input[Model],
           html: Output[HTML], model_card: Output[Markdown]):
    """The evaluation report and model card with every exported format (blessed runs only)."""
    from components.core import stages

    html.metadata.update(stages.report(evaluation.path, tflite.path, onnx.path, html.path,
                                       model_card.path))


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def promote(model: Input[Model], evaluation: Input[Dataset], tflite: Input[Model],
            onnx: Input[Model], images: Input[Dataset], model_card: Input[Markdown], data: dict,
            model_config: dict, augment: dict, loss: dict, head_config: dict,
            finetune_config: dict, evaluate_config: dict, export: dict, registry: dict,
            run_name: str, run_id: str, verdict: Output[Markdown]) -> str:
    """Registers the exported model as a new version in the model registry and moves
    `production` to it when it beats the production model (and registry["promote"] is
    "auto"); the verdict as Markdown. The config sections are kept with the version.
    Returns the verdict's one line."""
    from components.core import stages

    facts = stages.promote(model.path, evaluation.path, tflite.path, onnx.path, images.path,
                           model_card.path, verdict.path, registry=registry,
                           run={"name": run_name, "id": run_id},
                           config={"data": data, "model": model_config, "augment": augment,
                                   "loss": loss, "head": head_config,
                                   "finetune": finetune_config, "evaluate": evaluate_config,
                                   "export": export})
    verdict.metadata.update(facts)
    return (f"version {facts['version']}: " if facts["version"] else "") + (
        "promoted" if facts["promoted"] else "not promoted") + f" ({facts['reason']})"
