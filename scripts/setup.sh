#!/usr/bin/env bash
# Creates .venv and installs the project with its test tools.
#
# Why PIP_CONFIG_FILE=/dev/null and no PIP_FIND_LINKS: some machines point pip at a
# local CPU-only torch wheel (+cpu) that torchvision cannot import with
# ("operator torchvision::nms does not exist"); torch must come from the registry
# (the CUDA build, which also runs on CPU) so that torch and torchvision match.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL
python -m pip install -q --upgrade pip
# constraints.txt: the torch that the Docker image installs too.
# PYTHONWARNINGS: setuptools' build backend warns at length about editable installs (that a
# folder named like a package shadows it: here that is the point).
PYTHONWARNINGS=ignore python -m pip install -q -c constraints.txt -e '.[dev]'
python -c "import torch, torchvision; torchvision.ops.nms; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
