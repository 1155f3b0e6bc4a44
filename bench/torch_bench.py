#!/usr/bin/python3
"""The PyTorch side of bench/run.sh: the measurements of `transformer bench`
with torch.nn, printing the same JSON (one object per timed repetition, then a
summary object with the peak resident memory).

  train   whole training steps: forward, label-smoothed cross-entropy, backward,
          Adam, on one random batch (the model of `transformer bench train`)
  greedy  greedy decoding of random sources, a fixed number of output tokens:
          --method prefix  nn.TransformerDecoder on the growing prefix at every
                           step (the straightforward loop)
          --method kv      a KV-cached loop written with plain tensor ops
  sgemm   torch.mm / torch.bmm at every GEMM shape of a training step
  long    forward + backward of one long sequence, encoder-only model
  blas    which BLAS torch loaded, and torch.mm GFLOP/s at 1024^3 (a check
          that the reference BLAS is not in charge)

The model is the one `transformer bench` builds, in torch.nn: post-LN
TransformerEncoderLayer/DecoderLayer stacks without final norms (as
nn.Transformer minus its two extra LayerNorms), sinusoidal positions, one
embedding shared by source, target and the output projection, scaled by
sqrt(d_model). Dropout as the paper and transformer.c: 0.1 on the embeddings
and on every residual branch, none on attention probabilities or the FFN
activation (torch.nn's layers put dropout there too; it is switched off so
both sides do the same work). Adam(0.9, 0.98, 1e-9), the noam schedule.

Run with /usr/bin/python3 (Debian's python3-torch). bench/run.sh sets the
environment that gives torch its best BLAS (see bench/README.md).
"""
import argparse
import ctypes
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {
    #        d_model heads d_ff  enc dec  vocab  batch src tgt
    "tiny": (32, 2, 64, 1, 1, 100, 4, 8, 8),
    "small": (256, 4, 1024, 3, 3, 8000, 64, 24, 24),
    "base": (512, 8, 2048, 6, 6, 32000, 32, 32, 32),
}
PAD, BOS, EOS = 0, 1, 2


def peak_rss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux


RSS_START_KB = peak_rss_kb()  # after `import torch`


def blas_info():
    """The BLAS/LAPACK libraries mapped into this process, and OpenBLAS's own
    configuration when it is one of them."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                base = os.path.basename(path)
                if "blas" in base or "lapack" in base:
                    libs.add(os.path.realpath(path))
    except OSError:
        pass
    info = {"blas_libs": sorted(libs), "blas": "", "blas_core": "", "sgemm_from": sgemm_provider()}
    for path in sorted(libs):
        if "openblas" not in os.path.basename(path):
            continue
        # Debian's libblas.so.3 of OpenBLAS is a thin wrapper beside its
        # libopenblas.so.0: the one in the folder torch's sgemm_ comes from.
        if info["sgemm_from"] and os.path.dirname(info["sgemm_from"]) != os.path.dirname(path):
            continue
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_config.restype = ctypes.c_char_p
            lib.openblas_get_corename.restype = ctypes.c_char_p
            info["blas"] = lib.openblas_get_config().decode()
            info["blas_core"] = lib.openblas_get_corename().decode()
        except (OSError, AttributeError):
            pass
    if not info["blas"]:
        info["blas"] = "not OpenBLAS: sgemm_ from " + (info["sgemm_from"] or "?")
    return info


def sgemm_provider():
    """The library whose sgemm_ torch's CPU library binds to: dlsym on
    libtorch_cpu's handle searches it and its dependencies in load order,
    and dladdr names the file that holds the symbol found."""

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    try:
        with open("/proc/self/maps") as f:
            paths = [l.split()[-1] for l in f if "libtorch_cpu" in l]
        if not paths:
            return ""
        fn = ctypes.CDLL(paths[0]).sgemm_
        info = DlInfo()
        libc = ctypes.CDLL(None)
        if libc.dladdr(ctypes.cast(fn, ctypes.c_void_p), ctypes.byref(info)) and info.dli_fname:
            return os.path.realpath(info.dli_fname.decode())
    except (OSError, AttributeError, IndexError):
        pass
    return ""


def emit(obj):
    print(json.dumps(obj), flush=True)


def head(args):
    return {"bench": args.kind, "impl": "pytorch", "threads": torch.get_num_threads()}


def summary(args, ms, **extra):
    o = head(args)
    o.update(summary=True, reps=len(ms), median_ms=statistics.median(ms) if ms else 0.0)
    o.update(blas_info())
    o.update(torch=torch.__version__, cpu_capability=cpu_capability(), peak_rss_kb=peak_rss_kb(),
             rss_start_kb=RSS_START_KB)
    o.update(extra)
    emit(o)


def cpu_capability():
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch < 2.0
        cfg = torch.__config__.show()
        key = "CPU capability usage: "
        return cfg.split(key)[1].split()[0] if key in cfg else ""


# ------------------------------------------------------------------ model
def sinusoid(P, D):
    t = torch.zeros(P, D, dtype=torch.float64)
    pos = torch.arange(P, dtype=torch.float64)[:, None]
    i = torch.arange(0, D, 2, dtype=torch.float64)
    ang = pos / torch.pow(10000.0, i / D)
    t[:, 0::2] = torch.sin(ang)
    t[:, 1::2] = torch.cos(ang)[:, : D // 2]
    return t.float()


def paper_dropout(layer):
    """Dropout only where the paper (and transformer.c) puts it: residual
    branches. torch.nn's layers also drop attention probabilities and the FFN
    activation with the same rate."""
    layer.self_attn.dropout = 0.0
    if hasattr(layer, "multihead_attn"):
        layer.multihead_attn.dropout = 0.0
    layer.dropout = nn.Identity()  # the one between linear1 and linear2
    return layer


class Model(nn.Module):
    """Encoder-decoder (dec > 0) or encoder-only (dec == 0) Transformer."""

    def __init__(self, D, H, Fd, enc, dec, V, P, dropout=0.1):
        super().__init__()
        self.D, self.H, self.V = D, H, V
        self.embed = nn.Embedding(V, D)  # source = target = output projection
        nn.init.normal_(self.embed.weight, 0.0, D ** -0.5)
        kw = dict(d_model=D, nhead=H, dim_feedforward=Fd, dropout=dropout, activation="relu",
                  layer_norm_eps=1e-5, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(paper_dropout(nn.TransformerEncoderLayer(**kw)), enc,
                                             norm=None, enable_nested_tensor=False)
        for l in self.encoder.layers:
            paper_dropout(l)
        self.decoder = None
        if dec > 0:
            self.decoder = nn.TransformerDecoder(paper_dropout(nn.TransformerDecoderLayer(**kw)), dec, norm=None)
            for l in self.decoder.layers:
                paper_dropout(l)
        for n, p in self.named_parameters():  # xavier for matrices, as nn.Transformer
            if p.dim() > 1 and not n.startswith("embed"):
                nn.init.xavier_uniform_(p)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("pe", sinusoid(P, D), persistent=False)
        self.scale = math.sqrt(D)

    def emb(self, ids, offset=0):
        L = ids.shape[1]
        return self.drop(self.embed(ids) * self.scale + self.pe[offset:offset + L])

    def encode(self, src):
        return self.encoder(self.emb(src))

    def logits(self, h):
        return F.linear(h, self.embed.weight)

    def forward(self, src, tgt_in=None, causal=None):
        mem = self.encode(src)
        if self.decoder is None:
            return self.logits(mem)
        return self.logits(self.decoder(self.emb(tgt_in), mem, tgt_mask=causal))


def causal_mask(T):
    return torch.triu(torch.full((T, T), float("-inf")), 1)


def random_tokens(gen, shape, V):
    return torch.randint(3, V, shape, generator=gen)  # never pad, bos or eos


def step_flop(D, H, Fd, Le, Ld, V, B, S, T):
    """The analytic FLOP count of `transformer bench` (bench/README.md)."""
    dk = dv = D // H
    Ns, Nt = B * S, B * T
    qkv, hv = H * (2 * dk + dv), H * dv
    enc_w = D * qkv + hv * D + 2 * D * Fd
    dec_w = D * qkv + hv * D + D * H * dk + hv * D + 2 * D * Fd
    mem_w = D * H * (dk + dv)
    wt = Le * enc_w * Ns + Ld * (dec_w * Nt + mem_w * Ns) + D * V * (Nt if Ld > 0 else Ns)
    lqlk = Le * S * S + Ld * (T * T + T * S)
    attn_fwd = 2 * H * (dk + dv) * lqlk * B
    return float(6 * wt + 3 * attn_fwd)


def size_of(args):
    D, H, Fd, Le, Ld, V, B, S, T = SIZES[args.config]
    B = args.batch or B
    S = args.src_len or S
    T = args.tgt_len or T
    return D, H, Fd, Le, Ld, V, B, S, T


# ------------------------------------------------------------------ train
def run_train(args):
    D, H, Fd, Le, Ld, V, B, S, T = size_of(args)
    torch.manual_seed(args.seed)
    model = Model(D, H, Fd, Le, Ld, V, max(S, T) + 1)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    gen = torch.Generator().manual_seed(args.seed)
    src = random_tokens(gen, (B, S), V)
    seq = random_tokens(gen, (B, T + 1), V)
    seq[:, 0] = BOS
    tgt_in, targets = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    mask = causal_mask(T)
    warmup = 4000
    state = {"step": 0}

    def step():
        state["step"] += 1
        n = state["step"]
        lr = D ** -0.5 * min(n ** -0.5, n * warmup ** -1.5)  # the paper's schedule
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        logits = model(src, tgt_in, mask)
        loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=PAD, label_smoothing=0.1)
        loss.backward()
        opt.step()
        return loss.item()

    flop = step_flop(D, H, Fd, Le, Ld, V, B, S, T)
    for _ in range(args.warmup):
        step()
    ms = []
    nparams = sum(p.numel() for p in model.parameters())
    for r in range(args.reps):
        t0 = time.perf_counter()
        loss = step()
        s = time.perf_counter() - t0
        ms.append(1e3 * s)
        o = head(args)
        o.update(config=args.config, rep=r, B=B, S=S, T=T, params=nparams, ms=1e3 * s, tgt_tokens=B * T,
                 src_tokens=B * S, tokens_per_s=B * T / s, flop=flop, gflops=flop / s * 1e-9, loss=loss)
        emit(o)
    summary(args, ms, config=args.config, flop=flop)


# ----------------------------------------------------------------- greedy
def mask_special(logits):
    logits[:, PAD] = float("-inf")
    logits[:, BOS] = float("-inf")
    logits[:, EOS] = float("-inf")  # fixed output length, as `transformer bench greedy`
    return logits


@torch.inference_mode()
def greedy_prefix(model, src, out_len, masks):
    """The straightforward loop: encode once, then run the whole decoder on the
    growing prefix at every step and keep the last position's logits."""
    B = src.shape[0]
    mem = model.encode(src)
    ys = torch.full((B, 1), BOS, dtype=torch.long)
    for t in range(out_len):
        h = model.decoder(model.emb(ys), mem, tgt_mask=masks[t + 1])
        tok = mask_special(model.logits(h[:, -1])).argmax(-1)
        ys = torch.cat([ys, tok[:, None]], dim=1)
    return ys[:, 1:]


@torch.inference_mode()
def greedy_kv(model, src, out_len):
    """KV-cached greedy decoding with plain tensor ops on the same weights:
    cross-attention keys/values computed once per layer, self-attention keys
    and values appended to preallocated caches, one position per step."""
    B, S = src.shape
    D, H = model.D, model.H
    dk = D // H
    scale = 1.0 / math.sqrt(dk)
    mem = model.encode(src)
    layers = list(model.decoder.layers)
    cross = []
    for l in layers:
        a = l.multihead_attn
        kv = F.linear(mem, a.in_proj_weight[D:], a.in_proj_bias[D:])  # [B, S, 2D]
        k, v = kv.view(B, S, 2, H, dk).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, S, dk] each
        cross.append((k.contiguous(), v.contiguous()))
    kc = [torch.empty(B, H, out_len, dk) for _ in layers]
    vc = [torch.empty(B, H, out_len, dk) for _ in layers]
    tok = torch.full((B,), BOS, dtype=torch.long)
    out = torch.empty(B, out_len, dtype=torch.long)
    for t in range(out_len):
        x = model.embed(tok) * model.scale + model.pe[t]  # [B, D]
        for i, l in enumerate(layers):
            sa = l.self_attn
            q, k, v = F.linear(x, sa.in_proj_weight, sa.in_proj_bias).view(B, 3, H, dk).unbind(1)
            kc[i][:, :, t] = k
            vc[i][:, :, t] = v
            s = torch.matmul(q.unsqueeze(2), kc[i][:, :, : t + 1].transpose(-1, -2)) * scale  # [B, H, 1, t+1]
            a = torch.matmul(torch.softmax(s, dim=-1), vc[i][:, :, : t + 1]).reshape(B, D)
            x = l.norm1(x + F.linear(a, sa.out_proj.weight, sa.out_proj.bias))
            ca = l.multihead_attn
            q = F.linear(x, ca.in_proj_weight[:D], ca.in_proj_bias[:D]).view(B, H, 1, dk)
            ck, cv = cross[i]
            s = torch.matmul(q, ck.transpose(-1, -2)) * scale  # [B, H, 1, S]
            a = torch.matmul(torch.softmax(s, dim=-1), cv).reshape(B, D)
            x = l.norm2(x + F.linear(a, ca.out_proj.weight, ca.out_proj.bias))
            x = l.norm3(x + l.linear2(F.relu(l.linear1(x))))
        tok = mask_special(model.logits(x)).argmax(-1)
        out[:, t] = tok
    return out


def run_greedy(args):
    D, H, Fd, Le, Ld, V, B, S, _ = size_of(args)
    T = args.out_len or SIZES[args.config][8]
    torch.manual_seed(args.seed)
    model = Model(D, H, Fd, Le, Ld, V, max(S, T) + 1)
    model.eval()
    src = random_tokens(torch.Generator().manual_seed(args.seed), (B, S), V)
    masks = [None] + [causal_mask(t) for t in range(1, T + 1)]
    if args.method == "prefix":
        run = lambda: greedy_prefix(model, src, T, masks)
    else:
        run = lambda: greedy_kv(model, src, T)
    extra = {}
    if args.check:
        # Both loops on the same weights must pick the same tokens.
        a, b = greedy_prefix(model, src, T, masks), greedy_kv(model, src, T)
        extra["agree_with_prefix"] = float((a == b).float().mean())
    for _ in range(args.warmup):
        run()
    ms = []
    for r in range(args.reps):
        t0 = time.perf_counter()
        run()
        s = time.perf_counter() - t0
        ms.append(1e3 * s)
        o = head(args)
        o.update(config=args.config, method=args.method, rep=r, B=B, src_len=S, out_len=T, ms=1e3 * s,
                 sentences_per_s=B / s, tokens_per_s=B * T / s)
        emit(o)
    summary(args, ms, config=args.config, method=args.method, B=B, **extra)


# ------------------------------------------------------------------ sgemm
def step_shapes(D, H, Fd, Le, Ld, V, B, S, T):
    """(name, ta, tb, M, N, K, count, batch): every GEMM of a training step, as
    `transformer bench sgemm` lists them."""
    dk = dv = D // H
    qkv = H * (2 * dk + dv)
    Ns, Nt = B * S, B * T
    shapes = {}

    def add(name, ta, tb, M, N, K, count, batch):
        if count <= 0 or min(M, N, K) <= 0:
            return
        key = (ta, tb, M, N, K, batch)
        if key in shapes:
            shapes[key][0] += "+" + name
            shapes[key][1] += count
        else:
            shapes[key] = [name, count]

    def linear(name, rows, n_in, n_out, count):
        add(name + ".fwd", 0, 1, rows, n_out, n_in, count, 1)
        add(name + ".dx", 0, 0, rows, n_in, n_out, count, 1)
        add(name + ".dw", 1, 0, n_out, n_in, rows, count, 1)

    def attention(name, Tq, Tk, count):
        for part, ta, tb, M, N, K in (("qk", 0, 1, Tq, Tk, dk), ("pv", 0, 0, Tq, dv, Tk), ("dv", 1, 0, Tk, dv, Tq),
                                      ("dp", 0, 1, Tq, Tk, dv), ("dq", 0, 0, Tq, dk, Tk), ("dk", 1, 0, Tk, dk, Tq)):
            add(name + "." + part, ta, tb, M, N, K, count, B * H)

    linear("enc.in_proj", Ns, D, qkv, Le)
    linear("enc.out_proj", Ns, H * dv, D, Le)
    linear("enc.linear1", Ns, D, Fd, Le)
    linear("enc.linear2", Ns, Fd, D, Le)
    linear("dec.in_proj", Nt, D, qkv, Ld)
    linear("dec.out_proj", Nt, H * dv, D, Ld)
    linear("dec.cross_q", Nt, D, H * dk, Ld)
    linear("dec.cross_kv", Ns, D, H * (dk + dv), Ld)
    linear("dec.cross_out", Nt, H * dv, D, Ld)
    linear("dec.linear1", Nt, D, Fd, Ld)
    linear("dec.linear2", Nt, Fd, D, Ld)
    linear("generator", Nt if Ld > 0 else Ns, D, V, 1)
    attention("enc.attn", S, S, Le)
    attention("dec.attn", T, T, Ld)
    attention("dec.cross_attn", T, S, Ld)
    return [(v[0], k[0], k[1], k[2], k[3], k[4], v[1], k[5]) for k, v in shapes.items()]


def run_sgemm(args):
    D, H, Fd, Le, Ld, V, B, S, T = size_of(args)
    shapes = step_shapes(D, H, Fd, Le, Ld, V, B, S, T)
    gen = torch.Generator().manual_seed(args.seed)

    def operands(ta, tb, M, N, K, batch):
        a = torch.rand((batch, K, M) if ta else (batch, M, K), generator=gen) * 2 - 1
        b = torch.rand((batch, N, K) if tb else (batch, K, N), generator=gen) * 2 - 1
        a = a.transpose(1, 2) if ta else a  # a transposed view: BLAS gets the transpose flag
        b = b.transpose(1, 2) if tb else b
        if batch == 1:
            return a[0], b[0], torch.empty(M, N)
        return a, b, torch.empty(batch, M, N)

    calls = []
    for name, ta, tb, M, N, K, count, batch in shapes:
        a, b, c = operands(ta, tb, M, N, K, batch)
        f = (lambda a=a, b=b, c=c: torch.mm(a, b, out=c)) if batch == 1 else \
            (lambda a=a, b=b, c=c: torch.bmm(a, b, out=c))
        calls.append((name, ta, tb, M, N, K, count, batch, f))
    for _ in range(args.warmup):
        for c in calls:
            c[-1]()
    ms = []
    for r in range(args.reps):
        total_flop = total_s = 0.0
        out = []
        for name, ta, tb, M, N, K, count, batch, f in calls:
            flop = 2.0 * M * N * K * batch
            iters, t0 = 0, time.perf_counter()
            while True:
                f()
                iters += 1
                el = time.perf_counter() - t0
                if el >= args.min_time and iters >= 3:
                    break
            per = el / iters
            total_flop += flop * count
            total_s += per * count
            out.append(dict(name=name, ta=ta, tb=tb, M=M, N=N, K=K, batch=batch, count=count, ms=1e3 * per,
                            gflops=flop / per * 1e-9))
        ms.append(1e3 * total_s)
        o = head(args)
        o.update(config=args.config, rep=r, shapes=out, flop=total_flop, ms=1e3 * total_s,
                 gflops=total_flop / total_s * 1e-9)
        emit(o)
    summary(args, ms, config=args.config)


# ------------------------------------------------------------------- long
def run_long(args):
    L, D, H, Fd, Le, V = args.len, args.d_model, args.heads, args.d_ff, args.layers, args.vocab
    torch.manual_seed(args.seed)
    model = Model(D, H, Fd, Le, 0, V, L)
    model.train()
    gen = torch.Generator().manual_seed(args.seed)
    src = random_tokens(gen, (1, L), V)
    tgt = random_tokens(gen, (1, L), V)
    rss_model = peak_rss_kb()
    flop = step_flop(D, H, Fd, Le, 0, V, 1, L, 0)

    def fwd_bwd():
        logits = model(src)
        loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=PAD, label_smoothing=0.1)
        loss.backward()  # gradients accumulate, as transformer.c's trainer_accumulate
        return loss.item()

    for _ in range(args.warmup):
        fwd_bwd()
    ms = []
    nparams = sum(p.numel() for p in model.parameters())
    for r in range(args.reps):
        t0 = time.perf_counter()
        loss = fwd_bwd()
        s = time.perf_counter() - t0
        ms.append(1e3 * s)
        o = head(args)
        o.update(len=L, rep=r, layers=Le, d_model=D, params=nparams, ms=1e3 * s, tokens_per_s=L / s, flop=flop,
                 gflops=flop / s * 1e-9, loss=loss, peak_rss_kb=peak_rss_kb())
        emit(o)
    summary(args, ms, len=L, flop=flop, rss_after_init_kb=rss_model)


# ------------------------------------------------------------------- blas
def run_blas(args):
    n = 1024
    a, b = torch.rand(n, n), torch.rand(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    iters, t0 = 0, time.perf_counter()
    while True:
        torch.mm(a, b, out=c)
        iters += 1
        el = time.perf_counter() - t0
        if el >= args.min_time and iters >= 2:
            break
    o = head(args)
    o.update(summary=True, mm=n, gflops=2.0 * n ** 3 * iters / el * 1e-9)
    o.update(blas_info())
    o.update(torch=torch.__version__, cpu_capability=cpu_capability(), peak_rss_kb=peak_rss_kb())
    emit(o)


# ------------------------------------------------------------------- main
def positive(s):
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s} is not a positive integer")
    return v


def nonneg(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s} is negative")
    return v


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("kind", choices=["train", "greedy", "sgemm", "long", "blas"])
    p.add_argument("--config", choices=sorted(SIZES), default="small", help="model and batch (train, greedy, sgemm)")
    p.add_argument("--batch", type=positive, default=0, help="rows (0: the config's)")
    p.add_argument("--src-len", type=positive, default=0, help="source tokens per row (0: the config's)")
    p.add_argument("--tgt-len", type=positive, default=0, help="target tokens per row, train and sgemm (0: the config's)")
    p.add_argument("--out-len", type=positive, default=0, help="greedy: output tokens (0: the config's target length)")
    p.add_argument("--method", choices=["prefix", "kv"], default="prefix", help="greedy: decoding loop")
    p.add_argument("--check", action="store_true", help="greedy: run both loops once and report their agreement")
    p.add_argument("--reps", type=positive, default=5, help="timed repetitions")
    p.add_argument("--warmup", type=nonneg, default=None, help="untimed runs first (default 2 for train, else 1)")
    p.add_argument("--threads", type=positive, default=0, help="torch.set_num_threads (0: OMP_NUM_THREADS, else torch's default)")
    p.add_argument("--seed", type=nonneg, default=1, help="seed of the weights, tokens and dropout")
    p.add_argument("--min-time", type=float, default=0.2, help="sgemm, blas: time each shape at least this long (s)")
    p.add_argument("--len", type=positive, default=4096, help="long: sequence length")
    p.add_argument("--layers", type=positive, default=6, help="long: encoder layers")
    p.add_argument("--d-model", type=positive, default=512, help="long: model width")
    p.add_argument("--heads", type=positive, default=8, help="long: attention heads")
    p.add_argument("--d-ff", type=positive, default=2048, help="long: feed-forward width")
    p.add_argument("--vocab", type=positive, default=1000, help="long: vocabulary")
    args = p.parse_args()
    if args.warmup is None:
        args.warmup = 2 if args.kind == "train" else 1
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    {"train": run_train, "greedy": run_greedy, "sgemm": run_sgemm, "long": run_long, "blas": run_blas}[args.kind](args)


if __name__ == "__main__":
    main()
