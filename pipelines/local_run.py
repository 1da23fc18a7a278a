"""Runs the compiled pipeline on this machine with `kfp.local` and summarises what it wrote.

The pipeline is compiled to YAML, loaded back and run with `SubprocessRunner(use_venv=False)`:
the same package a cluster runs, each step a subprocess of this Python environment.
"""

from __future__ import annotations

import json
import os
import warnings

from pipelines.transfer_learning import STEP_ORDER, compile_pipeline


def run(source: str, config: dict, output_dir: str, settings=None) -> str:
    """Compiles to OUTPUT/pipeline.yaml (with deployment `settings`, if given: kfp.local runs
    every step here and ignores images, resources, placement and secrets, which are for a
    cluster; a multi-worker fine-tune step starts its workers as local processes), runs it with
    artifacts under OUTPUT/runs/, and returns the run's directory.
    config: `PipelineConfig.to_dict()`, one pipeline parameter a section. Raises RuntimeError
    naming the failed step."""
    from kfp import components, local

    output_dir = os.path.abspath(output_dir)
    root = os.path.join(output_dir, "runs")
    os.makedirs(root, exist_ok=True)
    pipeline = components.load_component_from_file(
        compile_pipeline(os.path.join(output_dir, "pipeline.yaml"), settings,
                         launcher="local"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root,
               raise_on_error=True)
    before = set(os.listdir(root))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        pipeline(source=_absolute(source), **config)
    created = sorted(set(os.listdir(root)) - before)
    if not created:
        raise RuntimeError(f"the local run wrote nothing under {root}")
    return os.path.join(root, created[-1])


def summarize(run_dir: str) -> dict:
    """{step: {"outputs": {artifact: {"path", "metadata"}}, "returned": value}} for every step
    that ran, in pipeline order, read from each step's executor_output.json."""
    summary = {}
    for step in STEP_ORDER:
        path = os.path.join(run_dir, step, "executor_output.json")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as handle:
            output = json.load(handle)
        artifacts = {name: {"path": _local_path(entry["artifacts"][0]["uri"]),
                            "metadata": entry["artifacts"][0].get("metadata", {})}
                     for name, entry in output.get("artifacts", {}).items()}
        summary[step] = {"outputs": artifacts,
                         "returned": output.get("parameterValues", {}).get("Output")}
    return summary


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def report(summary: dict) -> str:
    """The human summary printed at the end of `tlpipe run`: verdict, figures, artifact paths."""
    lines = []
    prepared = summary.get("preprocess", {}).get("outputs", {}).get("backbone", {})
    if prepared:
        meta = prepared["metadata"]
        lines.append(f"backbone weights: {meta.get('weights')} ({meta.get('weights_detail')})")
    tuned = summary.get("finetune", {}).get("outputs", {}).get("model", {}).get("metadata", {})
    if tuned:
        lines.append(f"shipped model: {tuned.get('chosen')}; {tuned.get('reason')}")
    evaluated = summary.get("evaluate", {})
    if evaluated:
        metrics = evaluated["outputs"]["metrics"]["metadata"]
        lines.append(f"TEST ACCURACY: {metrics['accuracy']:.4f} on {int(metrics['test_examples'])}"
                     f" test images (macro F1 {metrics['macro_f1']:.4f})")
        lines.append(f"blessed: {evaluated['returned']} ({metrics.get('blessing_reason')})")
    quantized = summary.get("quantize", {}).get("outputs", {}).get("tflite", {}).get(
        "metadata", {})
    if quantized:
        lines.append(f"TFLite (gate: at most {quantized['max_accuracy_drop_points']} points below "
                     f"float; recommended: {quantized['recommended_file']}):")
        lines.extend(_format_line(name, figures)
                     for name, figures in quantized["variants"].items())
    exported = summary.get("tensorrt", {}).get("outputs", {}).get("onnx", {}).get("metadata", {})
    if exported:
        lines.append(_format_line("onnx", exported["onnx"]))
        engine = exported["tensorrt"]
        lines.append(_format_line("tensorrt", engine) if engine["status"] == "built" else
                     f"  {'tensorrt':>13}: skipped: {engine['reason']}")
    lines.append("artifacts:")
    for step, entry in summary.items():
        for name, artifact in entry["outputs"].items():
            lines.append(f"  {step}.{name}: {artifact['path']}")
    return "\n".join(lines)


def _format_line(name: str, figures: dict) -> str:
    """One exported format: test accuracy, agreement with Keras, size, batch-1 CPU latency."""
    verdict = f" {figures['status'].upper()}" if "status" in figures else ""
    return (f"  {name:>13}: test accuracy {figures['test_accuracy']:.4f}{verdict}, top-1 "
            f"agreement {figures['top1_agreement']:.3f}, {figures['size_bytes'] / 1e6:.2f} MB, "
            f"{figures['latency_ms_median']:.2f} ms/image median, "
            f"{figures['latency_ms_p90']:.2f} p90")


def _absolute(source: str) -> str:
    """Local paths made absolute (the steps run in other working directories); URIs as given."""
    return source if source.startswith(("gs://", "tfds:")) else os.path.abspath(source)
