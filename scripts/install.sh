#!/usr/bin/env bash
# Installs what transformer.c needs on a fresh Debian/Ubuntu machine, skipping
# what is already present: build tools, CMake, OpenBLAS (with its OpenMP build),
# cJSON, and Debian's python3-torch + python3-numpy for the reference tests.
set -euo pipefail

packages=(build-essential cmake pkg-config libopenblas-dev libopenblas0-openmp libcjson-dev
          python3 python3-torch python3-numpy)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install.sh: all packages present"
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "install.sh: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
