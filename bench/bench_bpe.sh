#!/usr/bin/env bash
# bench_bpe.sh: how fast the BPE tokenizer learns and encodes, on one core.
#
#   learn   an 8,000 vocabulary on Multi30k train, both sides (train.en +
#           train.de, ~4 MB): best wall time of REPS runs (target: < 30 s)
#   encode  the same text, repeated COPIES times, through `transformer bpe
#           encode` (pieces, then --ids) to /dev/null: MB/s (target: >= 2 MB/s)
#   decode  the pieces back to text: MB/s of text produced; also checks that
#           the round trip is exact
#
# The figures go through the CLI, so they include reading, UTF-8 checking and
# printing: a lower bound on the library's own speed. Everything runs pinned to
# CPU 0 (taskset) when taskset exists. MB = 10^6 bytes.
#
# usage: bench/bench_bpe.sh [path/to/transformer]
#   default binary: $TFM_CLI, else build/transformer
#   env: TFM_SHARED_DIR (default ../shared), VOCAB (8000), REPS (3), COPIES (5)
set -euo pipefail
cd "$(dirname "$0")/.."
cli="${1:-${TFM_CLI:-build/transformer}}"
data="${TFM_SHARED_DIR:-../shared}/data/multi30k"
vocab="${VOCAB:-8000}"
reps="${REPS:-3}"
copies="${COPIES:-5}"
if [[ ! -x "$cli" ]]; then
  echo "bench_bpe: $cli is not an executable; build first (cmake --build build) or pass the binary" >&2
  exit 2
fi
for f in train.en train.de; do
  if [[ ! -r "$data/$f" ]]; then
    echo "bench_bpe: $data/$f not found (set TFM_SHARED_DIR)" >&2
    exit 2
  fi
done
pin=()
if command -v taskset >/dev/null 2>&1; then pin=(taskset -c 0); fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# timed CMD...: runs CMD (its own redirections apply) and sets `wall` and `cpu`
# (user + sys) in seconds. CPU time is the steadier figure on a busy machine.
timed() {
  local TIMEFORMAT='%R %U %S' t
  t=$( { time "$@" 2>"$work/stderr"; } 2>&1 ) || { cat "$work/stderr" >&2; exit 1; }
  read -r wall user sys <<< "$t"
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.3f", u + s }')
}
mbps() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", n / 1e6 / s }'; }
mb() { awk -v n="$1" 'BEGIN { printf "%.2f", n / 1e6 }'; }

# ------------------------------------------------------------------ learn
learn() {
  "${pin[@]}" "$cli" bpe learn -q --vocab-size "$vocab" -o "$work/bpe.model" \
    "$data/train.en" "$data/train.de"
}
text_bytes=$(cat "$data/train.en" "$data/train.de" | wc -c)
best_wall="" best_cpu=""
for ((i = 0; i < reps; i++)); do
  timed learn
  if [[ -z "$best_wall" ]] || awk -v a="$wall" -v b="$best_wall" 'BEGIN { exit !(a < b) }'; then
    best_wall="$wall" best_cpu="$cpu"
  fi
done
got_vocab=$(sed -n 's/^vocab_size //p' "$work/bpe.model")
printf 'learn   vocab %s on train.en + train.de (%s MB): %s s wall, %s s CPU (best of %s)\n' \
  "$got_vocab" "$(mb "$text_bytes")" "$best_wall" "$best_cpu" "$reps"

# ----------------------------------------------------------------- encode
for ((i = 0; i < copies; i++)); do cat "$data/train.en" "$data/train.de"; done > "$work/text"
bytes=$(wc -c < "$work/text")
encode_pieces() { "${pin[@]}" "$cli" bpe encode -m "$work/bpe.model" < "$work/text" > "$work/pieces"; }
encode_ids() { "${pin[@]}" "$cli" bpe encode --ids -m "$work/bpe.model" < "$work/text" > /dev/null; }
decode_pieces() { "${pin[@]}" "$cli" bpe decode -m "$work/bpe.model" < "$work/pieces" > "$work/back"; }
timed encode_pieces
tokens=$(wc -w < "$work/pieces")
printf 'encode  %s MB -> %s tokens, pieces: %s MB/s wall, %s MB/s CPU\n' \
  "$(mb "$bytes")" "$tokens" "$(mbps "$bytes" "$wall")" "$(mbps "$bytes" "$cpu")"
timed encode_ids
printf 'encode  --ids: %s MB/s wall, %s MB/s CPU\n' "$(mbps "$bytes" "$wall")" "$(mbps "$bytes" "$cpu")"

# ----------------------------------------------------------------- decode
timed decode_pieces
printf 'decode  pieces: %s MB/s wall, %s MB/s CPU (of text produced)\n' \
  "$(mbps "$bytes" "$wall")" "$(mbps "$bytes" "$cpu")"
if cmp -s "$work/back" "$work/text"; then
  echo "round trip: exact"
else
  echo "round trip: DIFFERS" >&2
  exit 1
fi
