#!/bin/sh
# Generates the PyTorch reference tensors into $1 (used as a CTest fixture).
# Exits 77 (skipped) when Debian's python3 with torch is not installed.
set -e
out="$1"
py="${TFM_REF_PYTHON:-/usr/bin/python3}"
if ! "$py" -c "import torch, numpy" 2>/dev/null; then
    echo "SKIP: $py cannot import torch and numpy (install python3-torch python3-numpy; scripts/install.sh does)"
    exit 77
fi
mkdir -p "$out"
here="$(cd "$(dirname "$0")" && pwd)"
for script in "$here"/make_*.py; do
    [ -e "$script" ] || continue
    echo "== $script"
    "$py" "$script" "$out"
done
