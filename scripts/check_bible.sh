#!/usr/bin/env bash
# Compares a corpus built by scripts/get_bible.sh with the shared reference
# copy ($TFM_SHARED_DIR/data/bible-es-en, default /work/shared/data/...).
#
#   scripts/check_bible.sh OUTDIR
#
# Prints, per split and file, how many lines are identical at the same line
# number, and whether the files are byte-identical. Exits 0 if every file is
# identical, 1 if any differs, 0 with a message if the reference is absent.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=${1%/}
REF="${TFM_SHARED_DIR:-/work/shared}/data/bible-es-en"
if [ ! -d "$REF" ]; then
    echo "check_bible: reference copy $REF not found; skipping"
    exit 0
fi

status=0
for s in train dev test; do
    line="$s:"
    for l in es en ref; do
        a="$REF/$s.$l" b="$OUT/$s.$l"
        if [ ! -f "$b" ]; then
            line="$line $l missing;"
            status=1
            continue
        fi
        n=$(wc -l < "$a")
        m=$(wc -l < "$b")
        same=$(paste -d '\n' "$a" "$b" | awk 'NR % 2 { x = $0; next } $0 == x { k++ } END { print k + 0 }')
        if cmp -s "$a" "$b"; then
            tag="identical"
        else
            tag="differs"
            status=1
        fi
        line="$line $l $same/$n match ($m lines, $tag);"
    done
    echo "$line"
done
if [ $status -eq 0 ]; then
    echo "check_bible: all files identical to $REF"
else
    echo "check_bible: differences from $REF (diff $REF/SPLIT.LANG $OUT/SPLIT.LANG)"
fi
exit $status
