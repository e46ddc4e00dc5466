#!/usr/bin/env bash
# Create (once) .venv-label: MONAI Label 0.8.5 + this project, isolated from .venv.
# monailabel 0.8.5 needs numpy<2 (through pydicom-seg); the main environment does not want that pin.
# Torch: the CPU-only 2.13.0 wheel on this machine's disk (~200 MB, against 5.5 GB for the CUDA 2.14.1 build) with
# its torchvision 0.28. sam2 (a monailabel requirement) ships only as an sdist whose isolated build would fetch a
# full CUDA torch: it is built against the torch already in the venv instead (no CUDA extension).
# Usage: bash scripts/setup_label_env.sh [venv_dir]     (default: .venv-label at the repository root)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${MEDVLP_LABEL_VENV:-$root/.venv-label}}"
stamp="$venv/.medvlp-label-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt "$root/pyproject.toml" ] && [ "$stamp" -nt "${BASH_SOURCE[0]}" ]; then
  exit 0
fi
python3 -m venv "$venv"
pins="$venv/medvlp-label-constraints.txt"
printf '%s\n' "torch==${MEDVLP_LABEL_TORCH:-2.13.0+cpu}" "numpy<2" > "$pins"
pip_install() {  # quiet, and without pip's per-package notes about the local index folders
  "$venv/bin/pip" install -q --disable-pip-version-check -c "$pins" "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
pip_install torch setuptools wheel
SAM2_BUILD_CUDA=0 pip_install --no-build-isolation "sam2>=0.4.1"
# The project without the heavy reference extras; offline = the MiniLM text tower of the demo overlays.
pip_install "monailabel==0.8.5" -e "$root[offline]" "pytest>=8" "pytest-timeout>=2.2"
touch "$stamp"
