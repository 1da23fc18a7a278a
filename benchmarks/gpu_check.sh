#!/usr/bin/env bash
# The GPU check in one command, on a machine with an NVIDIA GPU and TensorRT (the tlpipe-tensorrt
# image, or this repository installed with `pip install ".[gpu,export,tensorrt]"`): the tensorrt
# step on the hymenoptera photos, each engine precision's accuracy vs Keras and latency at batch 1
# and 32, and mixed-precision vs float32 fine-tuning step time. About 10 minutes; see
# benchmarks/gpu_check.py for what it prints. Exit 2, with the reason, where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu_check.py "$@"
