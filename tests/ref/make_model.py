#!/usr/bin/python3
"""Reference tensors for whole models, written by PyTorch (tests/test_ref_model.c).

For each case this builds a model in PyTorch with random weights and inputs,
runs forward and backward with dropout off, and writes one safetensors file
model_<case>.safetensors holding:
  param.<name>   every parameter (our checkpoint names; tied tensors once)
  grad.<name>    d(mean loss)/d(param)
  input.src, input.tgt_in, input.targets   int32 token matrices
  out.logits [N, V], out.loss [1]
and the configuration as JSON in the metadata key "config".

Two implementations: `Plain` below, a direct transcription of the paper's
formulas, covers every case (rotary positions, d_k != d_v, ...); where
torch.nn can express the model (d_k == d_v == d_model/heads, no rotary), the
case is ALSO built from torch.nn.TransformerEncoderLayer/DecoderLayer with the
same weights, the two are asserted to agree, and the torch.nn outputs are the
ones written. So the C model is checked against torch.nn.Transformer itself.

Usage: make_model.py OUTDIR
"""
import json
import math
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_default_dtype(torch.float32)


# ----------------------------------------------------------------- safetensors
def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dtype = {np.dtype("float32"): "F32", np.dtype("int32"): "I32"}[arr.dtype]
        data = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# --------------------------------------------------------------- plain model
def rope(x, pos, theta):
    """x [B, L, H, dk], rotate-half form."""
    dk = x.shape[-1]
    half = dk // 2
    freq = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / dk)
    ang = pos[:, None].double() * freq[None, :]  # [L, half]
    cos, sin = ang.cos().float()[None, :, None, :], ang.sin().float()[None, :, None, :]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, D, H, dk, dv):
        super().__init__()
        self.H, self.dk, self.dv = H, dk, dv
        self.in_proj_weight = nn.Parameter(torch.empty(H * (2 * dk + dv), D))
        self.in_proj_bias = nn.Parameter(torch.empty(H * (2 * dk + dv)))
        self.out_proj = nn.Linear(H * dv, D)

    def forward(self, x, mem, key_pad, causal, rope_theta=None):
        B, Lq, _ = x.shape
        H, dk, dv = self.H, self.dk, self.dv
        W, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(x, W[: H * dk], b[: H * dk]).view(B, Lq, H, dk)
        kv_src = x if mem is None else mem
        Lk = kv_src.shape[1]
        k = F.linear(kv_src, W[H * dk : 2 * H * dk], b[H * dk : 2 * H * dk]).view(B, Lk, H, dk)
        v = F.linear(kv_src, W[2 * H * dk :], b[2 * H * dk :]).view(B, Lk, H, dv)
        if rope_theta is not None:
            q = rope(q, torch.arange(Lq), rope_theta)
            k = rope(k, torch.arange(Lk), rope_theta)
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dk)
        mask = key_pad[:, None, None, :].expand(B, H, Lq, Lk)
        if causal:
            mask = mask | torch.triu(torch.ones(Lq, Lk, dtype=torch.bool), 1)[None, None]
        s = s.masked_fill(mask, float("-inf"))
        p = torch.softmax(s, dim=-1)
        o = torch.einsum("bhqk,bkhd->bqhd", p, v).reshape(B, Lq, H * dv)
        return self.out_proj(o)


class PlainLayer(nn.Module):
    def __init__(self, cfg, cross):
        super().__init__()
        D, H = cfg["d_model"], cfg["heads"]
        dk, dv = cfg["d_k"] or D // H, cfg["d_v"] or D // H
        self.cfg, self.cross = cfg, cross
        self.self_attn = Attention(D, H, dk, dv)
        if cross:
            self.multihead_attn = Attention(D, H, dk, dv)
        self.linear1 = nn.Linear(D, cfg["d_ff"])
        self.linear2 = nn.Linear(cfg["d_ff"], D)
        eps = cfg["ln_eps"]
        self.norm1 = nn.LayerNorm(D, eps=eps)
        self.norm2 = nn.LayerNorm(D, eps=eps)
        if cross:
            self.norm3 = nn.LayerNorm(D, eps=eps)

    def forward(self, x, pad, causal, mem=None, mem_pad=None):
        cfg = self.cfg
        act = F.relu if cfg["activation"] == "relu" else F.gelu
        theta = cfg["rope_theta"] if cfg["positions"] == "rope" else None
        blocks = [(self.norm1, lambda y: self.self_attn(y, None, pad, causal, theta))]
        if self.cross:
            blocks.append((self.norm2, lambda y: self.multihead_attn(y, mem, mem_pad, False)))
        ffn_norm = self.norm3 if self.cross else self.norm2
        blocks.append((ffn_norm, lambda y: self.linear2(act(self.linear1(y)))))
        for norm, f in blocks:
            x = x + f(norm(x)) if cfg["norm"] == "pre" else norm(x + f(x))
        return x


def sinusoid(P, D):
    t = torch.zeros(P, D, dtype=torch.float64)
    pos = torch.arange(P, dtype=torch.float64)[:, None]
    i = torch.arange(0, D, 2, dtype=torch.float64)
    ang = pos / torch.pow(10000.0, i / D)
    t[:, 0::2] = torch.sin(ang)
    t[:, 1::2] = torch.cos(ang)[:, : D // 2]
    return t.float()


class Model(nn.Module):
    """Embeddings, positions, the stacks (plain layers or torch.nn layers), the
    output projection, with our parameter names."""

    def __init__(self, cfg, use_torch_nn):
        super().__init__()
        self.cfg = cfg
        D, P = cfg["d_model"], cfg["max_positions"]
        enc, dec = cfg["enc_layers"], cfg["dec_layers"]
        self.has_enc, self.has_dec = enc > 0, dec > 0
        share = cfg["share"]
        if self.has_enc:
            self.src_embed = nn.Embedding(cfg["src_vocab"], D)
        if self.has_dec:
            self.tgt_embed = self.src_embed if (self.has_enc and share == "all") else nn.Embedding(cfg["tgt_vocab"], D)
        if cfg["positions"] == "learned":
            if self.has_enc:
                self.src_pos = nn.Embedding(P, D)
            if self.has_dec:
                self.tgt_pos = nn.Embedding(P, D)
        pre = cfg["norm"] == "pre"
        if use_torch_nn:
            kw = dict(d_model=D, nhead=cfg["heads"], dim_feedforward=cfg["d_ff"], dropout=0.0,
                      activation=cfg["activation"], layer_norm_eps=cfg["ln_eps"], batch_first=True,
                      norm_first=pre)
            if self.has_enc:
                self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**kw), enc,
                                                     norm=nn.LayerNorm(D, eps=cfg["ln_eps"]) if pre else None,
                                                     enable_nested_tensor=False)
            if self.has_dec:
                if self.has_enc:
                    self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**kw), dec,
                                                         norm=nn.LayerNorm(D, eps=cfg["ln_eps"]) if pre else None)
                else:  # decoder-only: encoder layers run causally
                    self.decoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**kw), dec,
                                                         norm=nn.LayerNorm(D, eps=cfg["ln_eps"]) if pre else None,
                                                         enable_nested_tensor=False)
        else:
            if self.has_enc:
                self.encoder = nn.Module()
                self.encoder.layers = nn.ModuleList([PlainLayer(cfg, False) for _ in range(enc)])
                if pre:
                    self.encoder.norm = nn.LayerNorm(D, eps=cfg["ln_eps"])
            if self.has_dec:
                self.decoder = nn.Module()
                self.decoder.layers = nn.ModuleList([PlainLayer(cfg, self.has_enc) for _ in range(dec)])
                if pre:
                    self.decoder.norm = nn.LayerNorm(D, eps=cfg["ln_eps"])
        self.use_torch_nn = use_torch_nn
        top_embed = self.tgt_embed if self.has_dec else self.src_embed
        self.generator = nn.Linear(D, cfg["tgt_vocab"], bias=False)
        if share != "none":
            self.generator.weight = top_embed.weight
        self.register_buffer("pe", sinusoid(P, D), persistent=False)

    def embed(self, ids, table, learned):
        cfg = self.cfg
        D = cfg["d_model"]
        x = table(ids) * (math.sqrt(D) if cfg["embed_scale"] else 1.0)
        L = ids.shape[1]
        if cfg["positions"] == "sinusoidal":
            x = x + self.pe[:L][None]
        elif cfg["positions"] == "learned":
            x = x + learned.weight[:L][None]
        return x

    def run_stack(self, stack, x, pad, causal, mem=None, mem_pad=None):
        L = x.shape[1]
        if self.use_torch_nn:
            cm = torch.triu(torch.full((L, L), float("-inf")), 1) if causal else None
            if mem is not None:
                return stack(x, mem, tgt_mask=cm, tgt_key_padding_mask=pad, memory_key_padding_mask=mem_pad)
            return stack(x, mask=cm, src_key_padding_mask=pad)
        for layer in stack.layers:
            x = layer(x, pad, causal, mem, mem_pad)
        if hasattr(stack, "norm"):
            x = stack.norm(x)
        return x

    def forward(self, src, tgt_in):
        pad_id = self.cfg["pad_id"]
        mem = mem_pad = None
        if self.has_enc:
            mem_pad = src == pad_id
            mem = self.run_stack(self.encoder, self.embed(src, self.src_embed, getattr(self, "src_pos", None)),
                                 mem_pad, False)
        if self.has_dec:
            h = self.run_stack(self.decoder, self.embed(tgt_in, self.tgt_embed, getattr(self, "tgt_pos", None)),
                               tgt_in == pad_id, True, mem, mem_pad)
        else:
            h = mem
        return self.generator(h)


def canonical_names(model):
    """Parameter names as in our layout: each tensor once, first name wins."""
    return list(model.named_parameters())  # torch lists a shared tensor once, under its first name


def base_config(**kw):
    cfg = dict(enc_layers=2, dec_layers=2, d_model=16, heads=4, d_k=0, d_v=0, d_ff=24, activation="relu",
               norm="post", positions="sinusoidal", max_positions=32, rope_theta=10000.0, src_vocab=23,
               tgt_vocab=19, share="none", embed_scale=True, dropout=0.0, attn_dropout=0.0,
               embed_dropout=0.0, act_dropout=0.0, ln_eps=1e-5, label_smoothing=0.0, pad_id=0,
               bos_id=1, eos_id=2)
    cfg.update(kw)
    return cfg


CASES = {
    # torch.nn.Transformer (encoder/decoder layers, no final norms) + embeddings + projection
    "post_relu_encdec": base_config(),
    "pre_gelu_encdec": base_config(norm="pre", activation="gelu", src_vocab=21, tgt_vocab=21, share="all",
                                   label_smoothing=0.1),
    "dec_only_learned": base_config(enc_layers=0, dec_layers=3, positions="learned", tgt_vocab=29,
                                    share="decoder", label_smoothing=0.1),
    "dec_only_rope": base_config(enc_layers=0, dec_layers=2, positions="rope", norm="pre", tgt_vocab=27,
                                 activation="gelu"),
    "shared_decoder_ls": base_config(share="decoder", label_smoothing=0.1, embed_scale=False),
    "dk_ne_dv": base_config(d_k=3, d_v=5, heads=3, d_model=12, norm="pre", label_smoothing=0.1),
    "enc_only": base_config(enc_layers=2, dec_layers=0, src_vocab=17, tgt_vocab=17, share="decoder",
                            positions="learned"),
}

TORCH_NN_OK = lambda cfg: cfg["d_k"] in (0, cfg["d_model"] // cfg["heads"]) and \
    cfg["d_v"] in (0, cfg["d_model"] // cfg["heads"]) and cfg["positions"] != "rope"


def make_inputs(cfg, gen):
    B, S, T = 3, 7, 6
    pad = cfg["pad_id"]
    has_enc, has_dec = cfg["enc_layers"] > 0, cfg["dec_layers"] > 0
    out = {}
    if has_enc:
        src = torch.randint(3, cfg["src_vocab"], (B, S), generator=gen)
        src[1, 5:] = pad   # padding in the middle row
        src[2, 3:] = pad   # and more in the last
        out["src"] = src
    if has_dec:
        tgt = torch.randint(3, cfg["tgt_vocab"], (B, T + 1), generator=gen)
        tgt[:, 0] = cfg["bos_id"]
        tgt[0, 5:] = pad
        tgt[2, 4:] = pad
        out["tgt_in"], out["targets"] = tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()
    else:
        tg = torch.randint(3, cfg["tgt_vocab"], (B, S), generator=gen)
        tg[src == pad] = pad
        out["targets"] = tg
    return out


def run_case(name, cfg, outdir):
    seed = zlib.crc32(name.encode())
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    plain = Model(cfg, use_torch_nn=False)
    with torch.no_grad():
        for _, p in plain.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.1))
        for n, p in plain.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.add_(1.0)
    inputs = make_inputs(cfg, gen)
    model = plain
    if TORCH_NN_OK(cfg):
        tnn = Model(cfg, use_torch_nn=True)
        missing = tnn.load_state_dict(plain.state_dict(), strict=True)
        assert not missing.missing_keys and not missing.unexpected_keys
        model = tnn
    model.train()  # dropout is 0 everywhere; train mode avoids torch's inference fast path
    pad = cfg["pad_id"]

    def loss_of(m):
        logits = m(inputs.get("src"), inputs.get("tgt_in"))
        V = logits.shape[-1]
        logits = logits.reshape(-1, V)
        tg = inputs["targets"].reshape(-1)
        n = (tg != pad).sum()
        loss = F.cross_entropy(logits, tg, ignore_index=pad, label_smoothing=cfg["label_smoothing"],
                               reduction="sum") / n
        return logits, loss

    logits, loss = loss_of(model)
    loss.backward()
    if model is not plain:
        _, l2 = loss_of(plain)
        assert abs(l2.item() - loss.item()) < 1e-5 * max(1.0, abs(loss.item())), (name, l2.item(), loss.item())
        tag = "torch.nn"
    else:
        tag = "plain"
    tensors = {}
    for n, p in canonical_names(model):
        tensors["param." + n] = p.detach().numpy().astype(np.float32)
        tensors["grad." + n] = p.grad.detach().numpy().astype(np.float32)
    for k, v in inputs.items():
        tensors["input." + k] = v.numpy().astype(np.int32)
    tensors["out.logits"] = logits.detach().numpy()
    tensors["out.loss"] = np.array([loss.item()], dtype=np.float32)
    meta = {"config": json.dumps(cfg), "implementation": tag}
    path = os.path.join(outdir, f"model_{name}.safetensors")
    write_safetensors(path, tensors, meta)
    print(f"{name}: {tag}, loss {loss.item():.6f}, {len(tensors)} tensors -> {path}")


def main():
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    for name, cfg in CASES.items():
        run_case(name, cfg, outdir)


if __name__ == "__main__":
    main()
