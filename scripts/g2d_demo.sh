#!/usr/bin/env bash
# G2D CPU demo with the paper's two controls: pre-train (train.yaml + demo.yaml) and evaluate (+ evaluate.yaml, with
# the segmentation protocol) one run, each in its own bundle root under OUT. Usage:
#   bash scripts/g2d_demo.sh g2d_cxr OUT g2d|contrastive_only|shuffled_masks [extra evaluate arguments]
# contrastive_only: --segmentation_weight 0.0 (no decoder); shuffled_masks: --shuffle_masks True (paper Table 8).
# The g2d run's evaluation adds paired Dice differences against the controls whose segmentation.json exist under OUT,
# so run the controls first. Training is timed with /usr/bin/time -v (OUT/<run>/train_time.txt);
# G2D_DEMO_STEPS="train" or "evaluate" runs one of the two steps (default both).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="$1"; out="$2"; run="$3"; shift 3
py="${MEDVLP_VENV:-$root/.venv}/bin/python"
configs="bundles/$bundle/configs"
case "$run" in
  g2d) control=() ;;
  contrastive_only) control=(--segmentation_weight 0.0) ;;
  shuffled_masks) control=(--shuffle_masks True) ;;
  *) echo "unknown run '$run': g2d, contrastive_only or shuffled_masks" >&2; exit 2 ;;
esac
steps="${G2D_DEMO_STEPS:-train evaluate}"
mkdir -p "$out/$run"
[[ " $steps " == *" train "* ]] && /usr/bin/time -v -o "$out/$run/train_time.txt" "$py" -m monai.bundle run \
  --config_file "['$configs/train.yaml','$configs/demo.yaml']" --bundle_root "$out/$run" "${control[@]}"
[[ " $steps " == *" evaluate "* ]] || exit 0
baselines=()
if [ "$run" = g2d ]; then
  entries=()
  for name in contrastive_only shuffled_masks; do
    json="$out/$name/runs/evaluation/segmentation/segmentation.json"
    [ -f "$json" ] && entries+=("'$name': '$json'")
  done
  [ "${#entries[@]}" -gt 0 ] && baselines=(--segmentation_baselines "{$(IFS=,; echo "${entries[*]}")}")
fi
/usr/bin/time -v -o "$out/$run/evaluate_time.txt" "$py" -m monai.bundle run \
  --config_file "['$configs/train.yaml','$configs/demo.yaml','$configs/evaluate.yaml']" --bundle_root "$out/$run" \
  "${control[@]}" "${baselines[@]}" "$@"
echo "results: $out/$run/runs/evaluation/{results.json,summary.md,segmentation/}"
