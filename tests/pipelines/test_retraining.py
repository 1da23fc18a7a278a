"""Recurring retraining played through the real CLI and kfp.local: each run is compared with the
registry's production model, and production moves only to a model that is blessed against it."""

import json
import os
import shutil

import pytest

from pipelines.cli import main
from tests.helpers import MOBILENET_WEIGHTS, require_shared, write_digits

pytestmark = pytest.mark.e2e  # whole kfp.local runs

# real ImageNet features at 64 px and a head on them: a few seconds per step, a real model
HEAD_ONLY = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "64",
             "--head-steps", "300", "--finetune-epochs", "0", "--min-accuracy", "0.5"]


def cli(capsys, *args):
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def copy_files(source, target, names):
    os.makedirs(target, exist_ok=True)
    for name in names:
        shutil.copyfile(os.path.join(source, name), os.path.join(target, name))


def test_a_schedule_promotes_better_models_keeps_a_worse_one_and_rolls_back(capsys, tmp_path):
    weights = require_shared(MOBILENET_WEIGHTS)
    every = write_digits(tmp_path / "all", per_class=128)
    v1, v2, v3 = (tmp_path / name for name in ("v1", "v2", "v3"))
    for label in ("digit0", "digit1", "digit2"):
        names = sorted(os.listdir(os.path.join(every, label)))
        for version, train in ((v1, names[:16]), (v2, names[:48])):  # v2: v1 plus new images
            copy_files(os.path.join(every, label), version / "train" / label, train)
            # the team's curated test set stays the same from run to run
            copy_files(os.path.join(every, label), version / "test" / label, names[108:])
    shutil.copytree(v2, v3)
    # then a batch of new images of ones, all labelled "digit2" by mistake
    copy_files(os.path.join(every, "digit1"), v3 / "train" / "digit2",
               sorted(os.listdir(os.path.join(every, "digit1")))[48:108])
    registry, output = tmp_path / "registry", tmp_path / "runs"
    exports = tmp_path / "exports.yaml"  # one variant each: the registry is what is tested here
    exports.write_text("export: {tflite_variants: [fp16], onnx_variants: [fp16]}\n")

    def scheduled_run(data):
        code, out, err = cli(capsys, "run", "--data", data, "--output", output, "--weights",
                             weights, *HEAD_ONLY, "--config", exports, "--registry", registry,
                             "--model-name", "digits")
        assert code == 0, out[-3000:] + err[-2000:]
        summary = json.load(open(output / "summary.json"))
        return summary, out

    _, out = scheduled_run(v1)
    assert "model registry: version 1: promoted (first production version of digits)" in out
    summary, out = scheduled_run(v2)
    assert "model registry: version 2: promoted (this model is blessed against production " \
           "version 1" in out
    summary, out = scheduled_run(v3)
    assert "model registry: version 3: not promoted (this model is not blessed against " \
           "production version 2: test accuracy" in out and "recall drop vs baseline" in out
    # the reason is in the version's model card and the run's
    card = open(registry / "digits" / "versions" / "3" / "model_card.md").read()
    assert "this model is not blessed against production version 2" in card
    assert "Outcome when registered: candidate (production stays version 2)" in card
    assert card == open(output / "model_card.md").read()
    # the version holds what a server needs, with the gate results and where it came from
    version = json.load(open(registry / "digits" / "versions" / "3" / "version.json"))
    files = set(os.listdir(registry / "digits" / "versions" / "3"))
    assert {"model.keras", "labels.txt", "saved_model", "quantization.json", "tensorrt.json",
            "model.onnx", "model_float32.tflite", "evaluation.json", "model_card.md",
            "config.json", "version.json"} <= files
    assert version["data"]["fingerprint"] == json.load(open(
        summary["steps"]["ingest"]["outputs"]["dataset"]["path"] + "/manifest.json"))[
        "fingerprint"]
    assert version["run"]["name"].startswith("tlpipe-transfer-learning")
    assert version["champion"]["production_version"] == 2

    code, listing, _ = cli(capsys, "models", "list", "--registry", registry)
    assert code == 0
    rows = {line.split()[0]: line for line in listing.splitlines()[2:]}
    assert "production is version 2" in listing.splitlines()[0]
    assert "production" in rows["2"] and "candidate: this model is not blessed against " \
        "production version 2: test accuracy" in rows["3"]
    assert "promoted: first production version of digits" in rows["1"]

    code, out, _ = cli(capsys, "models", "rollback", "--registry", registry)
    assert (code, out.strip()) == (0, "digits: production is version 1 (rolled back from "
                                      "version 2)")
    code, out, _ = cli(capsys, "models", "show", "2", "--registry", registry)
    assert [event["action"] for event in json.loads(out)["events"]] == ["registered",
                                                                         "promoted"]
    code, out, _ = cli(capsys, "models", "promote", "3", "--registry", registry)
    assert (code, out.strip()) == (0, "digits: production is version 3 (promoted by hand (was "
                                      "version 1))")
