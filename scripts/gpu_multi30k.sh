#!/usr/bin/env bash
# gpu_multi30k.sh: trains Multi30k German-to-English on the GPU (--device
# cuda) for TFM_MINUTES minutes (default 4; GEMMs in TFM_PRECISION: fp32 (the
# default), tf32 or bf16), translates test_2016_flickr with
# beam 4 on the GPU, and prints its sacreBLEU score and the timings.
#   bash scripts/gpu_multi30k.sh [DATA_DIR [MODEL_DIR]]
# DATA_DIR defaults to ../shared/data/multi30k; MODEL_DIR to runs/gpu-m30k-de-en
# (deleted first). Needs a CUDA build in build-cuda (scripts/gpu_test.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/multi30k}
model=${2:-runs/gpu-m30k-de-en}
minutes=${TFM_MINUTES:-4}
precision=${TFM_PRECISION:-fp32}
cli=${TFM_CLI:-build-cuda/transformer}
[ -x "$cli" ] || { echo "gpu_multi30k.sh: $cli not found: run scripts/gpu_test.sh first" >&2; exit 1; }
[ -f "$data/train.de" ] || { echo "gpu_multi30k.sh: $data/train.de not found" >&2; exit 1; }
rm -rf "$model"
mkdir -p "$(dirname "$model")"
start=$(date +%s.%N)
"$cli" train --device cuda --precision "$precision" --train-src "$data/train.de" --train-tgt "$data/train.en" \
    --valid-src "$data/val.de" --valid-tgt "$data/val.en" --model-dir "$model" \
    --d-model 256 --heads 4 --d-ff 1024 --enc-layers 3 --dec-layers 3 --vocab-size 8000 \
    --warmup 800 --batch-tokens 4096 --valid-every 250 --bleu-sentences 500 --keep-last 5 \
    --max-time "${minutes}m" --no-progress --log-every 100
trained=$(date +%s.%N)
"$cli" translate --device cuda --precision "$precision" --model "$model" --input "$data/test_2016_flickr.de" --output "$model/test.hyp"
translated=$(date +%s.%N)
echo "== test_2016_flickr, beam 4 (last checkpoint)"
"$cli" bleu "$data/test_2016_flickr.en" < "$model/test.hyp"
"$cli" average --model-dir "$model" --last 3 -o "$model/avg3.safetensors"
"$cli" translate --device cuda --precision "$precision" --model "$model" --checkpoint "$model/avg3.safetensors" \
    --input "$data/test_2016_flickr.de" --output "$model/test.avg3.hyp"
echo "== test_2016_flickr, beam 4 (average of the last 3 checkpoints)"
"$cli" bleu "$data/test_2016_flickr.en" < "$model/test.avg3.hyp"
awk -v s="$start" -v t="$trained" -v u="$translated" 'BEGIN {
    printf "gpu_multi30k.sh: training (with validation) %.1f s wall, translating 1000 sentences %.1f s\n", t - s, u - t }'
