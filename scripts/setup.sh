#!/usr/bin/env bash
# Set up napari-neurt in ./.venv on a Debian/Ubuntu machine: system libraries for napari's Qt
# window and the Xvfb virtual display (when missing and when we may install them), then the package.
# PyTorch: an already installed torch in .venv is kept (install your CUDA build there first if you
# want one); otherwise torch==2.13.0 is installed (on this project's CI machines, a CPU wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(xvfb xauth libgl1 libegl1 libfontconfig1 libdbus-1-3 libglib2.0-0 libxkbcommon-x11-0
  libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-xkb1
  libxcb-cursor0 libxcb-shape0 libxcb-randr0)
if command -v dpkg >/dev/null 2>&1; then
  missing=()
  for package in "${apt_packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing system packages: ${missing[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[testing]"
