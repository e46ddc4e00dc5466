#!/usr/bin/env bash
# The main job: set up .venv if needed, pre-train COLIPRI-CT (CPU demo overlay) on the embedded phantom dataset,
# then print its frozen-encoder evaluation (zero-shot AUROC with 95% CIs, retrieval R@k, probes, segmentation Dice).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
py="${MEDVLP_VENV:-$root/.venv}/bin/python"
configs="bundles/colipri_ct/configs"
"$py" -m monai.bundle run --config_file "['$configs/train.yaml','$configs/demo.yaml']" "$@"
"$py" -m monai.bundle run --config_file "['$configs/train.yaml','$configs/demo.yaml','$configs/evaluate.yaml']" "$@"
echo "results: bundles/colipri_ct/runs/evaluation/{results.json,summary.md,figures/}"
