"""AdamW, clip_grad_norm and the lr schedules against torch and transformers, then ten
training steps of minipeft against torch on the same GPT-2 (full fine-tuning and LoRA).

Tolerances (max|a - b| / max|b| per tensor):
- AdamW float64 1e-12: the same operations in the same order; torch fuses lerp/addcmul
  into an FMA and its sqrt is SLEEF's, so the last bit differs now and then (seen ~1e-16).
- AdamW float32 1e-6: the same, at float32's 6e-8 ulp, over 20 steps (seen ~2e-8).
- training float64 1e-10: forward and backward sum in another order than torch
  (gradients agree to ~1e-15; LoRA's parameters end ~2e-15 apart). Worst seen 5e-13 on
  c_attn.bias: its key third has gradient 0 in exact arithmetic (softmax ignores a
  constant added to a query's scores), so both sides step on rounding noise ~1e-17,
  which Adam divides by √v + eps ≈ 1e-8: ~1e-11 per step, different on each side.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from minipeft import GPT2, ConfigError, InputError, LoraConfig, get_peft_model
from minipeft.testing import max_rel
from minipeft.train.optim import AdamW, clip_grad_norm, lr_multiplier

torch = pytest.importorskip("torch")

SMALL = dict(n_layer=2, n_head=3, n_embd=24, n_positions=16, vocab_size=50)
SHAPES = {"w": (5, 7), "b": (7,), "ln.weight": (3,), "e": (4, 2, 3)}
NO_DECAY = {"b", "ln.weight"}


def random_grads(rng, dtype, skip=()):
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items() if k not in skip}


def torch_adamw(params: dict, lr, no_decay, **kw):
    """torch.optim.AdamW on copies of ``params``, weight decay 0 for the no_decay names."""
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    groups = [{"params": [tp[k] for k in tp if k not in no_decay]},
              {"params": [tp[k] for k in tp if k in no_decay], "weight_decay": 0.0}]
    return tp, torch.optim.AdamW(groups, lr=lr, foreach=False, **kw)


@pytest.mark.parametrize("dtype,tol,beta1", [(np.float64, 1e-12, 0.8), (np.float32, 1e-6, 0.8),
                                             (np.float64, 1e-12, 0.3)])   # lerp's other branch
def test_adamw_matches_torch(dtype, tol, beta1):
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    hyper = dict(betas=(beta1, 0.99), eps=1e-6, weight_decay=0.1)
    tp, topt = torch_adamw(params, 1e-2, NO_DECAY, **hyper)
    live = dict(params)                                     # the same array objects
    opt = AdamW(params, lr=1e-2, no_decay=NO_DECAY, **hyper)
    for step in range(20):
        lr = 1e-2 if step < 10 else 3e-3                    # lr changes mid-way
        grads = random_grads(rng, dtype, skip=("e",) if step in (4, 5) else ())   # "e": grad None
        for k, p in tp.items():
            p.grad = None if k not in grads else torch.tensor(grads[k])
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        opt.step(grads, lr=lr)
    assert all(params[k] is live[k] and params[k].dtype == dtype for k in params)   # in place
    assert opt.param_step == {"w": 20, "b": 20, "ln.weight": 20, "e": 18}
    for k in params:
        rel = max_rel(params[k], tp[k].detach().numpy())[1]
        print(f"{k}: max_rel {rel:.2e}")
        assert rel <= tol, k


def test_adamw_state_dict_continues_bit_for_bit():
    rng = np.random.default_rng(1)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    twin = {k: v.copy() for k, v in params.items()}
    grads = [random_grads(rng, np.float64, skip=("b",) if i == 2 else ()) for i in range(8)]
    a = AdamW(params, lr=1e-2, no_decay=NO_DECAY)
    for g in grads:
        a.step(g)
    b = AdamW(twin, lr=1e-2, no_decay=NO_DECAY)
    for g in grads[:4]:
        b.step(g)
    state = b.state_dict()
    json.dumps({k: v for k, v in state.items() if k not in ("exp_avg", "exp_avg_sq")})
    state["exp_avg"]["w"][...] = 0                          # a copy: b's own moment untouched
    state = copy.deepcopy(b.state_dict())
    c = AdamW(twin, lr=123.0, betas=(0.5, 0.5), weight_decay=0.0)   # all restored from the state
    c.load_state_dict(state)
    for g in grads[4:]:
        c.step(g)
    for k in params:
        assert np.array_equal(params[k], twin[k]), k
        assert np.array_equal(a.exp_avg_sq[k], c.exp_avg_sq[k]), k


def test_adamw_refuses():
    p = {"w": np.zeros((2, 3))}
    for kw in (dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(betas=(0.9, -0.1)), dict(eps=0.0),
               dict(weight_decay=-0.1), dict(no_decay=["x"])):
        with pytest.raises(ConfigError):
            AdamW(p, **kw)
    opt = AdamW(p)
    with pytest.raises(InputError, match="unknown"):
        opt.step({"v": np.zeros((2, 3))})
    with pytest.raises(InputError, match="shape"):
        opt.step({"w": np.zeros((3, 2))})
    state = opt.state_dict()
    with pytest.raises(ConfigError, match="other parameters"):
        AdamW({"w": np.zeros((2, 3)), "v": np.zeros(1)}).load_state_dict(state)
    with pytest.raises(ConfigError, match="shape"):
        AdamW({"w": np.zeros((3, 2))}).load_state_dict(state)


@pytest.mark.parametrize("max_norm", [0.5, 1e3])            # clipping, not clipping
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_grad_norm_matches_torch(max_norm, dtype):
    rng = np.random.default_rng(2)
    grads = random_grads(rng, dtype)
    tp = [torch.zeros(s, dtype=getattr(torch, np.dtype(dtype).name), requires_grad=True)
          for s in SHAPES.values()]
    for p, g in zip(tp, grads.values()):
        p.grad = torch.tensor(g.copy())
    ref = torch.nn.utils.clip_grad_norm_(tp, max_norm).item()
    norm = clip_grad_norm(grads, max_norm)
    tol = 1e-15 if dtype == np.float64 else 1e-6            # per-tensor norms summed in another order
    assert abs(norm - ref) <= tol * ref and (norm > max_norm) == (max_norm == 0.5)
    for p, g in zip(tp, grads.values()):
        assert max_rel(g, p.grad.numpy())[1] <= tol and g.dtype == dtype
    assert np.isnan(clip_grad_norm({"x": np.array([np.nan, 1.0])}, 1.0))


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_multiplier_matches_transformers(schedule):
    import transformers
    make = {"constant": lambda o: transformers.get_constant_schedule_with_warmup(o, 3),
            "linear": lambda o: transformers.get_linear_schedule_with_warmup(o, 3, 10),
            "cosine": lambda o: transformers.get_cosine_schedule_with_warmup(o, 3, 10)}[schedule]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.7)
    sched = make(opt)
    for k in range(12):                                     # past the end, too
        assert opt.param_groups[0]["lr"] == 0.7 * lr_multiplier(schedule, k, 3, 10), k
        opt.step()
        sched.step()
    with pytest.raises(ConfigError, match="unknown lr schedule"):
        lr_multiplier("cosine_with_restarts", 0, 3, 10)
    with pytest.raises(ConfigError):
        lr_multiplier(schedule, -1, 3, 10)


# ------------------------------------------------------------------ training, end to end
STEPS, ACCUM, LR, WARMUP = 10, 2, 2e-2, 3
MAX_NORM_FULL, MAX_NORM_LORA = 0.8, 0.03      # about the median gradient norm: some steps clip


def batches(seed=3, B=2, T=12):
    """STEPS x ACCUM micro-batches (ids, labels) with ~20% of the labels -100; the
    sequences count up by 3 from a random start (learnable: the loss goes down)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STEPS * ACCUM):
        ids = (rng.integers(0, SMALL["vocab_size"], (B, 1)) + 3 * np.arange(T)) % SMALL["vocab_size"]
        labels = np.where(rng.random((B, T)) < 0.2, -100, ids)
        out.append((ids, labels))
    return out


def train_torch(model, named: dict, no_decay: set, max_norm: float):
    """torch: loss/ACCUM .backward() per micro-batch, clip_grad_norm_, AdamW, cosine LambdaLR."""
    import transformers
    groups = [{"params": [p for k, p in named.items() if k not in no_decay]},
              {"params": [p for k, p in named.items() if k in no_decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, weight_decay=0.1, foreach=False)
    sched = transformers.get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    losses, norms, data = [], [], batches()
    for step in range(STEPS):
        opt.zero_grad()
        total = 0.0
        for ids, labels in data[step * ACCUM:(step + 1) * ACCUM]:
            logits = model(torch.as_tensor(ids)).logits
            lab = torch.as_tensor(labels)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100)
            (loss / ACCUM).backward()
            total += loss.item() / ACCUM
        norms.append(torch.nn.utils.clip_grad_norm_(list(named.values()), max_norm).item())
        opt.step()
        sched.step()
        losses.append(total)
    return losses, norms


def train_minipeft(model, params: dict, no_decay: set, max_norm: float):
    """minipeft: the same loop (what minipeft.train.trainer does)."""
    opt = AdamW(params, lr=LR, weight_decay=0.1, no_decay=no_decay)
    losses, norms, data = [], [], batches()
    for step in range(STEPS):
        grads, total = {}, 0.0
        for ids, labels in data[step * ACCUM:(step + 1) * ACCUM]:
            loss, g = model.loss_and_grads(ids, labels)
            total += loss / ACCUM
            for k, v in g.items():
                grads[k] = v / ACCUM if k not in grads else grads[k] + v / ACCUM
        norms.append(clip_grad_norm(grads, max_norm))
        opt.step(grads, lr=LR * lr_multiplier("cosine", step, WARMUP, STEPS))
        losses.append(total)
    return losses, norms


def compare_runs(ours, theirs, params, ref_params, max_norm):
    (losses, norms), (ref_losses, ref_norms) = ours, theirs
    print("step losses", np.round(ref_losses, 4), "\ngrad norms", np.round(ref_norms, 3))
    clipped = sum(n > max_norm for n in ref_norms)
    assert 0 < clipped < STEPS, f"{clipped} of {STEPS} steps clipped: move max_norm"
    assert ref_losses[-1] < ref_losses[0]
    for i, (a, b) in enumerate(zip(losses, ref_losses)):
        assert abs(a - b) <= 1e-10 * abs(b), (i, a, b)
    assert max(abs(a - b) / b for a, b in zip(norms, ref_norms)) <= 1e-10
    assert sorted(params) == sorted(ref_params)
    worst = max(max_rel(params[k], ref_params[k])[1] for k in params)
    print(f"worst parameter max_rel after {STEPS} steps: {worst:.2e}")
    assert worst <= 1e-10


def test_training_full_finetune_matches_torch(hf_checkpoint):
    folder, hf = hf_checkpoint(0, **SMALL)
    tm = copy.deepcopy(hf).double().eval()                  # eval: no dropout; grads still flow
    model = GPT2.from_pretrained(folder).astype(np.float64)
    named = dict(tm.named_parameters())                     # lm_head is tied to wte: not listed
    no_decay = {k for k in named if k.endswith(".bias") or ".ln_" in k}
    theirs = train_torch(tm, named, no_decay, max_norm=MAX_NORM_FULL)
    ours = train_minipeft(model, model.params, no_decay, max_norm=MAX_NORM_FULL)
    compare_runs(ours, theirs, model.params, {k: p.detach().numpy() for k, p in named.items()},
                 MAX_NORM_FULL)


def test_training_lora_matches_peft(hf_checkpoint):
    from peft import LoraConfig as TorchLoraConfig
    from peft import get_peft_model as torch_get_peft_model
    folder, hf = hf_checkpoint(0, **SMALL)
    lora = dict(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    tm = torch_get_peft_model(copy.deepcopy(hf).double(), TorchLoraConfig(**lora)).eval()
    pm = get_peft_model(GPT2.from_pretrained(folder).astype(np.float64), LoraConfig(**lora))
    g = torch.Generator().manual_seed(0)
    named = {k.replace(".default.", "."): p for k, p in tm.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for k, p in named.items():
            if "lora_B" in k:                               # B = 0 would hide A's gradient
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    params = pm.trainable_parameters()
    assert sorted(params) == sorted(named)
    for k, p in named.items():
        params[k][...] = p.detach().numpy()                 # peft's A (kaiming), our random B
    theirs = train_torch(tm, named, set(), max_norm=MAX_NORM_LORA)
    ours = train_minipeft(pm, params, set(), max_norm=MAX_NORM_LORA)
    compare_runs(ours, theirs, pm.trainable_parameters(),
                 {k: p.detach().numpy() for k, p in named.items()}, MAX_NORM_LORA)
