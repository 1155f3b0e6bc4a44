#!/usr/bin/env bash
# The main job, on data a fresh machine can get with apt alone:
#   1. builds the Spanish-English Bible corpus from Debian's SWORD packages
#      (scripts/get_bible.sh -> data/bible-es-en);
#   2. trains a small Spanish-to-English Transformer on the CPU for a few
#      minutes (TFM_MINUTES, default 10) -> runs/bible-es-en;
#   3. translates sample sentences, then the test split with beam 4, and
#      prints its sacreBLEU score.
# A model directory that already holds a trained model is evaluated, not
# retrained (delete it, or set TFM_MODEL_DIR, to train again).
set -euo pipefail
cd "$(dirname "$0")/.."
cli=build/transformer
[ -x "$cli" ] || bash scripts/build.sh
data=${TFM_DATA_DIR:-data/bible-es-en}
model=${TFM_MODEL_DIR:-runs/bible-es-en}
minutes=${TFM_MINUTES:-10}

echo "== 1. corpus: $data"
bash scripts/get_bible.sh "$data"

if [ -f "$model/model.safetensors" ]; then
    echo "== 2. $model already holds a trained model: evaluating it (delete it to train again)"
else
    echo "== 2. training es->en for $minutes minutes -> $model"
    mkdir -p "$(dirname "$model")"
    "$cli" train --train-src "$data/train.es" --train-tgt "$data/train.en" \
        --valid-src "$data/dev.es" --valid-tgt "$data/dev.en" --model-dir "$model" \
        --d-model 256 --heads 4 --d-ff 1024 --enc-layers 3 --dec-layers 3 --vocab-size 8000 \
        --max-len 100 --batch-tokens 4096 --warmup 800 --valid-every 200 --bleu-sentences 200 \
        --max-time "${minutes}m" --no-progress --log-every 25
fi

echo "== 3. sample translations (beam 4)"
samples=$(mktemp)
trap 'rm -f "$samples"' EXIT
cat > "$samples" <<'SAMPLES'
En el principio creó Dios los cielos y la tierra.
Y dijo Dios: Sea la luz: y fué la luz.
Bienaventurados los pobres en espíritu: porque de ellos es el reino de los cielos.
Porque de tal manera amó Dios al mundo, que ha dado á su Hijo unigénito.
SAMPLES
paste -d '\n' "$samples" <("$cli" translate --model "$model" --input "$samples") /dev/null | sed 's/^/  /'

echo "== 4. test split ($(wc -l < "$data/test.es") verses), beam 4"
start=$(date +%s)
"$cli" translate --model "$model" --input "$data/test.es" --output "$model/test.hyp"
echo "translated in $(( $(date +%s) - start )) s -> $model/test.hyp"
"$cli" bleu "$data/test.en" < "$model/test.hyp"
