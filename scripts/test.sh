#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds the release tree and runs
# every test, then builds with AddressSanitizer + UndefinedBehaviorSanitizer and
# runs every test again (the slow learning tests run in their quick mode there).
# Then, when nvcc is there (PATH or /usr/local/cuda/bin), a third build with the
# CUDA backend (build-cuda), so that a CUDA compile error cannot land; its GPU
# tests skip on a machine without a GPU (scripts/gpu_test.sh runs them on one).
# Any failure, or any sanitizer report, exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
jobs="$(nproc)"
if grep -q avx512f /proc/cpuinfo 2>/dev/null; then export OPENBLAS_CORETYPE=SkylakeX; fi

echo "== release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
(cd build && ctest --output-on-failure -j "$jobs")

echo "== sanitizer build (ASan + UBSan)"
cmake -S . -B build-san -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTFM_SANITIZE=ON >/dev/null
cmake --build build-san -j "$jobs"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-san && TFM_QUICK=1 ctest --output-on-failure -j "$jobs")
unset ASAN_OPTIONS UBSAN_OPTIONS

echo "== CUDA build (TFM_CUDA=ON)"
nvcc_bin="$(command -v nvcc || true)"
if [ -z "$nvcc_bin" ] && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc_bin=/usr/local/cuda/bin/nvcc; fi
if [ -n "$nvcc_bin" ]; then
    cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DTFM_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_bin" >/dev/null
    cmake --build build-cuda -j "$jobs"
    # The op harness (skips without a GPU) and the tests that run the model
    # through the backend table, in the build that defines TFM_HAVE_CUDA.
    (cd build-cuda && ctest --output-on-failure -j "$jobs" -R 'cuda_ops|device_model|decode|trainer')
    cuda_note="release, sanitizer and CUDA builds"
else
    echo "test.sh: nvcc not found: the CUDA backend was not compiled"
    cuda_note="release and sanitizer builds; no CUDA build"
fi
echo "test.sh: all tests passed ($cuda_note)"
