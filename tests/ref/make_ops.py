#!/usr/bin/env python3
"""make_ops.py: PyTorch reference tensors for tests/test_ref_ops.c.

Usage: make_ops.py OUT_DIR   (tests/ref/generate.sh runs every make_*.py so)

For each op case it writes the inputs, the upstream gradient `dout` and the
outputs and gradients PyTorch computes in float32 (autograd for the backward).
Format, chosen to need nothing on the C side:
  OUT_DIR/ops_<name>.bin   raw little-endian data, C order
  OUT_DIR/ops_index.txt    first line "tfm-ops-ref 1"; then one line per tensor:
                           <name> <dtype: f32|i32|u8> <shape: d0,d1,...> <file>
The index is written last (to a temporary name, then renamed), so a run that
fails half way leaves no index that points at missing files.

Dropout cases reproduce the library's counter-based RNG (src/core/rng.h) in
numpy, so the mask is the same one the C code draws.

It does not test anything itself; the C test compares.
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

OUT = sys.argv[1] if len(sys.argv) > 1 else "refs"
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(20240601)
torch.set_num_threads(1)  # deterministic sums
index = []

DTYPES = {"f32": "<f4", "i32": "<i4", "u8": "u1"}


def save(name, t, dtype="f32"):
    a = t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)
    a = np.ascontiguousarray(a.astype(DTYPES[dtype]))
    if a.ndim == 0:
        a = a.reshape(1)
    fn = "ops_%s.bin" % name
    a.tofile(os.path.join(OUT, fn))
    index.append("%s %s %s %s" % (name, dtype, ",".join(str(s) for s in a.shape), fn))


def randn(*shape, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float32) * scale).requires_grad_(True)


# ------------------------------------------------------------------- the RNG
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rng_uniform(seed, stream, n):
    """tfm_rng_uniform(seed, stream, i) for i in [0, n), as float32."""
    with np.errstate(over="ignore"):
        z = mix64(np.array([seed], dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(stream + 1))
        idx = np.arange(n, dtype=np.uint64)
        u = mix64(z ^ (idx * np.uint64(0xD1B54A32D192ED03) + np.uint64(0x8CB92BA72F3D8DD7)))
    return (u >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def keep_mask(p, seed, stream, n):
    """keep(i) = uniform >= p (float compare, as in activation.c), and the scale 1/(1-p)."""
    keep = rng_uniform(seed, stream, n) >= np.float32(p)
    scale = np.float32(1.0 / (1.0 - float(np.float32(p))))
    return torch.from_numpy(keep.astype(np.float32)), scale


# ------------------------------------------------------------------ linear
def case_linear():
    N, I, O = 3 * 7, 37, 29
    x, w, b = randn(N, I), randn(O, I, scale=0.2), randn(O)
    dout = torch.randn(N, O)
    out = F.linear(x, w, b)
    out.backward(dout)
    for k, t in [("in", x), ("w", w), ("b", b), ("dout", dout), ("out", out), ("din", x.grad),
                 ("dw", w.grad), ("db", b.grad)]:
        save("linear." + k, t)


# ----------------------------------------------------- embedding, positions
def case_embedding():
    V, D, N = 23, 19, 2 * 9
    ids = torch.randint(0, V, (N,), dtype=torch.int32)
    ids[5] = ids[0]
    ids[11] = ids[0]  # repeated ids: their gradients add
    scale = np.float32(math.sqrt(D))
    table = randn(V, D)
    out = F.embedding(ids.long(), table) * torch.tensor(scale)
    dout = torch.randn(N, D)
    out.backward(dout)
    save("emb.ids", ids, "i32")
    save("emb.scale", np.array([scale]))
    for k, t in [("table", table), ("dout", dout), ("out", out), ("dtable", table.grad)]:
        save("emb." + k, t)

    # learned positions: x + table[pos]
    P = 11
    pos = torch.tensor([t for t in range(9)] * 2, dtype=torch.int32)
    pos[-1] = P - 1
    x = torch.randn(N, D)
    ptable = randn(P, D)
    out = x + F.embedding(pos.long(), ptable)
    out.backward(dout)
    save("pos.pos", pos, "i32")
    for k, t in [("x", x), ("table", ptable), ("dout", dout), ("out", out), ("dtable", ptable.grad)]:
        save("pos." + k, t)


def case_sinusoidal():
    # The paper, 3.5: PE(p, 2i) = sin(p / 10000^(2i/D)), PE(p, 2i+1) = cos(same); odd D.
    P, D = 50, 33
    p = torch.arange(P, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, D, 2, dtype=torch.float64)
    angle = p / torch.pow(torch.tensor(10000.0, dtype=torch.float64), two_i / D)
    pe = torch.zeros(P, D, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)[:, : D // 2]
    save("sin.table", pe.float())


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def case_rope():
    B, T, H, dk, theta = 2, 6, 3, 8, 10000.0
    N = B * T
    pos = torch.tensor([0, 1, 2, 3, 4, 5, 7, 19, 100, 333, 1000, 4095], dtype=torch.int32)
    x = randn(N, H, dk)
    # Angles in float64 (the C code does too): at position 4095 a float32 angle is off by ~2e-4.
    inv_freq = 1.0 / (theta ** (torch.arange(0, dk, 2, dtype=torch.float64) / dk))
    ang = pos.double()[:, None] * inv_freq[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos().float()[:, None, :], emb.sin().float()[:, None, :]
    out = x * cos + rotate_half(x) * sin
    dout = torch.randn(N, H, dk)
    out.backward(dout)
    save("rope.pos", pos, "i32")
    save("rope.theta", np.array([theta]))
    for k, t in [("x", x), ("dout", dout), ("out", out), ("dx", x.grad)]:
        save("rope." + k, t.reshape(N, H * dk))


# --------------------------------------------------------------- layernorm
def case_layernorm():
    N, D, eps = 3 * 7, 37, 1e-5
    base = torch.randn(N, D)
    base[4] += 50.0  # rows with a large mean
    base[9] *= 1e-2  # and a small variance
    x = base.clone().requires_grad_(True)
    w, b = (1 + 0.3 * torch.randn(D)).requires_grad_(True), randn(D, scale=0.3)
    out = F.layer_norm(x, (D,), w, b, eps)
    dout = torch.randn(N, D)
    out.backward(dout)
    mean = x.detach().mean(-1)
    rstd = torch.rsqrt(x.detach().var(-1, unbiased=False) + eps)
    save("ln.eps", np.array([eps]))
    for k, t in [("in", x), ("w", w), ("b", b), ("dout", dout), ("out", out), ("mean", mean),
                 ("rstd", rstd), ("din", x.grad), ("dw", w.grad), ("db", b.grad)]:
        save("ln." + k, t)


# ------------------------------------------------------ activations, dropout
def case_activation():
    n = 3 * 101
    for name, fn in [("relu", F.relu), ("gelu", lambda t: F.gelu(t, approximate="none"))]:
        x = randn(n, scale=2.0)
        with torch.no_grad():
            x[x.abs() < 1e-3] = 0.5  # ReLU's derivative at exactly 0 is a convention
        out = fn(x)
        dout = torch.randn(n)
        out.backward(dout)
        for k, t in [("in", x), ("dout", dout), ("out", out), ("din", x.grad)]:
            save("%s.%s" % (name, k), t)


def case_dropout():
    n, p, seed, stream = 3 * 101, 0.1, 99, 7
    keep, scale = keep_mask(p, seed, stream, n)
    x, y = randn(n), randn(n)
    out = x + y * torch.tensor(scale) * keep
    dout = torch.randn(n)
    out.backward(dout)
    save("drop.cfg", np.array([seed, stream]), "i32")
    save("drop.p", np.array([p]))
    for k, t in [("x", x), ("y", y), ("dout", dout), ("out", out), ("dx", x.grad), ("dy", y.grad),
                 ("dropout_y", y.detach() * torch.tensor(scale) * keep)]:
        save("drop." + k, t)


# --------------------------------------------------------------- attention
def attn_mask(B, Tq, Tk, causal, q_offset, pad):
    m = torch.zeros(B, 1, Tq, Tk, dtype=torch.bool)
    if causal:
        i = torch.arange(Tq)[:, None]
        j = torch.arange(Tk)[None, :]
        m |= (j > i + q_offset)[None, None]
    if pad is not None:
        m |= pad.bool()[:, None, None, :]
    return m


def attn_formula(q, k, v, H, dk, dv, mask, keep=None, scale_drop=1.0):
    """softmax(Q K^T / sqrt(dk) + mask) V, per head, as a plain torch formula.
    Rows whose keys are all masked: torch's masked_fill(-inf) + softmax gives NaN
    there; nan_to_num turns that into 0, which is the library's contract. The
    autograd graph avoids the NaN (it would poison the gradients) by not masking
    such rows and multiplying their probabilities by 0; the forward of both is
    asserted equal."""
    B, Tq, Tk = q.shape[0], q.shape[1], k.shape[1]
    Q = q.view(B, Tq, H, dk).transpose(1, 2)
    K = k.view(B, Tk, H, dk).transpose(1, 2)
    Vh = v.view(B, Tk, H, dv).transpose(1, 2)
    s = (Q @ K.transpose(-1, -2)) / math.sqrt(dk)
    with torch.no_grad():
        p_nan = torch.nan_to_num(torch.softmax(s.masked_fill(mask, float("-inf")), -1), nan=0.0)
    dead = mask.all(-1, keepdim=True)
    P = torch.softmax(s.masked_fill(mask & ~dead, float("-inf")), -1) * (~dead)
    assert torch.equal(P.detach(), p_nan), "reference formula: NaN-safe softmax differs"
    A = P if keep is None else P * keep * scale_drop
    out = (A @ Vh).transpose(1, 2).reshape(B, Tq, H * dv)
    return out, P


def attn_mha(q, k, v, H, mask_causal, pad):
    """The same through torch's own multi-head attention with identity projections
    (an independent implementation; needs dk == dv)."""
    B, Tq, E = q.shape
    eye = torch.eye(E)
    out, w = F.multi_head_attention_forward(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), E, H,
        None, None, None, None, False, 0.0, eye, None, training=False,
        key_padding_mask=None if pad is None else pad.bool(), need_weights=True,
        attn_mask=mask_causal, use_separate_proj_weight=True,
        q_proj_weight=eye, k_proj_weight=eye, v_proj_weight=eye, average_attn_weights=False)
    return out.transpose(0, 1), w


def case_attention(name, B, H, Tq, Tk, dk, dv, causal=0, q_offset=0, pad_rows=None, p=0.0,
                   seed=0, stream=0, mha=False):
    q, k, v = randn(B, Tq, H * dk), randn(B, Tk, H * dk), randn(B, Tk, H * dv)
    pad = None
    if pad_rows is not None:  # number of masked keys at the end of each batch row
        pad = torch.zeros(B, Tk, dtype=torch.uint8)
        for b, n_pad in enumerate(pad_rows):
            if n_pad:
                pad[b, Tk - n_pad:] = 1
    mask = attn_mask(B, Tq, Tk, causal, q_offset, pad)
    keep, scale_drop = None, 1.0
    if p > 0:
        keep, scale_drop = keep_mask(p, seed, stream, B * H * Tq * Tk)
        keep = keep.view(B, H, Tq, Tk)
        scale_drop = torch.tensor(scale_drop)
    out, P = attn_formula(q, k, v, H, dk, dv, mask, keep, scale_drop)
    dout = torch.randn(B, Tq, H * dv)
    out.backward(dout)
    pre = "attn.%s." % name
    save(pre + "cfg", np.array([B, H, Tq, Tk, dk, dv, causal, q_offset, pad is not None, seed, stream]), "i32")
    save(pre + "p", np.array([p]))
    if pad is not None:
        save(pre + "key_pad", pad, "u8")
    for kk, t in [("q", q), ("k", k), ("v", v), ("dout", dout), ("out", out), ("probs", P),
                  ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)]:
        save(pre + kk, t)

    if mha:  # the same case through torch's multi-head attention
        assert dk == dv and p == 0 and (not causal or (q_offset == 0 and Tq == Tk))
        q2, k2, v2 = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        cm = attn_mask(1, Tq, Tk, causal, q_offset, None)[0, 0] if causal else None
        out2, w2 = attn_mha(q2, k2, v2, H, cm, pad)
        out2.backward(dout)
        for kk, t in [("out", out2), ("probs", w2), ("dq", q2.grad), ("dk", k2.grad), ("dv", v2.grad)]:
            save(pre + "mha_" + kk, t)
    if hasattr(F, "scaled_dot_product_attention") and p == 0 and dk == dv and pad is None \
            and (not causal or (q_offset == 0 and Tq == Tk)):
        q3, k3, v3 = [t.detach().clone().view(B, -1, H, dk).transpose(1, 2).requires_grad_(True)
                      for t in (q, k, v)]
        out3 = F.scaled_dot_product_attention(q3, k3, v3, is_causal=bool(causal))
        out3 = out3.transpose(1, 2).reshape(B, Tq, H * dv)
        out3.backward(dout)
        for kk, t in [("out", out3), ("dq", q3.grad), ("dk", k3.grad), ("dv", v3.grad)]:
            save(pre + "sdpa_" + kk, t.transpose(1, 2).reshape(B, -1, H * dk) if kk != "out" else t)


# ----------------------------------------------------------- cross-entropy
def case_xent():
    N, V, pad = 3 * 7, 37, 0
    targets = torch.randint(1, V, (N,), dtype=torch.int32)
    targets[[3, 10, 19, 20]] = pad
    base = torch.randn(N, V) * 3
    base[7] += 40.0  # a row of large logits
    for name, eps in [("ls0", 0.0), ("ls01", 0.1)]:
        x = base.clone().requires_grad_(True)
        loss = F.cross_entropy(x, targets.long(), ignore_index=pad, label_smoothing=eps, reduction="sum")
        loss.backward()
        xm = base.clone().requires_grad_(True)
        F.cross_entropy(xm, targets.long(), ignore_index=pad, label_smoothing=eps, reduction="mean").backward()
        pre = "xent.%s." % name
        save(pre + "cfg", np.array([pad, int((targets != pad).sum())]), "i32")
        save(pre + "smoothing", np.array([eps]))
        for k, t in [("logits", x), ("targets", targets), ("loss", loss), ("lse", torch.logsumexp(base, -1)),
                     ("dlogits", x.grad), ("dlogits_mean", xm.grad)]:
            save(pre + k, t, "i32" if k == "targets" else "f32")
    save("logsm.logits", base)
    save("logsm.out", F.log_softmax(base, -1))


def main():
    case_linear()
    case_embedding()
    case_sinusoidal()
    case_rope()
    case_layernorm()
    case_activation()
    case_dropout()
    # An ordinary case, also through torch's multi-head attention (and SDPA when torch has it).
    case_attention("plain", B=2, H=3, Tq=7, Tk=7, dk=5, dv=5, mha=True)
    # Decoder self-attention: causal plus tail padding, also through torch's MHA.
    case_attention("causal", B=3, H=2, Tq=6, Tk=6, dk=4, dv=4, causal=1, pad_rows=[0, 1, 2], mha=True)
    # Incremental decoding: 3 queries after 5 cached keys (key j visible to query i iff j <= i + 5).
    case_attention("causal_offset", B=2, H=2, Tq=3, Tk=8, dk=4, dv=4, causal=1, q_offset=5)
    # Cross-attention: Tq != Tk, dk != dv, padding, and batch row 1 with every key masked.
    case_attention("cross_pad", B=3, H=2, Tq=5, Tk=9, dk=6, dv=3, pad_rows=[2, 9, 0])
    # One query per (batch, head), the decoder's step over its cache (the vectorised Tq = 1 path):
    # odd dk / dv (not multiples of the vector width), padding with one row all masked, and
    # enough pairs and keys for the parallel loop.
    case_attention("one_query", B=5, H=4, Tq=1, Tk=40, dk=67, dv=45, pad_rows=[0, 3, 40, 1, 39])
    # The same with a causal offset (keys past position 6 hidden) and a tiny head.
    case_attention("one_query_causal", B=3, H=2, Tq=1, Tk=9, dk=3, dv=7, causal=1, q_offset=6, pad_rows=[1, 0, 2])
    # More queries than the few-query loop takes (the general path through tfm_gemm), causal, padding.
    case_attention("many_queries", B=2, H=2, Tq=11, Tk=12, dk=6, dv=5, causal=1, q_offset=1, pad_rows=[0, 3])
    # Attention dropout with the library's mask.
    case_attention("dropout", B=2, H=3, Tq=5, Tk=7, dk=3, dv=5, pad_rows=[0, 2], p=0.2, seed=4242, stream=17)
    case_xent()

    tmp = os.path.join(OUT, "ops_index.txt.tmp")
    with open(tmp, "w") as f:
        f.write("tfm-ops-ref 1\n")
        f.write("\n".join(index) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(OUT, "ops_index.txt"))
    print("make_ops.py: %d tensors in %s (torch %s, scaled_dot_product_attention: %s)"
          % (len(index), OUT, torch.__version__, hasattr(F, "scaled_dot_product_attention")))


if __name__ == "__main__":
    main()
