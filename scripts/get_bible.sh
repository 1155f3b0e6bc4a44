#!/usr/bin/env bash
# Builds the Spanish-English Bible parallel corpus (RV1909 / World English
# Bible, verse-aligned, book-level train/dev/test split) from Debian packages
# alone: diatheke, sword-text-sparv, sword-text-web. See docs/data.md.
#
#   scripts/get_bible.sh OUTDIR
#
# Writes OUTDIR/{train,dev,test}.{es,en,ref}. Installs the packages with
# apt-get if they are missing (through sudo when not root). Does nothing if
# OUTDIR already holds all nine files with matching line counts. The build
# goes to a temporary directory that is renamed into place at the end.
# Environment: BIBLE_JOBS (parallel diatheke calls, default: nproc).
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
OUT=${1%/}
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD_PL="$HERE/bible/build.pl"
SPLITS="train dev test"

# Prints "train N, dev N, test N" if DIR holds a complete corpus, else fails.
complete() {
    local dir=$1 s n n2 l msg=""
    for s in $SPLITS; do
        n=""
        for l in es en ref; do
            [ -s "$dir/$s.$l" ] || return 1
            n2=$(wc -l < "$dir/$s.$l")
            [ -z "$n" ] || [ "$n" = "$n2" ] || return 1
            n=$n2
        done
        msg="$msg${msg:+, }$s $n"
    done
    echo "$msg"
}

if counts=$(complete "$OUT"); then
    echo "get_bible: $OUT is complete ($counts pairs); nothing to do"
    exit 0
fi

# --- packages ----------------------------------------------------------------
need=()
command -v diatheke >/dev/null 2>&1 || need+=(diatheke)
for p in sword-text-sparv sword-text-web; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$st" = "install ok installed" ] || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "get_bible: installing ${need[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "get_bible: need root or sudo to install ${need[*]}" >&2
            exit 1
        }
        SUDO=sudo
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y --no-install-recommends "${need[@]}"; then
        $SUDO apt-get update
        $SUDO apt-get install -y --no-install-recommends "${need[@]}"
    fi
fi
mods=$(diatheke -b system -k modulelist 2>/dev/null || true)
for m in spaRV1909eb engWEB2015eb; do
    grep -q "^$m :" <<<"$mods" || {
        echo "get_bible: SWORD module $m not found (diatheke -b system -k modulelist)" >&2
        exit 1
    }
done

# --- build -------------------------------------------------------------------
versions=$(dpkg-query -W -f='${Package} ${Version}, ' diatheke sword-text-sparv sword-text-web 2>/dev/null || true)
echo "get_bible: using ${versions%, }"
start=$SECONDS
parent=$(dirname "$OUT")
mkdir -p "$parent"
TMP=$(mktemp -d "$parent/.get_bible.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir "$TMP/raw" "$TMP/out"

jobs=${BIBLE_JOBS:-$(nproc 2>/dev/null || echo 2)}
perl "$BUILD_PL" jobs > "$TMP/jobs"
echo "get_bible: dumping $(wc -l < "$TMP/jobs") book ranges with diatheke ($jobs jobs)"
# Each line: MODULE|OPTIONS|KEY|FILE.
# shellcheck disable=SC2016 # the sh -c script expands its own variables
tr '\n' '\0' < "$TMP/jobs" | RAW="$TMP/raw" xargs -0 -n 1 -P "$jobs" sh -c '
    mod=${1%%|*}; r=${1#*|}; opt=${r%%|*}; r=${r#*|}; key=${r%%|*}; file=${r#*|}
    diatheke -b "$mod" ${opt:+-o "$opt"} -f OSIS -k "$key" > "$RAW/$file.part" && mv "$RAW/$file.part" "$RAW/$file"
' sh

perl "$BUILD_PL" build "$TMP/raw" "$TMP/out"
counts=$(complete "$TMP/out") || { echo "get_bible: build produced incomplete output" >&2; exit 1; }

# --- install atomically ------------------------------------------------------
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
    # Existing, incomplete directory: replace the files one by one (each
    # rename is atomic; completeness is judged on all nine).
    for s in $SPLITS; do for l in es en ref; do
        mv -f "$TMP/out/$s.$l" "$OUT/$s.$l"
    done; done
else
    [ -d "$OUT" ] && rmdir "$OUT"
    mv "$TMP/out" "$OUT"
fi
echo "get_bible: wrote $OUT ($counts pairs) in $((SECONDS - start)) s"
