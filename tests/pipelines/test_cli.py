"""Bad input is a one-line error naming the problem and the fix, before any work starts."""

import os
import re
import subprocess
import sys

import pytest

from components.core.errors import ConfigError, StepError
from components.core.config.schema import FinetuneConfig
from pipelines import commands
from pipelines.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/folder"], "does not exist"),
    (["--backbone", "alexnet"], "unknown backbone 'alexnet'"),
    (["--backbone", "xception", "--image-size", "32"], "image size 32 is not possible"),
    (["--finetune-epochs", "-2"], "finetune.epochs=-2; use 0 (no fine-tuning), more, or -1"),
    (["--unfreeze-layers", "500", "--backbone", "mobilenet", "--alpha", "0.25",
      "--image-size", "32", "--weights", "none"], "has only 87 layers"),
    (["--config", "/no/such.yaml"], "config file /no/such.yaml does not exist"),
    (["--max-accuracy-drop", "-1"], "export.max_accuracy_drop=-1.0; use points >= 0"),
    (["--tensorrt-precision", "int4"], "export.tensorrt_precision='int4'; use fp32, fp16 or int8"),
])
def test_bad_run_input_fails_fast_with_the_fix(capsys, tmp_path, digits_folder, args, message):
    if "--data" not in args:
        args = ["--data", digits_folder, *args]
    code, out, err = run_cli(capsys, "run", *args, "--output", str(tmp_path / "out"))
    assert code == 2 and message in err and err.startswith("tlpipe: error:")
    assert len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "out" / "runs")


def test_one_class_folder_is_rejected(capsys, tmp_path, digits_folder):
    os.rename(os.path.join(digits_folder, "digit1"), tmp_path / "elsewhere1")
    os.rename(os.path.join(digits_folder, "digit2"), tmp_path / "elsewhere2")
    code, _, err = run_cli(capsys, "run", "--data", digits_folder, "--output", str(tmp_path))
    assert code == 2 and "at least two" in err


def test_weights_for_another_architecture_are_rejected_before_the_run(capsys, tmp_path,
                                                                      digits_folder,
                                                                      mobilenet_weights):
    code, _, err = run_cli(capsys, "run", "--data", digits_folder, "--backbone",
                           "mobilenet_v2", "--alpha", "1.0", "--image-size", "32",
                           "--weights", mobilenet_weights, "--output", str(tmp_path / "out"))
    assert code == 2 and "does not match backbone mobilenet_v2" in err
    assert not os.path.exists(tmp_path / "out" / "runs")


def test_a_batch_larger_than_the_data_is_rejected_before_the_run(capsys, tmp_path,
                                                                 digits_folder):
    config = tmp_path / "big-batch.yaml"
    config.write_text("finetune: {batch_size: 5000}\n")
    code, _, err = run_cli(capsys, "run", "--data", digits_folder, "--config", str(config),
                           "--output", str(tmp_path / "out"))
    assert code == 2 and "finetune.batch_size=5000 is larger than the 72 images" in err
    assert not os.path.exists(tmp_path / "out" / "runs")


def test_the_fine_tune_step_rejects_a_batch_larger_than_the_training_split():
    FinetuneConfig(batch_size=32).check_batch_fits(32, "the training split")
    FinetuneConfig(batch_size=33, epochs=0).check_batch_fits(32, "the training split")  # none
    with pytest.raises(ConfigError, match="at most 32, or add images"):
        FinetuneConfig(batch_size=33).check_batch_fits(32, "the training split")


def test_output_into_a_closed_pipe_ends_quietly():
    """`tlpipe backbones | head -1`: the reader is gone before tlpipe writes; exit 0 and no
    traceback (Python's own default is "Exception ignored ... BrokenPipeError", exit 120)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    listing = subprocess.run([sys.executable, "-m", "pipelines.cli", "backbones"],
                             stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    os.close(write_end)
    assert (listing.returncode, listing.stderr) == (0, b"")


def test_help_and_backbone_listing(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(word in out for word in ("run", "demo", "compile", "backbones"))
    assert "2 bad input; 70 an internal error (a bug in tlpipe)" in " ".join(out.split())
    code, out, _ = run_cli(capsys, "backbones")
    assert code == 0 and "efficientnet_b0" in out and "resnet50" in out


@pytest.mark.parametrize("error, code", [
    (ConfigError("finetune.epochs=-5; use 0 or more"), 2),  # an InputError: the user's move
    (StepError("step finetune failed"), 1),
    (ValueError("operands could not be broadcast"), 70),  # no rule of tlpipe's: a bug
    (KeyError("train"), 70),
])
def test_exit_codes_follow_the_error_taxonomy(capsys, monkeypatch, error, code):
    def failing(args):
        raise error

    monkeypatch.setattr(commands, "list_backbones", failing)
    exit_code, out, err = run_cli(capsys, "backbones")
    assert exit_code == code and len(err.strip().splitlines()) == 1
    if code == 70:
        assert err.startswith(f"tlpipe: internal error (a bug in tlpipe): {type(error).__name__}")
        log = re.search(r"the traceback is in (\S+): please report it", err).group(1)
        assert "Traceback" in open(log).read() and "failing" in open(log).read()
        os.remove(log)
    else:
        assert str(error).strip("'") in err
