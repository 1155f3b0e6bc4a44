#!/usr/bin/env bash
# Configures and builds transformer.c into build/ (Release). Extra arguments go
# to CMake, e.g. scripts/build.sh -DTFM_NATIVE=ON.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "$(nproc)"
