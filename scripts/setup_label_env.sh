#!/usr/bin/env bash
# Create (once) .venv-label: MONAI Label 0.8.5 + this project, isolated from .venv.
# monailabel 0.8.5 needs numpy<2 and pydicom<3 (through pydicom-seg 0.4.1); the main environment does not want those.
# Torch: the local torch 2.14.1 + torchvision 0.29.1 wheels (CUDA build, runs on CPU; ~4 min to install). The smaller
# CPU-only torch 2.13.0 wheel has no matching torchvision on the index (the PyPI torchvision 0.28 fails with
# "operator torchvision::nms does not exist" on it), and monailabel's monai[torchvision], sam2 and transformers'
# image utilities import torchvision. sam2 (a monailabel requirement) ships only as an sdist whose isolated build
# would fetch another torch: it is built against the venv's torch instead (no CUDA extension).
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
# numpy/pydicom/jsonschema: pydicom-seg 0.4.1's ranges, stated up front (with the pydicom-2 releases of
# dicomweb-client and pynetdicom) so that pip does not backtrack through them.
printf '%s\n' "torch==2.14.1" "torchvision==0.29.1" "numpy<2" "pydicom<3" "jsonschema<4" "dicomweb-client<0.61" \
  "pynetdicom<3" > "$pins"
pip_install() {  # quiet, and without pip's per-package notes about the local index folders
  "$venv/bin/pip" install -q --disable-pip-version-check -c "$pins" "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
pip_install torch torchvision setuptools wheel
SAM2_BUILD_CUDA=0 pip_install --no-build-isolation "sam2>=0.4.1"
# The project without the heavy reference extras; offline = the MiniLM text tower of the demo overlays.
pip_install "monailabel==0.8.5" -e "$root[offline]" "pytest>=8" "pytest-timeout>=2.2"
touch "$stamp"
