#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine: the system libraries napari needs for an OpenGL
# display (also headless, through Xvfb), then this package with its test extras.
# Safe to re-run: installed pieces are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
  libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing system packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
# torch comes from the registry (a CUDA build that also runs on CPU; see the README for
# the CPU-only wheel); the test extra brings napari and PyQt6 (PyQt5: the [pyqt5] extra).
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[test]"
