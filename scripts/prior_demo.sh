#!/usr/bin/env bash
# PRIOR CPU demo: the three pre-training stages of a PRIOR bundle (each from the previous stage's weights, with a fresh
# optimiser and schedule), then its frozen-encoder evaluation. Usage: bash scripts/prior_demo.sh [prior_cxr|prior_ct]
# [extra monai.bundle run arguments, given to every stage, e.g. --loss_weights "{'local_image': 0}"].
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="${1:-prior_cxr}"
shift || true
py="${MEDVLP_VENV:-$root/.venv}/bin/python"
configs="bundles/$bundle/configs"
"$py" -m monai.bundle run --config_file "['$configs/train.yaml','$configs/demo.yaml']" "$@"
"$py" -m monai.bundle run --config_file "['$configs/train.yaml','$configs/stage2.yaml','$configs/demo.yaml']" "$@"
"$py" -m monai.bundle run --config_file "['$configs/train.yaml','$configs/stage3.yaml','$configs/demo.yaml']" "$@"
"$py" -m monai.bundle run --config_file "['$configs/train.yaml','$configs/stage3.yaml','$configs/demo.yaml','$configs/evaluate.yaml']" "$@"
echo "results: bundles/$bundle/runs/evaluation/{results.json,summary.md,figures/}"
