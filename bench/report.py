#!/usr/bin/python3
"""The table of bench/run.sh, from the JSON lines its runs left in a results
folder:

  RESULTS/meta.txt                 key=value lines about the machine and the run
  RESULTS/<case>/<impl>.jsonl      every process's output for that case, appended
                                   (impl: c, torch, torch-prefix, torch-kv)

Usage:
  report.py table RESULTS [--out FILE]   the table on stdout; also markdown to FILE
  report.py last FILE                    one line about the last process in FILE

Medians and spreads (min-max) are over every timed repetition of every
process of a case; peak memory is over the processes (one figure each).
Ratios are ours / PyTorch's throughput (above 1: transformer.c is faster);
for memory, ours / PyTorch's peak RSS (below 1: we use less).
"""
import json
import os
import statistics
import sys

FLOP_NOTE = (
    "FLOP per training step (bench/README.md): 6 x (weights x tokens) for every linear layer "
    "(projections, FFN, cross-attention K/V on source tokens) + 12 x d_model x Lq x Lk per attention "
    "per layer per row (causal attention counted in full) + 6 x d_model x V x target tokens for the "
    "output projection; not counted: biases, LayerNorm, softmax, dropout, residual adds, embedding "
    "lookups, the loss, Adam."
)


def load(path):
    """(reps, summaries): the rep objects and summary objects of a .jsonl file;
    a process that failed left {"failed": true}."""
    reps, sums, failed = [], [], 0
    if not os.path.exists(path):
        return reps, sums, failed
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                o = json.loads(line)
            except json.JSONDecodeError:
                continue
            if o.get("failed"):
                failed += 1
            elif o.get("summary"):
                sums.append(o)
            elif "rep" in o:
                reps.append(o)
    return reps, sums, failed


def fmt(x):
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


class Stat:
    def __init__(self, values, failed=0):
        self.values = [v for v in values if v is not None]
        self.failed = failed

    @property
    def ok(self):
        return bool(self.values)

    @property
    def med(self):
        return statistics.median(self.values) if self.values else None

    def __str__(self):
        if not self.values:
            return "failed" if self.failed else "-"
        s = fmt(self.med)
        if len(self.values) > 1:
            s += f" ({fmt(min(self.values))}-{fmt(max(self.values))})"
        if self.failed:
            s += f" [{self.failed} failed]"
        return s


def field(res, case, impl, key, summary=False, scale=1.0):
    reps, sums, failed = load(os.path.join(res, case, impl + ".jsonl"))
    src = sums if summary else reps
    return Stat([o[key] * scale for o in src if key in o], failed)


def ratio(a, b):
    if not (a.ok and b.ok) or not b.med:
        return None
    return a.med / b.med


def row(name, ours, torch, r, target, met):
    return {"name": name, "ours": str(ours), "torch": str(torch) if torch is not None else "-",
            "ratio": (f"{r:.2f}x" if r is not None else "-"), "target": target,
            "met": ("yes" if met else "NO") if met is not None else "-"}


# CTranslate2 4.8, float32, on this project's machine (2 threads, random
# weights, source 24 tokens, exactly 24 output tokens), as issue 4 quotes
# them; CTranslate2 itself cannot be installed here (no network), so these
# are the reference the `ct2` case is measured against.
CT2_TOKENS_PER_S = {
    ("small", "g64"): 4900, ("small", "b64"): 1900, ("small", "g1"): 270,
    ("base", "g64"): 1050, ("base", "b64"): 500,
}
CT2_NAMES = {"g64": "greedy, 64 sentences", "b64": "beam 4, 64 sentences", "g1": "greedy, 1 sentence"}


def build_rows(res):
    rows = []
    has = lambda case: os.path.isdir(os.path.join(res, case))
    sgemm = {}
    for cfg in ("small", "base"):
        if has(f"sgemm-{cfg}"):
            sgemm[cfg] = field(res, f"sgemm-{cfg}", "c", "gflops")
    shapes = {"small": "64 x 24+24", "base": "32 x 32+32"}
    for cfg in ("small", "base"):
        case = f"train-{cfg}"
        if not has(case):
            continue
        o, t = field(res, case, "c", "tokens_per_s"), field(res, case, "torch", "tokens_per_s")
        r = ratio(o, t)
        rows.append(row(f"training step, {cfg} ({shapes[cfg]}), target tokens/s", o, t, r, ">= 1.5x PyTorch",
                        r >= 1.5 if r is not None else None))
        o, t = field(res, case, "c", "ms"), field(res, case, "torch", "ms")
        rows.append(row(f"training step, {cfg}: ms per step", o, t, ratio(t, o), "(speed-up)", None))
        o, t = field(res, case, "c", "gflops"), field(res, case, "torch", "gflops")
        if cfg in sgemm and sgemm[cfg].ok and o.ok:
            frac = o.med / sgemm[cfg].med
            rows.append(row(f"training step, {cfg}: achieved GFLOP/s (analytic)", o, t, ratio(o, t),
                            f">= 70% of sgemm {fmt(sgemm[cfg].med)} GFLOP/s: {100 * frac:.0f}%", frac >= 0.7))
        else:
            rows.append(row(f"training step, {cfg}: achieved GFLOP/s (analytic)", o, t, ratio(o, t),
                            ">= 70% of sgemm (run --only sgemm too)", None))
        o = field(res, case, "c", "peak_rss_kb", summary=True, scale=1 / 1024)
        t = field(res, case, "torch", "peak_rss_kb", summary=True, scale=1 / 1024)
        r = ratio(o, t)
        rows.append(row(f"training step, {cfg}: peak RSS (MB)", o, t, r, "<= PyTorch", r <= 1.0 if r is not None else None))
    for b in (64, 1):
        case = f"greedy-b{b}"
        if not has(case):
            continue
        o = field(res, case, "c", "tokens_per_s")
        t = field(res, case, "torch-prefix", "tokens_per_s")
        r = ratio(o, t)
        rows.append(row(f"greedy, small, {b} x 24 tokens (src 24): tokens/s vs nn.Transformer on the prefix",
                        o, t, r, ">= 5x", r >= 5 if r is not None else None))
        t = field(res, case, "torch-kv", "tokens_per_s")
        r = ratio(o, t)
        agree = field(res, case, "torch-kv", "agree_with_prefix", summary=True)
        note = f" (KV loop == prefix loop on {100 * agree.med:.0f}% of tokens)" if agree.ok else ""
        rows.append(row(f"greedy, small, {b} x 24 tokens: tokens/s vs KV-cached PyTorch loop{note}", o, t, r, "> 1x",
                        r > 1 if r is not None else None))
        o, t = field(res, case, "c", "ms"), field(res, case, "torch-prefix", "ms")
        rows.append(row(f"greedy, small, {b} x 24 tokens: ms (ours, PyTorch prefix loop)", o, t, ratio(t, o),
                        "(speed-up)", None))
    for cfg in ("small", "base"):
        case = f"sgemm-{cfg}"
        if has(case):
            o, t = field(res, case, "c", "gflops"), field(res, case, "torch", "gflops")
            rows.append(row(f"sgemm at the {cfg} training step's GEMM shapes, GFLOP/s (all GEMMs of a step, "
                            "time-weighted)", o, t, ratio(o, t), "(the ceiling)", None))
    lens = sorted(int(d.split("-")[1]) for d in os.listdir(res) if d.startswith("long-") and d.split("-")[1].isdigit())
    rss_c = {}
    for L in lens:
        case = f"long-{L}"
        o, t = field(res, case, "c", "ms"), field(res, case, "torch", "ms")
        rows.append(row(f"long input: encoder-only fwd+bwd of {L} tokens (d_model 512, 6 layers), ms", o, t,
                        ratio(t, o), "completes" if L >= 4096 else "", o.ok if L >= 4096 else None))
        o = field(res, case, "c", "peak_rss_kb", summary=True, scale=1 / 1024)
        t = field(res, case, "torch", "peak_rss_kb", summary=True, scale=1 / 1024)
        rss_c[L] = o
        rows.append(row(f"long input, {L} tokens: peak RSS (MB)", o, t, ratio(o, t), "", None))
    if len(lens) >= 3:
        a, b, c = lens[-3], lens[-2], lens[-1]
        if all(rss_c[x].ok for x in (a, b, c)) and c == 2 * b and b == 2 * a:
            d1 = rss_c[b].med - rss_c[a].med
            d2 = rss_c[c].med - rss_c[b].med
            g = d2 / d1 if d1 > 0 else None
            rows.append(row(f"long input: peak RSS increase {b}->{c} over {a}->{b} (ours; 2 = linear, 4 = quadratic)",
                            Stat([g]) if g else Stat([]), None, None, "linear in length (<= 2.5)",
                            g <= 2.5 if g else None))
    for cfg in ("small", "base"):
        for mode in ("g64", "b64", "g1"):
            case = f"ct2-{cfg}-{mode}"
            if not has(case):
                continue
            o = field(res, case, "c", "tokens_per_s")
            ref = CT2_TOKENS_PER_S.get((cfg, mode))
            r = o.med / ref if o.ok and ref else None
            rows.append(row(f"decoding at CTranslate2's settings, {cfg}, {CT2_NAMES[mode]} x 24 tokens: tokens/s "
                            "(the other column: CTranslate2 4.8's figure from issue 4, not measured in this run)",
                            o, Stat([ref]) if ref else None, r, ">= CTranslate2" if ref else "(no figure)",
                            r >= 1 if r is not None else None))
    if has("translate"):
        o = field(res, "translate", "c", "sentences_per_s")
        ot = field(res, "translate", "c", "tokens_per_s")
        reps, _, _ = load(os.path.join(res, "translate", "c.jsonl"))
        n = reps[0]["sentences"] if reps else "?"
        rows.append(row(f"beam-4 translation, Multi30k test ({n} sentences): sentences/s", o, None, None, "", None))
        rows.append(row("beam-4 translation: output tokens/s", ot, None, None, "", None))
    elif os.path.exists(os.path.join(res, "translate.skipped")):
        with open(os.path.join(res, "translate.skipped")) as f:
            rows.append(row("beam-4 translation, Multi30k test", "skipped: " + f.read().strip(), None, None, "", None))
    return rows


def shape_rows(res, cfg):
    """Per-shape sgemm medians of both sides."""
    out = []
    per = {}
    for impl in ("c", "torch"):
        reps, _, _ = load(os.path.join(res, f"sgemm-{cfg}", impl + ".jsonl"))
        for o in reps:
            for s in o.get("shapes", []):
                key = (s["ta"], s["tb"], s["M"], s["N"], s["K"], s["batch"])
                d = per.setdefault(key, {"name": s["name"], "count": s["count"], "c": [], "torch": []})
                d[impl].append(s["gflops"])
    for (ta, tb, M, N, K, batch), d in per.items():
        shape = f"{'T' if ta else 'N'}{'T' if tb else 'N'} {M}x{N}x{K}" + (f" x{batch}" if batch > 1 else "")
        out.append([d["name"], shape, str(d["count"]), str(Stat(d["c"])), str(Stat(d["torch"]))])
    return out


def meta(res):
    m = {}
    p = os.path.join(res, "meta.txt")
    if os.path.exists(p):
        with open(p) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    m[k] = v
    return m


def text_table(header, rows):
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def md_table(header, rows):
    esc = lambda s: s.replace("|", "\\|")
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def table(res, out_path):
    m = meta(res)
    rows = build_rows(res)
    header = ["benchmark", "ours median (min-max)", "PyTorch median (min-max)", "ratio", "target", "met?"]
    cells = [[r["name"], r["ours"], r["torch"], r["ratio"], r["target"], r["met"]] for r in rows]
    torch_base = Stat([])
    for case in sorted(os.listdir(res)):
        if os.path.isdir(os.path.join(res, case)):
            for impl in ("torch", "torch-prefix"):
                st = field(res, case, impl, "rss_start_kb", summary=True, scale=1 / 1024)
                torch_base.values += st.values
    env = [
        f"machine: {m.get('cpu', '?')}, {m.get('nproc', '?')} CPUs; {m.get('threads', '?')} threads each side; "
        f"load average at start {m.get('loadavg', '?')}",
        f"transformer.c: {m.get('c_blas', '?')} (core {m.get('c_blas_core', '?')})",
        f"PyTorch {m.get('torch', '?')}: {m.get('torch_blas', '?')} (core {m.get('torch_blas_core', '?')}; "
        f"sgemm_ from {m.get('torch_sgemm_from', '?')}), "
        f"torch.mm 1024^3 {m.get('torch_mm_gflops', '?')} GFLOP/s, ATen CPU capability {m.get('torch_capability', '?')}",
        "peak RSS is getrusage's ru_maxrss of each process" +
        (f"; PyTorch's includes {fmt(torch_base.med)} MB held right after `import torch`" if torch_base.ok else ""),
        f"runs: {m.get('reps', '?')} processes per side per case, alternating ours/PyTorch "
        f"({m.get('inner', '')}); {m.get('date', '')}",
    ]
    print("\n".join(env))
    print()
    print(text_table(header, cells))
    print()
    print(FLOP_NOTE)
    sg = [cfg for cfg in ("small", "base") if os.path.isdir(os.path.join(res, f"sgemm-{cfg}"))]
    if out_path:
        with open(out_path, "w") as f:
            f.write("### transformer.c vs PyTorch (bench/run.sh)\n\n")
            f.write("\n".join("- " + e for e in env) + "\n\n")
            f.write(md_table(header, cells) + "\n\n")
            f.write(FLOP_NOTE + "\n")
            for cfg in sg:
                f.write(f"\n#### sgemm GFLOP/s per GEMM shape, {cfg} training step\n\n")
                f.write("Shape: transposes of A and B, M x N x K; x n = n independent GEMMs run in parallel "
                        "(attention products).\n\n")
                f.write(md_table(["GEMM", "shape", "per step", "tfm_gemm", "torch.mm / bmm"], shape_rows(res, cfg)) + "\n")
        print(f"\nmarkdown table written to {out_path}")


def last(path):
    reps, sums, failed = load(path)
    if failed and not sums:
        print("FAILED")
    elif sums:
        s = sums[-1]
        msg = f"{s['median_ms']:.1f} ms"
        if "peak_rss_kb" in s:
            msg += f", peak RSS {s['peak_rss_kb'] / 1024:.0f} MB"
        print(msg)
    else:
        print("no result")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "table":
        out = None
        if len(sys.argv) == 5 and sys.argv[3] == "--out":
            out = sys.argv[4]
        elif len(sys.argv) != 3:
            sys.exit("usage: report.py table RESULTS [--out FILE]")
        table(sys.argv[2], out)
    elif len(sys.argv) == 3 and sys.argv[1] == "last":
        last(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
