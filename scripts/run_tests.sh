#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite (what CI runs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
status=0
"${MEDVLP_VENV:-$root/.venv}/bin/python" -m pytest -q -p no:cacheprovider tests "$@" || status=$?

# The MONAI Label app lives in its own environment (monailabel pins numpy<2): tests/label run there
# (in .venv they skip). MEDVLP_SKIP_LABEL=1 leaves them out.
if [ "${MEDVLP_SKIP_LABEL:-0}" != "1" ]; then
  bash "$root/scripts/setup_label_env.sh"
  "${MEDVLP_LABEL_VENV:-$root/.venv-label}/bin/python" -m pytest -q -p no:cacheprovider tests/label || status=$?
fi
exit "$status"
