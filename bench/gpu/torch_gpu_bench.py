#!/usr/bin/env python3
"""PyTorch's side of transformer.c's GPU benchmark (see bench/gpu/README.md).

Measurements (--what):
  matmul  bf16 GEMM ceiling: torch.mm 8192^3 and the base model's logits GEMMs
  train   one full training step of the paper's model built from torch.nn
          (--config base|big, --mode eager|compile)
  beam    beam-search decoding with a KV-cached decoder written with plain
          tensor ops over the torch.nn weights (--dtype bf16|fp32)
  greedy  the same decoder, beam 1 (argmax)
  all     all of the above, in one process (about 3-4 minutes on an H100)

Each result is ONE JSON object on one line of stdout (and appended to --out);
progress goes to stderr.
"""
import argparse
import gc
import json
import math
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover
    sys.exit(f"torch_gpu_bench: cannot import torch ({e})")

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_WORD = 3  # random token ids are drawn from [3, vocab): no pad/bos/eos

CONFIGS = {
    # the paper's base and big models (Vaswani et al. 2017, table 3), shared vocabulary of 37000
    "base": dict(d_model=512, heads=8, d_ff=2048, enc_layers=6, dec_layers=6, dropout=0.1, vocab=37000),
    "big": dict(d_model=1024, heads=16, d_ff=4096, enc_layers=6, dec_layers=6, dropout=0.3, vocab=37000),
}
LABEL_SMOOTHING = 0.1
LN_EPS = 1e-5
MAX_POSITIONS = 1024

# default step counts: (warm-up steps, steps per timed window, windows)
TRAIN_STEPS = {("base", "eager"): (5, 10, 5), ("base", "compile"): (5, 10, 5),
               ("big", "eager"): (3, 5, 5), ("big", "compile"): (3, 5, 5)}


# ------------------------------------------------------------------ utilities
def log(msg):
    print(f"[torch_gpu_bench] {msg}", file=sys.stderr, flush=True)


def die(msg):
    print(f"torch_gpu_bench: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


class Emitter:
    def __init__(self, args, device):
        self.out = args.out
        self.common = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(device),
                       "cuda": torch.version.cuda}

    def __call__(self, bench, side, config, **numbers):
        obj = {"bench": bench, "side": side, "config": config}
        obj.update(self.common)
        obj.update(numbers)
        line = json.dumps(obj)
        print(line, flush=True)
        if self.out:
            with open(self.out, "a") as f:
                f.write(line + "\n")
        return obj


def free_memory():
    gc.collect()
    torch.cuda.empty_cache()


OOM_ERRORS = tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError})


# ------------------------------------------------------------------ 1. matmul
def time_mm(device, m, k, n, reps, warmup, b_transposed=False, sets=3, dtype=torch.bfloat16):
    """Median time (ms) of torch.mm(A[m,k], B[k,n]) over `reps` launches, each timed
    with its own pair of CUDA events, rotating over `sets` input sets (random data,
    never zeros). b_transposed: B is stored [n,k] and passed as a transposed view
    (the layout of F.linear's weight)."""
    g = torch.Generator(device=device)
    g.manual_seed(1234 + m + 7 * k + 13 * n)
    A = [torch.randn(m, k, device=device, dtype=dtype, generator=g) for _ in range(sets)]
    if b_transposed:
        B = [torch.randn(n, k, device=device, dtype=dtype, generator=g).t() for _ in range(sets)]
    else:
        B = [torch.randn(k, n, device=device, dtype=dtype, generator=g) for _ in range(sets)]
    for i in range(warmup):
        torch.mm(A[i % sets], B[i % sets])
    torch.cuda.synchronize(device)
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for i, (s, e) in enumerate(ev):
        s.record()
        torch.mm(A[i % sets], B[i % sets])
        e.record()
    torch.cuda.synchronize(device)
    ms = [s.elapsed_time(e) for s, e in ev]
    del A, B
    return statistics.median(ms), min(ms), ms


def measure_peak(device, reps=20, warmup=5):
    med, _, _ = time_mm(device, 8192, 8192, 8192, reps, warmup)
    return 2.0 * 8192 ** 3 / (med * 1e-3) / 1e12, med


def bench_matmul(args, device, emit):
    reps, warmup = max(20, args.reps or 30), 10
    tokens = 800 * 32
    d = CONFIGS["base"]["d_model"]
    cases = [("8192x8192x8192", 8192, 8192, 8192, False)]
    for V in (37000, 37056):
        # forward logits = X[tokens,d] @ E[V,d]^T; backward: dX = dY[tokens,V] @ E[V,d];
        # dE = dY^T[V,tokens] @ X[tokens,d]
        cases.append((f"logits_fwd_{tokens}x{d}x{V}", tokens, d, V, True))
        cases.append((f"logits_dgrad_{tokens}x{V}x{d}", tokens, V, d, False))
        cases.append((f"logits_wgrad_{V}x{tokens}x{d}", V, tokens, d, False))
    log(f"matmul: {len(cases)} shapes, {warmup} warm-up + {reps} timed reps each, 3 input sets")
    peak = None
    for name, m, k, n, bt in cases:
        med, mn, _ = time_mm(device, m, k, n, reps, warmup, b_transposed=bt)
        tf = 2.0 * m * n * k / (med * 1e-3) / 1e12
        if peak is None:
            peak = tf
        log(f"  {name:34s} m={m} k={k} n={n}: {med:.3f} ms median, {tf:.1f} TFLOP/s")
        emit("matmul", "torch-cublas-bf16", name, m=m, k=k, n=n, b_layout="nk" if bt else "kn",
             dtype="bf16", ms_median=med, ms_min=mn, tflops=tf, tflops_best=2.0 * m * n * k / (mn * 1e-3) / 1e12,
             reps=reps, warmup=warmup, input_sets=3)
        free_memory()
    return peak


# ------------------------------------------------------------------ the model
def sinusoid(P, D):
    t = torch.zeros(P, D, dtype=torch.float64)
    pos = torch.arange(P, dtype=torch.float64)[:, None]
    i = torch.arange(0, D, 2, dtype=torch.float64)
    ang = pos / torch.pow(10000.0, i / D)
    t[:, 0::2] = torch.sin(ang)
    t[:, 1::2] = torch.cos(ang)[:, : D // 2]
    return t.float()


class PaperTransformer(nn.Module):
    """The paper's encoder-decoder from torch.nn's Transformer stacks, laid out as
    tests/ref/make_model.py does (same parameter names as our checkpoints):
    post-LN layers (norm_first=False), ReLU, no final LayerNorm on either stack
    (nn.Transformer's own constructor always adds one, so its two stacks are built
    directly), sinusoidal positions, one embedding shared by source, target and
    the pre-softmax projection, embeddings scaled by sqrt(d_model), batch_first.

    Dropout, placement "paper" (the default, as the paper and transformer.c's
    defaults): on each residual branch before the addition and on embeddings +
    positions; none on attention probabilities or the FFN's inner activation.
    Placement "torch": torch.nn's own, which adds both of those."""

    def __init__(self, cfg, dropout_placement="paper"):
        super().__init__()
        D, V = cfg["d_model"], cfg["vocab"]
        self.cfg = cfg
        self.d_model, self.vocab, self.heads = D, V, cfg["heads"]
        self.scale = math.sqrt(D)
        self.src_embed = nn.Embedding(V, D)
        self.tgt_embed = self.src_embed
        kw = dict(d_model=D, nhead=cfg["heads"], dim_feedforward=cfg["d_ff"], dropout=cfg["dropout"],
                  activation="relu", layer_norm_eps=LN_EPS, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**kw), cfg["enc_layers"], norm=None,
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**kw), cfg["dec_layers"], norm=None)
        self.generator = nn.Linear(D, V, bias=False)
        self.generator.weight = self.src_embed.weight
        self.embed_dropout = nn.Dropout(cfg["dropout"])
        self.register_buffer("pe", sinusoid(MAX_POSITIONS, D), persistent=False)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(MAX_POSITIONS),
                             persistent=False)
        if dropout_placement == "paper":
            for layer in list(self.encoder.layers) + list(self.decoder.layers):
                layer.self_attn.dropout = 0.0          # attention probabilities
                layer.dropout = nn.Identity()           # FFN inner activation
                if hasattr(layer, "multihead_attn"):
                    layer.multihead_attn.dropout = 0.0
        elif dropout_placement != "torch":
            raise ValueError(dropout_placement)
        with torch.no_grad():  # N(0, 1/d): embeddings * sqrt(d) have unit variance, logits stay O(1)
            self.src_embed.weight.normal_(0.0, D ** -0.5)

    def embed(self, ids):
        L = ids.shape[1]
        return self.embed_dropout(self.src_embed(ids) * self.scale + self.pe[:L])

    def forward(self, src, tgt_in):
        T = tgt_in.shape[1]
        mem = self.encoder(self.embed(src))
        h = self.decoder(self.embed(tgt_in), mem, tgt_mask=self.causal[:T, :T], tgt_is_causal=True)
        return self.generator(h)


def count_params(module):
    return sum(p.numel() for p in module.parameters())


def train_flops(cfg, enc_params, dec_params, batch, S, T):
    """Model FLOPs of one training step (forward + backward), see README.md."""
    D, V = cfg["d_model"], cfg["vocab"]
    src_tok, tgt_tok = batch * S, batch * T
    f_params = 6 * (enc_params * src_tok + dec_params * tgt_tok)
    f_logits = 6 * D * V * tgt_tok
    f_attn = 12 * D * batch * (cfg["enc_layers"] * S * S + cfg["dec_layers"] * T * T + cfg["dec_layers"] * T * S)
    return f_params + f_logits + f_attn, f_params, f_logits, f_attn


# ------------------------------------------------------------------ 2. train
def train_once(args, device, config, mode, batch, S, T, warmup, steps, windows, peak_tflops, emit, note):
    cfg = CONFIGS[config]
    V = cfg["vocab"]
    torch.manual_seed(args.seed)
    torch.cuda.reset_peak_memory_stats(device)
    model = PaperTransformer(cfg, args.dropout_placement).to(device)
    model.train()
    g = torch.Generator(device=device)
    g.manual_seed(args.seed)
    src = torch.randint(FIRST_WORD, V, (batch, S), device=device, generator=g)
    tgt = torch.randint(FIRST_WORD, V, (batch, T + 1), device=device, generator=g)
    tgt[:, 0] = BOS_ID
    tgt_in, tgt_out = tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()

    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9, fused=True)

    def forward_loss(src, tgt_in, tgt_out):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logits = model(src, tgt_in)
            return F.cross_entropy(logits.reshape(-1, V), tgt_out.reshape(-1), label_smoothing=LABEL_SMOOTHING)

    if mode == "compile":
        if args.compile_scope == "step":
            loss_fn = torch.compile(forward_loss)
        else:  # only the module is compiled; the loss runs eagerly
            cmodel = torch.compile(model)

            def loss_fn(src, tgt_in, tgt_out):
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    logits = cmodel(src, tgt_in)
                    return F.cross_entropy(logits.reshape(-1, V), tgt_out.reshape(-1),
                                           label_smoothing=LABEL_SMOOTHING)
    else:
        loss_fn = forward_loss

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(src, tgt_in, tgt_out)
        loss.backward()
        opt.step()
        return loss

    compile_s = None
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    loss = step()
    torch.cuda.synchronize(device)
    first_s = time.perf_counter() - t0
    if mode == "compile":
        compile_s = first_s
        log(f"  compile (first step, forward + backward compiled): {compile_s:.1f} s")
    first_loss = loss.item()
    for _ in range(max(0, warmup - 1)):
        step()
    torch.cuda.synchronize(device)

    window_ms = []
    for w in range(windows):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        s.record()
        for _ in range(steps):
            loss = step()
        e.record()
        torch.cuda.synchronize(device)
        window_ms.append(s.elapsed_time(e) / steps)
    last_loss = loss.item()
    if not math.isfinite(last_loss):
        die(f"train {config}/{mode}: loss is {last_loss} after the timed steps")
    step_ms = statistics.median(window_ms)

    D = cfg["d_model"]
    enc_params, dec_params = count_params(model.encoder), count_params(model.decoder)
    emb_params = model.src_embed.weight.numel()
    total_params = count_params(model)
    flops, f_params, f_logits, f_attn = train_flops(cfg, enc_params, dec_params, batch, S, T)
    tgt_tokens = batch * T
    model_tflops = flops / (step_ms * 1e-3) / 1e12
    res = dict(
        mode=mode, dtype="bf16-autocast", batch=batch, src_len=S, tgt_len=T,
        src_tokens=batch * S, tgt_tokens=tgt_tokens,
        step_ms=step_ms, step_ms_min=min(window_ms), step_ms_windows=window_ms,
        tgt_tokens_per_s=tgt_tokens / (step_ms * 1e-3),
        flops_per_step=flops, flops_params=f_params, flops_logits=f_logits, flops_attention=f_attn,
        model_tflops=model_tflops, peak_tflops=peak_tflops, mfu=model_tflops / peak_tflops,
        max_memory_allocated=torch.cuda.max_memory_allocated(device),
        max_memory_allocated_gib=torch.cuda.max_memory_allocated(device) / 2 ** 30,
        params_total=total_params, params_embedding=emb_params, params_encoder=enc_params,
        params_decoder=dec_params, params_non_embedding=enc_params + dec_params,
        d_model=D, heads=cfg["heads"], d_ff=cfg["d_ff"], layers=[cfg["enc_layers"], cfg["dec_layers"]],
        vocab=V, dropout=cfg["dropout"], dropout_placement=args.dropout_placement,
        label_smoothing=LABEL_SMOOTHING, optimizer="Adam(fused, betas=(0.9,0.98), eps=1e-9)",
        warmup_steps=warmup, steps_per_window=steps, windows=windows, timed_steps=steps * windows,
        loss_first=first_loss, loss_last=last_loss,
        compile_s=compile_s, compile_scope=(args.compile_scope if mode == "compile" else None),
        batch_reduced=note is not None, note=note,
    )
    log(f"  {config}/{mode}: {step_ms:.2f} ms/step (median of {windows} windows x {steps} steps), "
        f"{res['tgt_tokens_per_s']:.0f} tgt tok/s, {flops / 1e12:.3f} TFLOP/step, {model_tflops:.1f} TFLOP/s, "
        f"MFU {100 * res['mfu']:.1f}% of {peak_tflops:.0f}, peak mem {res['max_memory_allocated_gib']:.1f} GiB")
    side = f"torch-{mode}-bf16"
    return emit("train", side, config, **res)


def bench_train(args, device, emit, config, mode, peak_tflops):
    dw, ds, dn = TRAIN_STEPS[(config, mode)]
    warmup = args.warmup if args.warmup is not None else dw
    steps = args.steps if args.steps is not None else ds
    windows = args.windows if args.windows is not None else dn
    S = args.src_len or 32
    T = args.tgt_len or 32
    batches = [args.batch] if args.batch else [800, 400]
    log(f"train {config}/{mode}: batch {batches[0]} x ({S} src + {T} tgt), {warmup} warm-up steps, "
        f"{windows} windows x {steps} steps timed")
    note = None
    for i, batch in enumerate(batches):
        failed = None
        try:
            return train_once(args, device, config, mode, batch, S, T, warmup, steps, windows, peak_tflops, emit,
                              note)
        except OOM_ERRORS as e:
            failed = str(e).splitlines()[0] if str(e) else "out of memory"
        # out of the except block: the traceback (and the tensors its frames hold) is gone
        free_memory()
        if mode == "compile":
            torch._dynamo.reset()
        if i + 1 < len(batches):
            note = (f"batch {batch} x {S}+{T} did not fit in GPU memory ({failed}); "
                    f"reduced to {batches[i + 1]} x {S}+{T}")
            log(f"  {note}")
        else:
            die(f"train {config}/{mode}: batch {batch} does not fit in GPU memory: {failed}")


# ------------------------------------------------------------------ 3. decoding
class CachedDecoder:
    """Incremental decoding over the weights of a PaperTransformer, with plain tensor
    ops: self-attention K/V cached per layer (time-major [T, N, d] buffers, two of
    them per layer, ping-ponged so that reordering the beams is one index_select
    into the other buffer), cross-attention K/V computed once per sentence."""

    def __init__(self, model):
        self.m = model
        self.D, self.H = model.d_model, model.heads
        self.dh = self.D // self.H
        self.E = model.src_embed.weight
        self.layers = list(model.decoder.layers)
        D = self.D
        # The cross-attention query projection as its own leaf tensors (a slice of in_proj_weight is a
        # view, which autocast would cast to bf16 again at every step; leaf parameters are cast once).
        self.cq = [(nn.Parameter(L.multihead_attn.in_proj_weight[:D].detach().clone()),
                    nn.Parameter(L.multihead_attn.in_proj_bias[:D].detach().clone())) for L in self.layers]

    def encode(self, src, beam, cache_dtype, out_len):
        m, D, H, dh = self.m, self.D, self.H, self.dh
        B, S = src.shape
        mem = m.encoder(m.src_embed(src) * m.scale + m.pe[:S])  # eval: no dropout
        self.N = N = B * beam
        self.ck, self.cv = [], []
        for L in self.layers:
            ca = L.multihead_attn
            kv = F.linear(mem, ca.in_proj_weight[D:], ca.in_proj_bias[D:])  # [B, S, 2D]
            k, v = kv.split(D, dim=-1)
            k = k.reshape(B, S, H, dh).transpose(1, 2).repeat_interleave(beam, dim=0)  # [N, H, S, dh]
            v = v.reshape(B, S, H, dh).transpose(1, 2).repeat_interleave(beam, dim=0)
            self.ck.append(k.contiguous())
            self.cv.append(v.contiguous())
        dev = src.device
        nl = len(self.layers)
        self.kc = [[torch.empty(out_len, N, D, device=dev, dtype=cache_dtype) for _ in range(2)] for _ in range(nl)]
        self.vc = [[torch.empty(out_len, N, D, device=dev, dtype=cache_dtype) for _ in range(2)] for _ in range(nl)]
        self.cur = 0

    def step(self, tok, t):
        """tok [N] (the tokens at position t) -> logits [N, V] for position t+1."""
        m, D, H, dh, N = self.m, self.D, self.H, self.dh, self.N
        x = F.embedding(tok, self.E) * m.scale + m.pe[t]
        c = self.cur
        for li, L in enumerate(self.layers):
            sa = L.self_attn
            qkv = F.linear(x, sa.in_proj_weight, sa.in_proj_bias)  # [N, 3D]
            q, k, v = qkv.split(D, dim=-1)
            kbuf, vbuf = self.kc[li][c], self.vc[li][c]
            kbuf[t].copy_(k)
            vbuf[t].copy_(v)
            K = kbuf[: t + 1].view(t + 1, N, H, dh).permute(1, 2, 0, 3)  # [N, H, t+1, dh]
            Vv = vbuf[: t + 1].view(t + 1, N, H, dh).permute(1, 2, 0, 3)
            o = F.scaled_dot_product_attention(q.reshape(N, H, 1, dh), K, Vv)  # all cached positions visible
            o = F.linear(o.reshape(N, D), sa.out_proj.weight, sa.out_proj.bias)
            x = F.layer_norm(x + o, (D,), L.norm1.weight, L.norm1.bias, L.norm1.eps)
            ca = L.multihead_attn
            q = F.linear(x, *self.cq[li])
            o = F.scaled_dot_product_attention(q.reshape(N, H, 1, dh), self.ck[li], self.cv[li])
            o = F.linear(o.reshape(N, D), ca.out_proj.weight, ca.out_proj.bias)
            x = F.layer_norm(x + o, (D,), L.norm2.weight, L.norm2.bias, L.norm2.eps)
            h = F.relu(F.linear(x, L.linear1.weight, L.linear1.bias))
            x = F.layer_norm(x + F.linear(h, L.linear2.weight, L.linear2.bias), (D,), L.norm3.weight,
                             L.norm3.bias, L.norm3.eps)
        return F.linear(x, self.E)

    def reorder(self, origin, t):
        """Beams now descend from rows `origin` [N]: gather cached positions 0..t."""
        c, n = self.cur, 1 - self.cur
        for li in range(len(self.layers)):
            torch.index_select(self.kc[li][c][: t + 1], 1, origin, out=self.kc[li][n][: t + 1])
            torch.index_select(self.vc[li][c][: t + 1], 1, origin, out=self.vc[li][n][: t + 1])
        self.cur = n


def beam_decode(dec, src, beam, out_len, cache_dtype, collect_logits=False):
    """Fixed-length beam search (no EOS stopping). Returns (tokens [B, beam, out_len],
    scores [B, beam]) best beam first, and, with collect_logits, each step's logits."""
    B = src.shape[0]
    N = B * beam
    dev = src.device
    dec.encode(src, beam, cache_dtype, out_len)
    V = dec.E.shape[0]
    tok = torch.full((N,), BOS_ID, device=dev, dtype=torch.long)
    hist = torch.empty(out_len, N, device=dev, dtype=torch.long)
    hist2 = torch.empty_like(hist)
    scores = torch.zeros(B, beam, device=dev, dtype=torch.float32)
    if beam > 1:
        scores[:, 1:] = float("-inf")  # all beams start equal: expand only the first
    row0 = (torch.arange(B, device=dev) * beam)[:, None]
    logits_seen = []
    for t in range(out_len):
        logits = dec.step(tok, t)
        if collect_logits:
            logits_seen.append(logits.float())
        if beam == 1:
            tok = logits.argmax(dim=-1)
            hist[t] = tok
            continue
        logp = F.log_softmax(logits.float(), dim=-1)  # [N, V]
        cand = (scores.view(N, 1) + logp).view(B, beam * V)
        scores, idx = cand.topk(beam, dim=1)  # [B, beam], sorted
        origin = (row0 + torch.div(idx, V, rounding_mode="floor")).view(N)
        tok = (idx % V).view(N)
        if t + 1 < out_len:
            dec.reorder(origin, t)
        if t > 0:
            torch.index_select(hist[:t], 1, origin, out=hist2[:t])
            hist, hist2 = hist2, hist
        hist[t] = tok
    if beam == 1:  # greedy: the score is the sum of log-probs of the argmax tokens (check path only)
        scores = None
    toks = hist.t().reshape(B, beam, out_len)
    return toks, scores, logits_seen


def check_decoder(model, device, seed):
    """Checks the cached decoder in fp32 against the full torch.nn model: greedy
    logits at every position, and each beam hypothesis's score against the sum
    of the full model's log-probs of its tokens (which tests the cache reordering).
    Returns (max relative logits error, max score error)."""
    g = torch.Generator(device=device)
    g.manual_seed(seed + 99)
    V = model.vocab
    B, S, T, K = 3, 9, 7, 4
    src = torch.randint(FIRST_WORD, V, (B, S), device=device, generator=g)
    dec = CachedDecoder(model)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        toks, _, seen = beam_decode(dec, src, 1, T, torch.float32, collect_logits=True)
        tgt_in = torch.cat([torch.full((B, 1), BOS_ID, device=device, dtype=torch.long), toks[:, 0, :-1]], dim=1)
        ref = model(src, tgt_in)  # [B, T, V]
        got = torch.stack(seen, dim=1)  # [B, T, V]
        rel = ((got - ref).norm() / ref.norm()).item()
        btoks, bscores, _ = beam_decode(dec, src, K, T, torch.float32)
        hyp = btoks.reshape(B * K, T)
        tgt_in = torch.cat([torch.full((B * K, 1), BOS_ID, device=device, dtype=torch.long), hyp[:, :-1]], dim=1)
        ref_lp = F.log_softmax(model(src.repeat_interleave(K, dim=0), tgt_in).float(), dim=-1)
        ref_score = ref_lp.gather(2, hyp[:, :, None]).sum(dim=(1, 2)).view(B, K)
        score_err = (ref_score - bscores).abs().max().item()
        sorted_ok = bool((bscores[:, :-1] >= bscores[:, 1:]).all().item())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    if not (rel < 1e-4 and score_err < 1e-3 and sorted_ok):
        die(f"cached decoder disagrees with the torch.nn model: logits rel err {rel:.3g}, "
            f"beam score err {score_err:.3g}, beams sorted {sorted_ok}")
    return rel, score_err


def bench_decode(args, device, emit, what, dtype):
    config = args.config or "base"
    cfg = CONFIGS[config]
    beam = 1 if what == "greedy" else args.beam
    B, S, T = args.batch or 64, args.src_len or 32, args.out_len
    reps = args.reps or 10
    warmup = 2
    torch.manual_seed(args.seed)
    model = PaperTransformer(cfg, args.dropout_placement).to(device).eval()
    with torch.inference_mode():
        rel, score_err = check_decoder(model, device, args.seed)
        log(f"{what} {config} {dtype}: cached decoder check vs torch.nn (fp32): logits rel err {rel:.2e}, "
            f"beam score err {score_err:.2e}")
        g = torch.Generator(device=device)
        g.manual_seed(args.seed)
        src = torch.randint(FIRST_WORD, cfg["vocab"], (B, S), device=device, generator=g)
        dec = CachedDecoder(model)
        cache_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        ac = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=(dtype == "bf16"))
        log(f"{what} {config} {dtype}: batch {B}, beam {beam}, src {S}, out {T} (fixed), "
            f"{warmup} warm-up + {reps} timed decodes")
        ms = []
        with ac:  # one autocast region: the bf16 copies of the weights are cast once and cached
            for i in range(warmup + reps):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(device)
                s.record()
                toks, _, _ = beam_decode(dec, src, beam, T, cache_dtype)
                e.record()
                torch.cuda.synchronize(device)
                if i >= warmup:
                    ms.append(s.elapsed_time(e))
        assert toks.shape == (B, beam, T)
    med = statistics.median(ms)
    side = f"torch-kvcache-{dtype}"
    res = dict(batch=B, beam=beam, src_len=S, out_len=T, dtype=("bf16-autocast" if dtype == "bf16" else "fp32"),
               tf32=bool(torch.backends.cuda.matmul.allow_tf32),
               ms_per_batch=med, ms_per_batch_min=min(ms), reps=reps, warmup=warmup,
               sentences_per_s=B / (med * 1e-3), out_tokens_per_s=B * T / (med * 1e-3),
               hyp_tokens_per_s=B * beam * T / (med * 1e-3),
               check_logits_rel_err=rel, check_beam_score_err=score_err,
               timed="encoder + cross K/V + all decode steps + beam bookkeeping, per batch")
    log(f"  {what} {config} {dtype}: {med:.2f} ms/batch, {res['sentences_per_s']:.0f} sentences/s, "
        f"{res['out_tokens_per_s']:.0f} out tokens/s")
    obj = emit(what, side, config, **res)
    del model, dec, src
    free_memory()
    return obj


# ------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description="PyTorch side of transformer.c's GPU benchmark (JSON lines on stdout)")
    ap.add_argument("--what", required=True, choices=["matmul", "train", "beam", "greedy", "all"])
    ap.add_argument("--config", choices=sorted(CONFIGS), help="model (train: required unless --what all; "
                    "beam/greedy: default base)")
    ap.add_argument("--mode", choices=["eager", "compile"], help="train: eager or torch.compile (default eager)")
    ap.add_argument("--compile-scope", choices=["step", "model"], default="step",
                    help="compile mode: 'step' compiles model forward + loss together (default), "
                         "'model' compiles only the module")
    ap.add_argument("--steps", type=int, help="train: steps per timed window")
    ap.add_argument("--warmup", type=int, help="train: warm-up steps (the first one compiles in compile mode)")
    ap.add_argument("--windows", type=int, help="train: timed windows (the median window is reported)")
    ap.add_argument("--batch", type=int, help="train: sentence pairs (default 800, 400 if 800 does not fit); "
                    "beam/greedy: sentences (default 64)")
    ap.add_argument("--src-len", type=int, help="source tokens per sentence (default 32)")
    ap.add_argument("--tgt-len", type=int, help="train: target tokens per sentence (default 32)")
    ap.add_argument("--out-len", type=int, default=32, help="beam/greedy: output tokens (fixed, default 32)")
    ap.add_argument("--beam", type=int, default=4, help="beam: beam size (default 4)")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                    help="beam/greedy: bf16 autocast or fp32 (default bf16)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 matrix products (default off)")
    ap.add_argument("--reps", type=int, help="matmul: timed reps per shape (>= 20, default 30); "
                    "beam/greedy: timed decodes (default 10)")
    ap.add_argument("--peak-tflops", type=float,
                    help="train: peak for model FLOP utilisation (default: measured bf16 8192^3 torch.mm)")
    ap.add_argument("--dropout-placement", choices=["paper", "torch"], default="paper",
                    help="paper: residual branches + embeddings only (default, as transformer.c); "
                         "torch: torch.nn's (also attention probabilities and FFN activation)")
    ap.add_argument("--lr", type=float, default=1e-4, help="train: Adam learning rate (constant)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="also append the JSON lines to this file")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        die(f"CUDA is not available to this torch ({torch.__version__}, built for CUDA {torch.version.cuda}): "
            "this benchmark needs an NVIDIA GPU")
    device = torch.device(args.device)
    if device.type != "cuda":
        die(f"--device must be a CUDA device, not {args.device!r}")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    if args.reps is not None and args.what == "matmul" and args.reps < 20:
        die("--reps must be >= 20 for matmul")
    if args.what == "train" and not args.config:
        die("--what train needs --config base|big")
    if args.what in ("beam", "greedy") and args.config not in (None, "base"):
        log(f"note: decoding the {args.config} model")
    emit = Emitter(args, device)
    log(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.get_device_name(device)}, "
        f"{torch.cuda.get_device_properties(device).multi_processor_count} SMs")
    t_start = time.perf_counter()

    def peak():
        if args.peak_tflops:
            return args.peak_tflops
        p, ms = measure_peak(device)
        free_memory()
        log(f"peak for MFU: bf16 8192^3 torch.mm {ms:.3f} ms -> {p:.1f} TFLOP/s (override with --peak-tflops)")
        return p

    if args.what == "matmul":
        bench_matmul(args, device, emit)
    elif args.what == "train":
        bench_train(args, device, emit, args.config, args.mode or "eager", peak())
    elif args.what in ("beam", "greedy"):
        bench_decode(args, device, emit, args.what, args.dtype)
    else:  # all
        p = args.peak_tflops or bench_matmul(args, device, emit)
        configs = [args.config] if args.config else ["base", "big"]
        modes = [args.mode] if args.mode else ["eager", "compile"]
        for c in configs:
            for mo in modes:
                bench_train(args, device, emit, c, mo, p)
                free_memory()
                torch._dynamo.reset()
        for what in ("beam", "greedy"):
            for dt in ("bf16", "fp32"):
                args.config = "base"
                bench_decode(args, device, emit, what, dt)
    log(f"done in {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
