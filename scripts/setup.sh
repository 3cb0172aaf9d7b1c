#!/usr/bin/env bash
# Creates .venv and installs the project with its test tools: a few minutes and several GB
# (torch comes with its CUDA libraries; README.md says what was measured). Every step says
# what it does, and the long one says every SETUP_HEARTBEAT_S seconds how far it has come.
#
# Why PIP_CONFIG_FILE=/dev/null and no PIP_FIND_LINKS: some machines point pip at a
# local CPU-only torch wheel (+cpu) that torchvision cannot import with
# ("operator torchvision::nms does not exist"); torch must come from the registry
# (the CUDA build, which also runs on CPU) so that torch and torchvision match.
set -euo pipefail
cd "$(dirname "$0")/.."
HEARTBEAT_S=${SETUP_HEARTBEAT_S:-15}

say() { printf 'setup: %s\n' "$*"; }

# Runs a command in the background, and while it runs says every HEARTBEAT_S seconds how
# long it has taken and how large .venv has grown; its exit status is the command's.
with_progress() {
    local what=$1 started=$SECONDS pid waited
    shift
    "$@" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        for ((waited = 0; waited < HEARTBEAT_S; waited++)); do
            kill -0 "$pid" 2>/dev/null || break 2
            sleep 1
        done
        say "$what: $((SECONDS - started)) s so far, .venv holds $(du -sh .venv 2>/dev/null | cut -f1)"
    done
    wait "$pid"
}

say "creating .venv with $(python3 --version)"
python3 -m venv .venv
. .venv/bin/activate
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL
say "upgrading pip"
python -m pip install -q --upgrade pip
# constraints.txt: the torch that the Docker image installs too.
# PYTHONWARNINGS: setuptools' build backend warns at length about editable installs (that a
# folder named like a package shadows it: here that is the point).
say "downloading and installing torch (with its CUDA libraries), Ray, Optuna and the test" \
    "tools into .venv: the longest step"
with_progress "installing" \
    env PYTHONWARNINGS=ignore python -m pip install -q -c constraints.txt -e '.[dev]'
say "checking that torch and torchvision import"
python -c "import torch, torchvision; torchvision.ops.nms; print('setup: done: torch', torch.__version__, 'torchvision', torchvision.__version__)"
