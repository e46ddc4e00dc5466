#!/usr/bin/env bash
# Create (once) the project's virtual environment: torch from the offline wheels first, then the project.
# Usage: bash scripts/setup_env.sh [venv_dir]     (default: .venv at the repository root)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${MEDVLP_VENV:-$root/.venv}}"
stamp="$venv/.medvlp-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt "$root/pyproject.toml" ]; then
  exit 0
fi
python3 -m venv "$venv"
# torch first: the pinned CUDA build runs on CPU too and is the one that has a working torchvision beside it
# (the official colipri package, timm and dynamic-network-architectures need torchvision).
"$venv/bin/pip" install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
"$venv/bin/pip" install -q --disable-pip-version-check -e "$root[test]"
touch "$stamp"
