#!/usr/bin/env bash
# bench/gpu/run.sh: transformer.c against PyTorch on one NVIDIA GPU, in one
# run, alternating the two sides, and a table of medians and ratios.
#
#   bash bench/gpu/run.sh [--rounds N] [--out FILE.md] [--quick]
#
# Measures (bench/gpu/README.md says what each counts):
#   the GPU's bf16 GEMM ceiling (torch.mm 8192^3), the peak for MFU;
#   a training step of the paper's base model (and big, unless --quick):
#     ours: transformer bench train --config gpu-base|gpu-big --device cuda, with fp32
#     GEMMs and with --precision bf16 (tensor cores, fp32 storage)
#     PyTorch: eager with bf16 autocast + fused Adam, and torch.compile;
#   greedy decoding of 64 sentences, 32 source and 32 output tokens, base model:
#     ours: transformer bench greedy --config gpu-base --device cuda
#     PyTorch: a KV-cached loop (fp32 and bf16);
#   beam search, beam 4, same shapes (every hypothesis runs 32 tokens):
#     ours: the same with --beam 4; PyTorch: the KV-cached loop with beam bookkeeping.
# Rounds alternate ours and PyTorch eager (--rounds, default 3); torch.compile
# runs once (its compilation takes about a minute) with several timed windows.
# Needs build-cuda (scripts/gpu_test.sh builds it) and python3 with torch 2.x.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=3 out="" quick=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --quick) quick=1; rounds=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "bench/gpu/run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
cli=${TFM_CLI:-build-cuda/transformer}
[ -x "$cli" ] || { echo "bench/gpu/run.sh: $cli not found: run scripts/gpu_test.sh first" >&2; exit 1; }
py=${TFM_PYTHON:-python3}
tb=bench/gpu/torch_gpu_bench.py
res=$(mktemp)
trap 'rm -f "$res"' EXIT
configs="base big"
[ "$quick" = 1 ] && configs="base"

"$py" $tb --what matmul --reps 20 >> "$res"
for r in $(seq 1 "$rounds"); do
    echo "== round $r of $rounds" >&2
    for c in $configs; do
        for prec in fp32 bf16; do
            "$cli" bench train --config gpu-$c --device cuda --precision $prec --reps 3 --warmup 2 \
                | grep -v '"summary"' >> "$res"
        done
        "$py" $tb --what train --config "$c" --mode eager --steps 5 --windows 3 >> "$res"
    done
    for prec in fp32 bf16; do
        "$cli" bench greedy --config gpu-base --batch 64 --src-len 32 --out-len 32 --device cuda --precision $prec \
            --reps 5 | grep -v '"summary"' >> "$res"
    done
    "$py" $tb --what greedy --config base --dtype fp32 --reps 5 >> "$res"
    for prec in fp32 bf16; do
        "$cli" bench greedy --config gpu-base --batch 64 --src-len 32 --out-len 32 --beam 4 --device cuda \
            --precision $prec --reps 5 | grep -v '"summary"' >> "$res"
    done
    "$py" $tb --what beam --beam 4 --config base --dtype fp32 --reps 5 >> "$res"
done
for c in $configs; do "$py" $tb --what train --config "$c" --mode compile --steps 5 --windows 3 >> "$res"; done
"$py" $tb --what greedy --config base --dtype bf16 --reps 5 >> "$res"
"$py" $tb --what beam --beam 4 --config base --dtype bf16 --reps 5 >> "$res"

"$py" - "$res" "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
peak = next((r["tflops"] for r in rows if r.get("bench") == "matmul" and r.get("config") == "8192x8192x8192"), None)
gpu = next((r["gpu"] for r in rows if "gpu" in r), "?")
def med(xs): return statistics.median(xs) if xs else float("nan")
def spread(xs): return f"{min(xs):.1f}-{max(xs):.1f}" if xs else "-"
lines = [f"GPU: {gpu}; bf16 GEMM ceiling (torch.mm 8192^3): {peak:.0f} TFLOP/s" if peak else f"GPU: {gpu}", "",
         "| benchmark | side | median | spread | tokens/s | MFU vs bf16 ceiling | ratio ours/side |",
         "|---|---|---|---|---|---|---|"]
for c in ("base", "big"):
    ours_tps = None
    for prec in ("fp32", "bf16"):
        ours = [r for r in rows if r.get("impl") == "transformer.c" and r.get("bench") == "train"
                and r.get("config") == f"gpu-{c}" and r.get("precision", "fp32") == prec]
        if not ours: continue
        ms = [r["ms"] for r in ours]
        flop = ours[0]["flop"]; tok = ours[0]["tgt_tokens"]
        tps = tok / (med(ms) / 1e3)
        ours_tps = tps  # the last (fastest) mode is the one compared
        mfu = flop / (med(ms) / 1e3) / 1e12 / peak if peak else float("nan")
        lines.append(f"| train {c} ({ours[0]['B']}x{ours[0]['S']}+{ours[0]['T']}) | transformer.c {prec} GEMMs | {med(ms):.1f} ms | {spread(ms)} | {tps:,.0f} | {100*mfu:.1f}% | |")
    if ours_tps is None: continue
    for side in ("torch-eager-bf16", "torch-compile-bf16"):
        t = [r for r in rows if r.get("bench") == "train" and r.get("config") == c and r.get("side") == side]
        if not t: continue
        tms = [x for r in t for x in r.get("step_ms_windows", [r["step_ms"]])]
        tps = t[0]["tgt_tokens"] / (med(tms) / 1e3)
        tmfu = t[0]["flops_per_step"] / (med(tms) / 1e3) / 1e12 / peak if peak else float("nan")
        lines.append(f"| train {c} | {side} | {med(tms):.1f} ms | {spread(tms)} | {tps:,.0f} | {100*tmfu:.1f}% | {ours_tps/tps:.2f} |")
for kind, beam in (("greedy", 1), ("beam", 4)):
    ms = None
    name = "greedy base 64x32" if beam == 1 else f"beam {beam} base 64x32"
    for prec in ("fp32", "bf16"):
        ours = [r for r in rows if r.get("impl") == "transformer.c" and r.get("bench") == "greedy"
                and r.get("beam", 1) == beam and r.get("precision", "fp32") == prec]
        if not ours: continue
        ms = [r["ms"] for r in ours]
        tok = ours[0]["B"] * ours[0]["out_len"]
        lines.append(f"| {name} | transformer.c {prec} GEMMs | {med(ms):.1f} ms | {spread(ms)} | {tok/(med(ms)/1e3):,.0f} | - | |")
    if not ms: continue
    for side in ("torch-kvcache-fp32", "torch-kvcache-bf16"):
        t = [r for r in rows if r.get("bench") == kind and r.get("side") == side]
        if not t: continue
        tms = [r["ms_per_batch"] for r in t]
        lines.append(f"| {name} | {side} | {med(tms):.1f} ms | {spread(tms)} | {tok/(med(tms)/1e3):,.0f} | - | {med(tms)/med(ms):.2f} |")
lines.append("")
lines.append("ratio: ours (the bf16-GEMM rows) over the side: tokens/s for training, time for decoding; > 1 = we are faster.")
text = "\n".join(lines)
print(text)
if sys.argv[2]:
    open(sys.argv[2], "w").write(text + "\n")
PY
