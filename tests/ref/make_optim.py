"""make_optim.py: PyTorch references for the optimizer and the LR schedules.

Usage: python3 make_optim.py OUTDIR   (run by tests/ref/generate.sh)

Writes, for tests/test_ref_optim.c, files that need nothing of ours to read:
  optim_index.txt        one line per optimizer case (format in its header)
  optim_param0.bin       the initial parameters, n little-endian float32
  optim_<case>_grads.bin [steps, n] raw gradients fed to each step
  optim_<case>_gclip.bin [steps, n] the gradients after clip_grad_norm_ (= raw without clipping)
  optim_<case>_params.bin[steps, n] the parameters after each optimizer step
  optim_<case>_m.bin, _v.bin  exp_avg and exp_avg_sq after the last step
  optim_<case>_norms.txt one line per step: torch's total norm (float32), the exact norm (float64)
  optim_lr.txt           every LR schedule for steps 1..N (format in its header)

The parameters are three tensors ([16, 12], [12], [97]) flattened in order,
like the library's one parameter buffer; n = 301 is odd so that vector tails
are exercised. Adam runs with foreach=False (PyTorch's single-tensor path,
which the C code follows operation for operation).
"""
import math
import os
import sys
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")  # scheduler step-order and step(epoch) deprecation notices
torch.set_num_threads(1)

OUT = sys.argv[1] if len(sys.argv) > 1 else "refs"
os.makedirs(OUT, exist_ok=True)

SHAPES = [(16, 12), (12,), (97,)]
STEPS = 5
BETAS = (0.9, 0.98)
EPS = 1e-9


def write_f32(name, arrays):
    data = np.concatenate([np.asarray(a, dtype="<f4").ravel() for a in arrays])
    data.tofile(os.path.join(OUT, name))


def flat(tensors):
    return torch.cat([t.detach().reshape(-1) for t in tensors]).numpy()


def noam_lambda(factor, d_model, warmup):
    return lambda e: factor * d_model ** -0.5 * min((e + 1) ** -0.5, (e + 1) * warmup ** -1.5)


# --------------------------------------------------------------- optimizer

gen = torch.Generator().manual_seed(20240601)
param0 = [torch.randn(s, generator=gen) for s in SHAPES]
n = sum(p.numel() for p in param0)
write_f32("optim_param0.bin", [flat(param0)])

# name, optimizer, weight decay, clip max_norm (0 = none), gradient scale per step, lr per step
CONST_LR = [1e-3] * STEPS
MIXED = [0.02, 0.3, 0.05, 0.5, 0.2]  # total norms ~0.35, 5, 0.9, 9, 3.5: clipping at steps 2, 4, 5
noam_lr = [noam_lambda(2.0, 64, 3)(e) for e in range(STEPS)]
CASES = [
    ("adam", "adam", 0.0, 0.0, [0.01] * STEPS, CONST_LR),
    ("adam_wd", "adam", 0.01, 0.0, [0.01] * STEPS, CONST_LR),
    ("adamw", "adamw", 0.01, 0.0, [0.01] * STEPS, CONST_LR),
    ("adam_clip_noop", "adam", 0.0, 1.0, [0.01] * STEPS, CONST_LR),  # norms < 1: never clips
    ("adamw_clip", "adamw", 0.01, 1.0, MIXED, CONST_LR),
    ("adam_wd_clip", "adam", 0.01, 1.0, MIXED, CONST_LR),
    ("adamw_noam", "adamw", 0.01, 1.0, MIXED, noam_lr),  # lr from LambdaLR(noam) each step
]

index = [
    "# optim cases: case NAME KIND BETA1 BETA2 EPS WEIGHT_DECAY CLIP_NORM LR_1 .. LR_STEPS",
    f"n {n}",
    f"steps {STEPS}",
]
clipped_steps = 0
for name, kind, wd, clip, scales, lrs in CASES:
    params = [torch.nn.Parameter(p.clone()) for p in param0]
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    opt = cls(params, lr=lrs[0], betas=BETAS, eps=EPS, weight_decay=wd, amsgrad=False,
              foreach=False)
    if name == "adamw_noam":
        opt.param_groups[0]["lr"] = 1.0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, noam_lambda(2.0, 64, 3))
    grads, gclip, after, norms = [], [], [], []
    for t in range(STEPS):
        g = [torch.randn(p.shape, generator=gen) * scales[t] for p in params]
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        grads.append(flat(g))
        exact = math.sqrt(sum(float(np.sum(gi.numpy().astype(np.float64) ** 2)) for gi in g))
        if clip > 0:
            total = torch.nn.utils.clip_grad_norm_(params, clip)
            clipped_steps += clip / (float(total) + 1e-6) < 1
        else:
            total = torch.norm(torch.stack([torch.norm(gi) for gi in g]))
        norms.append(f"{float(total)!r} {exact!r}")
        gclip.append(flat([p.grad for p in params]))
        if name == "adamw_noam":
            assert abs(opt.param_groups[0]["lr"] - lrs[t]) <= 1e-15
        else:
            assert opt.param_groups[0]["lr"] == lrs[t]
        opt.step()
        if name == "adamw_noam":
            sched.step()
        after.append(flat(params))
    state = [opt.state[p] for p in params]
    write_f32(f"optim_{name}_grads.bin", grads)
    write_f32(f"optim_{name}_gclip.bin", gclip)
    write_f32(f"optim_{name}_params.bin", after)
    write_f32(f"optim_{name}_m.bin", [flat([s["exp_avg"] for s in state])])
    write_f32(f"optim_{name}_v.bin", [flat([s["exp_avg_sq"] for s in state])])
    with open(os.path.join(OUT, f"optim_{name}_norms.txt"), "w") as f:
        f.write("\n".join(norms) + "\n")
    index.append(f"case {name} {kind} {BETAS[0]!r} {BETAS[1]!r} {EPS!r} {wd!r} {clip!r} "
                 + " ".join(repr(x) for x in lrs))
assert clipped_steps >= 6, "the clipping cases must actually clip"
with open(os.path.join(OUT, "optim_index.txt"), "w") as f:
    f.write("\n".join(index) + "\n")

# ----------------------------------------------------------- LR schedules


def run_scheduler(lr, make, nsteps):
    """The lr of optimizer steps 1..nsteps: read before each step, scheduler.step() after."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(nsteps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def warmup_then(w, after):
    """SequentialLR([linear warmup over w steps, after], milestones=[w]), or `after` alone."""
    if w == 0:
        return after
    LambdaLR = torch.optim.lr_scheduler.LambdaLR
    return lambda opt: torch.optim.lr_scheduler.SequentialLR(
        opt, [LambdaLR(opt, lambda e: (e + 1) / w), after(opt)], milestones=[w])


def check_same(name, a, b, tol=1e-12):
    worst = max(abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b))
    assert worst <= tol, f"{name}: torch scheduler and formula differ by {worst:.3e} relative"


S = torch.optim.lr_scheduler
schedules = []  # (name, kind, lr, factor, d_model, warmup, total, min_lr, gamma, step_size, values)


def add(name, kind, values, lr=0.0, factor=0.0, d_model=0, warmup=0, total=0, min_lr=0.0,
        gamma=0.0, step_size=0):
    schedules.append((name, kind, lr, factor, d_model, warmup, total, min_lr, gamma, step_size,
                      values))


# noam: LambdaLR, and the paper's formula written out independently
for name, factor, d_model, warmup, N in [("noam", 1.0, 512, 4000, 12000),
                                         ("noam_small", 2.0, 64, 10, 60)]:
    torch_vals = run_scheduler(1.0, lambda o: S.LambdaLR(o, noam_lambda(factor, d_model, warmup)), N)
    step_num = np.arange(1, N + 1, dtype=np.float64)
    formula = factor * d_model ** -0.5 * np.minimum(step_num ** -0.5, step_num * warmup ** -1.5)
    check_same(name, torch_vals, formula.tolist())
    add(name, "noam", torch_vals, factor=factor, d_model=d_model, warmup=warmup)
    add(name + "_formula", "noam", formula.tolist(), factor=factor, d_model=d_model,
        warmup=warmup)


def cosine_formula(lr, w, total, min_lr, N):
    out = []
    for s in range(1, N + 1):
        e, T = s - 1 - w, total - w
        if s <= w:
            out.append(lr * s / w)
        elif e <= T:
            out.append(min_lr + (lr - min_lr) * (1 + math.cos(math.pi * e / T)) / 2)
        else:
            out.append(min_lr)
    return out


for name, lr, w, total, min_lr, N in [("cosine", 1e-3, 100, 1000, 1e-5, 1200),
                                      ("cosine_nowarm", 5e-4, 0, 500, 0.0, 600)]:
    T = total - w
    vals = run_scheduler(lr, warmup_then(w, lambda o: S.CosineAnnealingLR(o, T_max=T,
                                                                         eta_min=min_lr)), N)
    # CosineAnnealingLR is periodic beyond T_max; the library holds min_lr there.
    vals = [v if s - 1 - w <= T else min_lr for s, v in enumerate(vals, 1)]
    check_same(name, vals, cosine_formula(lr, w, total, min_lr, N), tol=1e-9)
    add(name, "cosine", vals, lr=lr, warmup=w, total=total, min_lr=min_lr)

for name, lr, w, gamma, step_size, N in [("step", 1e-3, 0, 0.5, 30, 200),
                                         ("step_warm", 2e-3, 20, 0.1, 50, 300)]:
    vals = run_scheduler(lr, warmup_then(w, lambda o: S.StepLR(o, step_size, gamma)), N)
    formula = [lr * s / w if s <= w else lr * gamma ** ((s - 1 - w) // step_size)
               for s in range(1, N + 1)]
    check_same(name, vals, formula, tol=1e-12)
    add(name, "step", vals, lr=lr, warmup=w, gamma=gamma, step_size=step_size)

for name, lr, w, gamma, N in [("exp", 1e-2, 0, 0.99, 500), ("exp_warm", 1e-3, 10, 0.95, 100)]:
    vals = run_scheduler(lr, warmup_then(w, lambda o: S.ExponentialLR(o, gamma)), N)
    formula = [lr * s / w if s <= w else lr * gamma ** (s - 1 - w) for s in range(1, N + 1)]
    check_same(name, vals, formula, tol=1e-12)
    add(name, "exp", vals, lr=lr, warmup=w, gamma=gamma)

for name, lr, w, N in [("constant", 3e-4, 0, 50), ("constant_warm", 3e-4, 25, 100)]:
    vals = run_scheduler(lr, lambda o: S.LambdaLR(o, lambda e: min((e + 1) / w, 1.0) if w else 1.0),
                         N)
    add(name, "constant", vals, lr=lr, warmup=w)

# inverse_sqrt: LambdaLR, and fairseq's InverseSquareRootSchedule.step_update
# written out (warmup_init_lr 0; fairseq sets the lr after `num_updates` updates,
# which is our step num_updates: the same values, shifted by one update).
for name, lr, w, N in [("inverse_sqrt", 5e-4, 4000, 10000), ("inverse_sqrt_small", 1e-3, 7, 40)]:
    vals = run_scheduler(lr, lambda o: S.LambdaLR(o, lambda e: min((e + 1) / w, (w / (e + 1)) ** 0.5)),
                         N)
    lr_step, decay_factor = lr / w, lr * w ** 0.5
    fairseq = [num * lr_step if num < w else decay_factor * num ** -0.5 for num in range(1, N + 1)]
    check_same(name, vals, fairseq, tol=1e-12)
    add(name, "inverse_sqrt", vals, lr=lr, warmup=w)
    add(name + "_fairseq", "inverse_sqrt", fairseq, lr=lr, warmup=w)

with open(os.path.join(OUT, "optim_lr.txt"), "w") as f:
    f.write("# sched NAME KIND LR FACTOR D_MODEL WARMUP TOTAL_STEPS MIN_LR GAMMA STEP_SIZE NSTEPS,\n"
            "# then NSTEPS lines: the lr of steps 1..NSTEPS\n")
    for (name, kind, lr, factor, d_model, w, total, min_lr, gamma, step_size, vals) in schedules:
        f.write(f"sched {name} {kind} {lr!r} {factor!r} {d_model} {w} {total} {min_lr!r} "
                f"{gamma!r} {step_size} {len(vals)}\n")
        f.write("".join(f"{v!r}\n" for v in vals))

print(f"make_optim.py: {len(CASES)} optimizer cases (n={n}, {STEPS} steps), "
      f"{len(schedules)} schedules -> {OUT}")
