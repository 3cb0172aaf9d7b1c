#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md and docs/results.md in one unattended run, so
# that a short lease on a GPU machine is spent measuring, not waiting for a person:
#   1. speed: python -m training.bench (presets, the space's largest samples, packing, profile);
#   2. the speedrun recipe on the real data;
#   3. the seed baselines: --space seeds, each report's recipe at EPOCHS epochs, none stopped
#      early, the best retrained with 3 seeds;
#   4. an efficient_resnet search at the same EPOCHS, trials packed as step 1 measured best,
#      for whatever time steps 1-3 left (minus a reserve for its retrain), then its retrain.
#
# Usage: bash scripts/gpu_campaign.sh DATA RESULTS [SECONDS] [EPOCHS]
#   DATA     CIFAR-10 folder or archive (the search and the speedrun read it)
#   RESULTS  folder for every log and result file (created); RESULTS/DONE marks the end
#   SECONDS  wall-clock budget of the whole campaign (default 1450)
#   EPOCHS   epochs of every baseline, trial and retrain (default 15)
# RESULTS/commands.txt lists each command exactly as it ran; RESULTS/steps.txt each step's
# exit code and seconds. A failed step is logged and the next one still runs.
# CAMPAIGN_SEARCH_ARGS / CAMPAIGN_TRAIN_ARGS add arguments to the searches / the speedrun
# (e.g. "--subset 200" for a dry run on a CPU).
set -uo pipefail
DATA=$1
R=$2
BUDGET=${3:-1450}
E=${4:-15}
PY=${PYTHON:-python3}
read -r -a SEARCH_EXTRA <<< "${CAMPAIGN_SEARCH_ARGS:-}"
read -r -a TRAIN_EXTRA <<< "${CAMPAIGN_TRAIN_ARGS:-}"
mkdir -p "$R"
T0=$(date +%s)

log() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$R/campaign.log"; }

step() { # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2 started rc
  shift 2
  log "start $name: $*"
  echo "$*" >> "$R/commands.txt"
  started=$(date +%s)
  timeout --kill-after=30 "$limit" "$@" > "$R/$name.log" 2>&1
  rc=$?
  log "end $name: exit $rc after $(($(date +%s) - started))s"
  echo "$name $rc $(($(date +%s) - started))" >> "$R/steps.txt"
}

json_value() { # json_value PYTHON_EXPRESSION DEFAULT: evaluated with `r` bound to RESULTS
  "$PY" -c "import json, sys; from pathlib import Path; r = Path(sys.argv[1]); print($1)" \
    "$R" 2> /dev/null || echo "$2"
}

{ nvidia-smi || true; } > "$R/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, ray, optuna; print('torch', torch.__version__, 'ray', ray.__version__, \
'optuna', optuna.__version__, 'cuda', torch.cuda.is_available())" > "$R/versions.txt" 2>&1
log "$(cat "$R/versions.txt")"

step bench 540 "$PY" -m training.bench --out "$R/bench.json" --docs "$R/bench.md"
step speedrun 360 "$PY" -m training.train --model efficient_resnet --recipe speedrun \
  --data "$DATA" --out "$R/speedrun" "${TRAIN_EXTRA[@]}"

# Trials per GPU for the search: what the packing benchmark found fastest for a median
# sample of the space (one trial per GPU if it did not run).
G=$(json_value "__import__('training.bench').bench.pick_gpus_per_trial(next(v for k, v in \
json.loads((r / 'bench.json').read_text())['packing'].items() if k.startswith('median')))" 1)
log "GPU share per search trial, from the packing benchmark: $G"

# The five baselines at once (a fifth of the GPU each): they are the same work either way,
# and small-batch recipes leave a GPU idle between steps that the others can fill.
step seeds 900 "$PY" -m tune.search --space seeds --data "$DATA" --max-epochs "$E" \
  --retrain-seeds 3 --gpus-per-trial 0.2 --storage-path "$R/exp" --name "seeds-e$E" \
  "${SEARCH_EXTRA[@]}"

# The search's time budget: what is left, minus its start-up and a retrain reserve of 1.3x
# the baselines' retrain (the same seeds and epochs) and at least 200 s.
retrain=$(json_value "json.loads((r / 'exp/seeds-e$E/final/metrics.json').read_text())\
['wall_seconds']" 200)
reserve=$("$PY" -c "print(int(max(200, 1.3 * float('$retrain'))) + 60)")
left=$((BUDGET - ($(date +%s) - T0)))
T=$((left - reserve))
[ "$T" -lt 120 ] && T=120
log "search time budget ${T}s (${left}s left, ${reserve}s reserved for start-up and retrain)"
step search $((T + reserve + 300)) "$PY" -m tune.search --space efficient_resnet \
  --data "$DATA" --max-epochs "$E" --retrain-seeds 3 --gpus-per-trial "$G" \
  --time-budget "${T}s" --storage-path "$R/exp" --name "effres-e$E" "${SEARCH_EXTRA[@]}"
log "done"
touch "$R/DONE"
