#!/usr/bin/env bash
# gpu_test.sh: the GPU tests, on a machine with an NVIDIA GPU and the CUDA
# toolkit: configures and builds build-cuda (Release, TFM_CUDA=ON), runs the
# CUDA op harness (ctest cuda_ops: every op of the CUDA backend against the
# CPU reference) and the whole-model test (ctest device_model: loss, logits,
# every gradient, Adam steps, greedy and beam search against the CPU), and
# prints a summary with the GPU's name.
#
# It installs nothing. OpenBLAS is used when present, otherwise the portable
# GEMM (-DTFM_BLAS=None; it only serves as the CPU reference here). cJSON is
# required by the library: without libcjson-dev the configure step stops and
# says so (a prefix holding it can be given with CMAKE_PREFIX_PATH).
# Extra CMake arguments: TFM_GPU_CMAKE_ARGS (e.g. -DCMAKE_CUDA_ARCHITECTURES=80).
# Exits non-zero when the build or a test fails, or when no GPU is visible.
set -uo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"

nvcc_bin="$(command -v nvcc || true)"
if [ -z "$nvcc_bin" ] && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc_bin=/usr/local/cuda/bin/nvcc; fi
if [ -z "$nvcc_bin" ]; then
    echo "gpu_test.sh: nvcc not found (PATH, /usr/local/cuda/bin): install the CUDA toolkit" >&2
    exit 1
fi
gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
echo "gpu_test.sh: GPU: ${gpu:-none visible (nvidia-smi failed)}"
echo "gpu_test.sh: $("$nvcc_bin" --version | tail -n 1), $(cmake --version | head -n 1)"

# OpenBLAS only when both its header and its library are there.
blas=None
for h in /usr/include/cblas.h /usr/include/*/cblas.h /usr/include/openblas/cblas.h; do
    if [ -e "$h" ] && ldconfig -p 2>/dev/null | grep -q libopenblas; then blas=OpenBLAS; fi
done
# OpenMP only when the C compiler has it.
openmp=ON
if ! echo 'int main(void){return 0;}' | cc -fopenmp -x c - -o /dev/null >/dev/null 2>&1; then openmp=OFF; fi
if [ ! -e /usr/include/cjson/cJSON.h ] && [ -z "${CMAKE_PREFIX_PATH:-}" ]; then
    # A machine that cannot install packages (no network): Debian's libcjson1
    # and libcjson-dev .deb files in TFM_CJSON_DEBS are unpacked into /tmp.
    if [ -n "${TFM_CJSON_DEBS:-}" ] && ls "$TFM_CJSON_DEBS"/libcjson*.deb >/dev/null 2>&1; then
        for d in "$TFM_CJSON_DEBS"/libcjson*.deb; do dpkg -x "$d" /tmp/cjson; done
        export CMAKE_PREFIX_PATH=/tmp/cjson/usr CPATH=/tmp/cjson/usr/include
        export LD_LIBRARY_PATH=/tmp/cjson/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        echo "gpu_test.sh: cJSON from $TFM_CJSON_DEBS (unpacked into /tmp/cjson)"
    else
        echo "gpu_test.sh: cJSON is not installed (libcjson-dev); the library needs it" >&2
    fi
fi
echo "gpu_test.sh: BLAS=$blas OpenMP=$openmp"

# shellcheck disable=SC2086
if ! cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DTFM_CUDA=ON -DTFM_BLAS="$blas" -DTFM_OPENMP="$openmp" \
    -DCMAKE_CUDA_COMPILER="$nvcc_bin" ${TFM_GPU_CMAKE_ARGS:-}; then
    echo "gpu_test.sh: FAILED: configure" >&2
    exit 1
fi
if ! cmake --build build-cuda -j "$jobs"; then
    echo "gpu_test.sh: FAILED: build" >&2
    exit 1
fi
(cd build-cuda && ctest -R 'cuda_ops|device_model' -V --output-on-failure)
rc=$?
log=build-cuda/Testing/Temporary/LastTest.log
summary="$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" 2>/dev/null | tr '\n' ' ')"
if grep -q 'cuda_ops: SKIP' "$log" 2>/dev/null; then
    echo "gpu_test.sh: FAILED: the CUDA op harness skipped: $(grep -o 'SKIP: .*' "$log" | head -n 1)"
    exit 1
fi
if [ $rc -eq 0 ]; then
    echo "gpu_test.sh: cuda_ops and device_model passed on ${gpu:-?}: ${summary:-?}"
else
    echo "gpu_test.sh: FAILED on ${gpu:-?}: ${summary:-see above}"
fi
exit $rc
