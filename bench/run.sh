#!/usr/bin/env bash
# run.sh: transformer.c against PyTorch on this machine, in one run: training
# steps (small, base), greedy decoding (64 and 1 sentences), sgemm at the
# training step's GEMM shapes, a long input, beam-4 translation; a table of
# medians, spreads, ratios and targets at the end. `ct2`: our decoding at the
# settings of issue 4's CTranslate2 4.8 figures (random weights, source 24,
# exactly 24 output tokens, 2 threads; small and base, greedy on 64
# sentences and on 1, beam 4 on 64), against those figures (CTranslate2 is
# not installable here: no network; bench/README.md).
#
# Each case alternates processes: ours, PyTorch, ours, PyTorch, ... (--reps
# processes per side). Every process builds its model, runs warm-up steps,
# then a few timed repetitions (one JSON line each: `transformer bench`,
# bench/torch_bench.py); the table pools every timed repetition. A fresh
# process per repetition keeps peak memory per case and lets slow drifts on
# the machine hit both sides alike.
#
# PyTorch gets its best setup (bench/README.md): the OpenMP build of OpenBLAS
# (LD_LIBRARY_PATH to openblas-openmp, where libblas.so.3 / liblapack.so.3 /
# libopenblas.so.0 resolve; Debian's default alternative is the pthread build,
# whose pool fights torch's OpenMP threads, and python3-torch alone may get the
# reference BLAS), OPENBLAS_CORETYPE=SkylakeX on AVX-512 CPUs (OpenBLAS 0.3.21
# does not recognise Sapphire Rapids and falls back to SSE3 kernels), the same
# thread count as ours (OMP_NUM_THREADS and torch.set_num_threads).
#
# usage: bench/run.sh [options]
#   --quick              smoke test: 1 process per side, 1 timed rep, small only, long at 512 tokens
#   --reps N             processes per side per case (default 5)
#   --threads T          threads of each side (default 2)
#   --only LIST          comma-separated subset of train,greedy,sgemm,long,translate,ct2 (default all)
#   --model DIR          trained model directory for the beam-4 translation (default none: skipped)
#   --checkpoint FILE    weights in DIR to translate with (default DIR/model.safetensors)
#   --input FILE         sentences to translate (default ../shared/data/multi30k/test_2016_flickr.de)
#   --long-lens "L..."   lengths of the long-input case (default "1024 2048 4096")
#   --out FILE           also write the table as markdown to FILE (default none)
#   --results DIR        keep the raw JSON lines in DIR (default a new folder under /tmp)
#   --build-dir DIR      release tree to build and use (default build)
#   --cli PATH           use this transformer binary; build nothing (default DIR/transformer)
#   -h, --help           this text
# env: TFM_SHARED_DIR (default ../shared), TFM_PYTHON (default /usr/bin/python3)
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '/^# usage:/,/^# env:/p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "bench/run.sh: $*" >&2; exit 2; }

quick=0 reps=5 threads=2 only="train,greedy,sgemm,long,translate,ct2" model="" checkpoint="" input=""
long_lens="1024 2048 4096" out="" results="" build_dir="build" cli=""
shared="${TFM_SHARED_DIR:-../shared}"
py="${TFM_PYTHON:-/usr/bin/python3}"
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1: '$2' is not a positive integer"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --reps) need "$@"; posint "$1" "$2"; reps="$2"; shift 2 ;;
    --threads) need "$@"; posint "$1" "$2"; threads="$2"; shift 2 ;;
    --only) need "$@"; only="$2"; shift 2 ;;
    --model) need "$@"; model="$2"; shift 2 ;;
    --checkpoint) need "$@"; checkpoint="$2"; shift 2 ;;
    --input) need "$@"; input="$2"; shift 2 ;;
    --long-lens) need "$@"; long_lens="$2"; shift 2 ;;
    --out) need "$@"; out="$2"; shift 2 ;;
    --results) need "$@"; results="$2"; shift 2 ;;
    --build-dir) need "$@"; build_dir="$2"; shift 2 ;;
    --cli) need "$@"; cli="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
done
IFS=',' read -r -a only_list <<< "$only"
for b in "${only_list[@]}"; do
  case "$b" in train|greedy|sgemm|long|translate|ct2) ;; *) die "--only: unknown benchmark '$b' (train, greedy, sgemm, long, translate, ct2)" ;; esac
done
for L in $long_lens; do posint --long-lens "$L"; done
wants() { [[ ",$only," == *",$1,"* ]]; }
if ((quick)); then reps=1; long_lens="512"; fi
[[ -z "$input" ]] && input="$shared/data/multi30k/test_2016_flickr.de"

# ------------------------------------------------------------------ PyTorch
[[ -x "$py" ]] || die "$py not found: install python3-torch (scripts/install.sh does), or set TFM_PYTHON"
"$py" -c 'import torch' 2>/dev/null || die "$py cannot import torch: apt-get install python3-torch"

# ------------------------------------------------------------------- build
if [[ -z "$cli" ]]; then
  if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
    echo "configuring $build_dir (Release)"
    cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release >/dev/null || die "cmake configure failed"
  fi
  btype=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build_dir/CMakeCache.txt")
  # Empty means CMakeLists.txt's default, Release.
  [[ -z "$btype" || "$btype" == "Release" ]] || echo "warning: $build_dir is a '$btype' build, not Release: our timings will suffer" >&2
  grep -q '^TFM_SANITIZE:BOOL=ON' "$build_dir/CMakeCache.txt" && echo "warning: $build_dir has sanitizers on" >&2
  cmake --build "$build_dir" -j "$(nproc)" --target transformer_cli >/dev/null || die "build failed (cmake --build $build_dir)"
  cli="$build_dir/transformer"
fi
[[ -x "$cli" ]] || die "$cli is not an executable"

# ------------------------------------------------------------- environment
export OMP_NUM_THREADS="$threads" TFM_NUM_THREADS="$threads"
if grep -qw avx512f /proc/cpuinfo && [[ -z "${OPENBLAS_CORETYPE:-}" ]]; then
  export OPENBLAS_CORETYPE=SkylakeX
fi
torch_ld=""
for d in "/usr/lib/$(gcc -print-multiarch 2>/dev/null)/openblas-openmp" /usr/lib/*/openblas-openmp; do
  if [[ -e "$d/libblas.so.3" ]]; then torch_ld="$d"; break; fi
done
if [[ -z "$torch_ld" ]]; then
  echo "warning: no openblas-openmp folder: PyTorch runs on the system's default BLAS alternative;" \
       "apt-get install libopenblas0-openmp for its best setup" >&2
fi
torch_env=(env "LD_LIBRARY_PATH=${torch_ld}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
torch_cmd=("${torch_env[@]}" "$py" bench/torch_bench.py)

if [[ -z "$results" ]]; then results="$(mktemp -d /tmp/tfm_bench.XXXXXX)"; fi
mkdir -p "$results" || die "cannot create $results"
[[ -z "$(ls -A "$results")" ]] || die "--results $results is not empty"

# What each side runs on: OpenBLAS's own report, and torch.mm at 1024^3.
c_info=$("$cli" bench sgemm --config tiny --reps 1 --warmup 0 --min-time 0 --threads "$threads" | tail -n 1)
t_info=$("${torch_cmd[@]}" blas --threads "$threads" | tail -n 1)
[[ "$c_info" == *'"summary":true'* ]] || die "$cli bench sgemm --config tiny failed: a binary without 'bench'? rebuild"
[[ "$t_info" == *'"summary": true'* ]] || die "bench/torch_bench.py blas failed"
jget() { "$py" -c 'import json,sys; o=json.loads(sys.argv[1]); print(o.get(sys.argv[2], ""))' "$1" "$2"; }
{
  echo "cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
  echo "nproc=$(getconf _NPROCESSORS_ONLN)"  # not nproc: it honours OMP_NUM_THREADS
  echo "threads=$threads"
  echo "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "reps=$reps"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "c_blas=$(jget "$c_info" blas)"
  echo "c_blas_core=$(jget "$c_info" blas_core)"
  echo "torch=$(jget "$t_info" torch)"
  echo "torch_blas=$(jget "$t_info" blas)"
  echo "torch_blas_core=$(jget "$t_info" blas_core)"
  echo "torch_sgemm_from=$(jget "$t_info" sgemm_from)"
  echo "torch_mm_gflops=$(printf '%.0f' "$(jget "$t_info" gflops)")"
  echo "torch_capability=$(jget "$t_info" cpu_capability)"
} > "$results/meta.txt"
echo "transformer.c: $(jget "$c_info" blas)"
echo "PyTorch:       $(jget "$t_info" blas) (sgemm_ from $(jget "$t_info" sgemm_from))"
[[ "$(jget "$t_info" blas)" == *USE_OPENMP* ]] ||
  echo "WARNING: PyTorch's sgemm is not OpenBLAS's OpenMP build: install libopenblas0-openmp; the ratios are not fair" >&2
mm=$(jget "$t_info" gflops)
echo "torch.mm 1024^3: $(printf '%.1f' "$mm") GFLOP/s with $threads threads; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
if awk -v g="$mm" -v t="$threads" 'BEGIN { exit !(g < 15 * t) }'; then
  echo "WARNING: torch.mm is slow: PyTorch is probably on the reference BLAS or SSE3 kernels; the ratios are not fair" >&2
fi
if grep -qw avx512f /proc/cpuinfo; then
  for side in "transformer.c:$(jget "$c_info" blas_core)" "PyTorch:$(jget "$t_info" blas_core)"; do
    case "${side#*:}" in SkylakeX|Cooperlake|SapphireRapids) ;; *)
      echo "WARNING: ${side%%:*}'s OpenBLAS runs '${side#*:}' kernels on an AVX-512 CPU (OPENBLAS_CORETYPE)" >&2 ;;
    esac
  done
fi
if awk -v l="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN { exit !(l > 0.5) }'; then
  echo "WARNING: load average $(cut -d' ' -f1-3 /proc/loadavg): something else is running; timings will be disturbed" >&2
fi
echo "results: $results"

# ------------------------------------------------------------------- cases
# run CASE IMPL CMD...: one process; its stdout goes to RESULTS/CASE/IMPL.jsonl.
run() {
  local case="$1" impl="$2"
  shift 2
  mkdir -p "$results/$case"
  local f="$results/$case/$impl.jsonl"
  if ! "$@" >> "$f" 2>> "$results/$case/$impl.err"; then
    echo '{"failed":true}' >> "$f"
    echo "    $impl: FAILED: $(tail -n 3 "$results/$case/$impl.err" | tr '\n' ' ')" >&2
  else
    printf '    %-13s %s\n' "$impl" "$("$py" bench/report.py last "$f")"
  fi
}

inner_train_small=3 inner_train_base=2 inner_greedy64=5 inner_greedy1=10 warm=()
if ((quick)); then
  inner_train_small=1 inner_train_base=1 inner_greedy64=1 inner_greedy1=1 warm=(--warmup 1)
fi
echo "inner=timed reps per process: train small $inner_train_small, base $inner_train_base; greedy 64 $inner_greedy64, 1 $inner_greedy1; sgemm, long, translate 1" >> "$results/meta.txt"
configs=(small base)
((quick)) && configs=(small)

if wants train; then
  for cfg in "${configs[@]}"; do
    inner=$inner_train_small
    [[ $cfg == base ]] && inner=$inner_train_base
    for ((r = 1; r <= reps; r++)); do
      echo "train $cfg: round $r/$reps"
      run "train-$cfg" c "$cli" bench train --config "$cfg" --reps "$inner" --threads "$threads" "${warm[@]}"
      run "train-$cfg" torch "${torch_cmd[@]}" train --config "$cfg" --reps "$inner" --threads "$threads" "${warm[@]}"
    done
  done
fi

if wants greedy; then
  for b in 64 1; do
    inner=$inner_greedy64
    [[ $b == 1 ]] && inner=$inner_greedy1
    g=(--config small --batch "$b" --src-len 24 --out-len 24 --reps "$inner" --threads "$threads" "${warm[@]}")
    for ((r = 1; r <= reps; r++)); do
      echo "greedy $b x 24: round $r/$reps"
      check=()
      ((r == 1)) && check=(--check)
      run "greedy-b$b" c "$cli" bench greedy "${g[@]}"
      run "greedy-b$b" torch-prefix "${torch_cmd[@]}" greedy --method prefix "${g[@]}"
      run "greedy-b$b" torch-kv "${torch_cmd[@]}" greedy --method kv "${check[@]}" "${g[@]}"
    done
  done
fi

if wants sgemm; then
  mt=()
  ((quick)) && mt=(--min-time 0.05)
  for cfg in "${configs[@]}"; do
    for ((r = 1; r <= reps; r++)); do
      echo "sgemm $cfg: round $r/$reps"
      run "sgemm-$cfg" c "$cli" bench sgemm --config "$cfg" --reps 1 --threads "$threads" "${mt[@]}"
      run "sgemm-$cfg" torch "${torch_cmd[@]}" sgemm --config "$cfg" --reps 1 --threads "$threads" "${mt[@]}"
    done
  done
fi

if wants long; then
  # Memory, not speed, is the point here: one round per length unless --reps asks for fewer.
  lreps=$((reps < 2 ? reps : 2))
  for L in $long_lens; do
    for ((r = 1; r <= lreps; r++)); do
      echo "long $L tokens: round $r/$lreps"
      run "long-$L" c "$cli" bench long --len "$L" --reps 1 --threads "$threads" "${warm[@]}"
      run "long-$L" torch "${torch_cmd[@]}" long --len "$L" --reps 1 --threads "$threads" "${warm[@]}"
    done
  done
fi

if wants ct2; then
  # Ours only: the reference figures are report.py's CT2_TOKENS_PER_S.
  for cfg in "${configs[@]}"; do
    for mode in g64 b64 g1; do
      case $mode in
        g64) dargs=(--batch 64) ;;
        b64) dargs=(--batch 64 --beam 4) ;;
        g1) dargs=(--batch 1) ;;
      esac
      inner=3
      [[ $cfg == base && $mode != g1 ]] && inner=1
      [[ $mode == g1 ]] && inner=10
      ((quick)) && inner=1
      for ((r = 1; r <= reps; r++)); do
        echo "ct2 settings, $cfg $mode: round $r/$reps"
        run "ct2-$cfg-$mode" c "$cli" bench greedy --config "$cfg" "${dargs[@]}" --src-len 24 --out-len 24 \
          --reps "$inner" --threads "$threads" "${warm[@]}"
      done
    done
  done
fi

if wants translate; then
  why=""
  if [[ -z "$model" ]]; then why="no trained model given (--model DIR)"
  elif [[ ! -d "$shared/data/multi30k" ]]; then why="$shared/data/multi30k not found (set TFM_SHARED_DIR)"
  elif [[ ! -r "$input" ]]; then why="$input not readable (--input FILE)"
  elif [[ ! -f "$model/model.safetensors" && -z "$checkpoint" ]]; then why="$model/model.safetensors not found"
  fi
  if [[ -n "$why" ]]; then
    echo "translate: skipped: $why"
    echo "$why" > "$results/translate.skipped"
  else
    targs=(--model "$model" --input "$input" --beam 4 --threads "$threads")
    [[ -n "$checkpoint" ]] && targs+=(--checkpoint "$checkpoint")
    ((quick)) && targs+=(--limit 100)
    for ((r = 1; r <= reps; r++)); do
      echo "translate (beam 4): round $r/$reps"
      run translate c "$cli" bench translate "${targs[@]}" --reps 1
    done
  fi
fi

echo
outargs=()
[[ -n "$out" ]] && outargs=(--out "$out")
"$py" bench/report.py table "$results" "${outargs[@]}"
echo "raw results: $results"
