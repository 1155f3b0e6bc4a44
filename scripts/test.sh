#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds the release tree and runs
# every test, then builds with AddressSanitizer + UndefinedBehaviorSanitizer and
# runs every test again (the slow learning tests run in their quick mode there).
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
echo "test.sh: all tests passed (release and sanitizer builds)"
