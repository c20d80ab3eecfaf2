"""IA3 (minipeft.peft.ia3, ia3_model, kernels.ia3) against peft on transformers' GPT-2.

The same random base checkpoint on both sides; peft's ia3_l vectors set to random
values away from 1 and copied into minipeft, so that a missing scale cannot hide
behind l = 1. Compared: logits, loss and every IA3 gradient; files both ways;
finite differences; kernels against twins; the invariants of the method.

Tolerances (max|a - b| / max|b| per tensor):
- float64 1e-10: the same expressions in float64, summed in another order (seen ~1e-15).
- float32 1e-4: float32 sums over C or B·T terms in another order than torch (seen ~1e-6).
- finite differences 1e-6: central differences with h = 1e-6 on a float64 model of size ~1
  leave ~1e-10 truncation and round-off; 1e-6 still catches any wrong term.
- kernels: float64 1e-12 (another summation order), float32 1e-5 (float32 sums over N rows).
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
from test_lora_vs_peft import SMALL, _config
from test_lora_vs_peft import torch_loss_and_grads as lora_reference

from minipeft import (
    GPT2,
    CheckpointError,
    ConfigError,
    GPT2Config,
    IA3Config,
    IA3Model,
    PeftModel,
    get_peft_model,
)
from minipeft.kernels import ia3 as K
from minipeft.peft import ia3 as T
from minipeft.testing import assert_close, cmp, grad_check

TOL = {"float64": 1e-10, "float32": 1e-4}
FD_TOL = 1e-6
IDS = np.array([[3, 14, 15, 9, 2, 6, 5, 35, 8, 9, 7, 9], [8, 9, 7, 9, 3, 23, 8, 4, 1, 0, 42, 17]])
LABELS = np.where(np.arange(12) == 4, -100, IDS)           # one ignored label
C = SMALL["n_embd"]


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def peft_key(torch_name: str) -> str:
    """peft's parameter name (….ia3_l.default) -> its saved key, minipeft's name."""
    return torch_name.removesuffix(".default")


def make_pair(hf_model, kwargs, dtype="float64", seed=0, paper=False):
    """-> (peft model, minipeft model) with equal random ia3 vectors (1 + 0.4·N(0, 1)).
    ``paper``: minipeft scales only c_attn's k, v; peft's q entries are set to 1."""
    import torch
    from peft import IA3Config as TorchIA3Config
    from peft import get_peft_model as torch_get_peft_model
    tm = copy.deepcopy(hf_model).to(getattr(torch, dtype))
    from minipeft.io.checkpoint import normalize_names
    state = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
    pm_t = quiet(torch_get_peft_model, tm, TorchIA3Config(**kwargs)).eval()
    g = torch.Generator().manual_seed(seed)
    theirs = {}
    with torch.no_grad():
        for name, p in pm_t.named_parameters():
            if "ia3_l" in name:
                p.copy_(1 + 0.4 * torch.randn(p.shape, generator=g, dtype=torch.float64))
                if paper and "c_attn" in name:
                    p[:C] = 1.0                                  # q: fixed at 1
                theirs[peft_key(name)] = p.numpy()
    base = GPT2(_config(hf_model), normalize_names(state, "t"))
    pm = quiet(get_peft_model, base, IA3Config(**kwargs, c_attn_slices=["k", "v"] if paper else None))
    ours = pm.trainable_parameters()
    for k, v in theirs.items():
        if k in ours:
            ours[k][...] = v
        else:                                                    # c_attn's k and v slices
            for j, s in enumerate("qkv"):
                key = k.replace(".ia3_l", f".{s}.ia3_l")
                if key in ours:
                    ours[key][...] = v[j * C:(j + 1) * C]
    return pm_t, pm


def torch_loss_and_grads(pm_t, ids=IDS, labels=LABELS):
    return lora_reference(pm_t, ids, labels, name=peft_key)


def torch_logits(pm_t, ids=IDS):
    import torch
    with torch.no_grad():
        return pm_t(torch.as_tensor(ids)).logits.numpy()


VARIANTS = {
    "peft-default": dict(),                                              # c_attn out, mlp.c_proj in
    "all-four-c_fc-ff": dict(target_modules=["c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
                             feedforward_modules=["mlp.c_fc"]),
}
MODES = pytest.mark.parametrize("dtype,kernels", [("float64", True), ("float64", False), ("float32", True)],
                                ids=["float64-numba", "float64-numpy", "float32-numba"])


# ------------------------------------------------------------------ against peft
@MODES
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ia3_equals_peft(hf_checkpoint, variant, dtype, kernels, capsys):
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm_t, pm = make_pair(hf_model, VARIANTS[variant], dtype)
    pm_t.print_trainable_parameters()
    pm.print_trainable_parameters()
    theirs, ours = capsys.readouterr().out.strip().splitlines()
    assert ours == theirs and ours.startswith("trainable params: ")
    assert {k: v.shape for k, v in pm.trainable_parameters().items()} == \
        {peft_key(n): tuple(p.shape) for n, p in pm_t.named_parameters() if p.requires_grad}
    pm.use_kernels = kernels
    logits_t, loss_t, grads_t = torch_loss_and_grads(pm_t)
    tol = TOL[dtype]
    assert cmp("logits", pm(IDS), logits_t, tol) <= tol
    loss, grads = pm.loss_and_grads(IDS, LABELS)
    assert cmp("loss", loss, loss_t, tol) <= tol
    assert_close(grads, grads_t, tol)


@MODES
def test_paper_placement_equals_peft_with_q_fixed_at_one(hf_checkpoint, dtype, kernels):
    """k, v and mlp.c_proj's input: equal to peft whose c_attn q entries are 1; q never trains."""
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm_t, pm = make_pair(hf_model, {}, dtype, paper=True)
    assert pm.peft_config["default"].c_attn_slices == ["k", "v"]
    pm.use_kernels = kernels
    logits_t, loss_t, grads_t = torch_loss_and_grads(pm_t)
    tol = TOL[dtype]
    assert cmp("logits", pm(IDS), logits_t, tol) <= tol
    loss, grads = pm.loss_and_grads(IDS, LABELS)
    assert cmp("loss", loss, loss_t, tol) <= tol
    assert sorted(grads) == sorted(pm.trainable_parameters())
    assert not any(".q.ia3_l" in k for k in grads)
    want = {}
    for k, g in grads_t.items():
        if "c_attn" in k:
            want[k.replace(".ia3_l", ".k.ia3_l")] = g[C:2 * C]            # peft's k rows
            want[k.replace(".ia3_l", ".v.ia3_l")] = g[2 * C:]
        else:
            want[k] = g
    assert_close(grads, want, tol)
    n_layer = SMALL["n_layer"]
    assert sum(a.size for a in pm.trainable_parameters().values()) == n_layer * (2 * C + 4 * C)


# ------------------------------------------------------------------ files, both ways
def base_model(folder, dtype=np.float64):
    return GPT2.from_pretrained(folder).astype(dtype)


@pytest.mark.parametrize("kwargs", [dict(), dict(target_modules=["c_attn", "mlp.c_fc"],
                                                 feedforward_modules=["mlp.c_fc"]),
                                    dict(target_modules=["c_attn"])],
                         ids=["default", "c_fc-ff", "c_attn-only"])
def test_peft_saved_adapter_loads_in_minipeft(hf_checkpoint, tmp_path, kwargs):
    """c_attn-only: peft writes feedforward_modules ['mlp.c_proj'], not in target_modules,
    a file peft itself refuses to load; minipeft reads it as the model peft had."""
    folder, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm_t, _ = make_pair(hf_model, kwargs, "float64", seed=1)
    pm_t.save_pretrained(tmp_path)
    pm = PeftModel.from_pretrained(base_model(folder), tmp_path)
    assert isinstance(pm, IA3Model) and pm.trainable_parameters() == {}   # inference, as peft
    assert cmp("logits", pm(IDS), torch_logits(pm_t), 1e-10) <= 1e-10
    trainable = PeftModel.from_pretrained(base_model(folder), tmp_path, is_trainable=True)
    assert len(trainable.trainable_parameters()) == 2 * len(kwargs.get("target_modules", "ab"))


@pytest.mark.parametrize("kwargs", [
    dict(),
    VARIANTS["all-four-c_fc-ff"],
    "paper",
    dict(target_modules=["c_proj"]),                     # peft could not read its own form of this
    dict(target_modules="all-linear", init_ia3_weights=False),
], ids=["default", "all-four", "paper", "c_proj", "all-linear"])
def test_minipeft_saved_adapter_loads_in_peft(hf_checkpoint, tmp_path, kwargs):
    import torch
    from peft import PeftModel as TorchPeftModel
    from safetensors.numpy import load_file
    folder, hf_model = hf_checkpoint(seed=3, **SMALL)
    config = IA3Config.paper() if kwargs == "paper" else IA3Config(**kwargs)
    pm = quiet(get_peft_model, base_model(folder), config)
    rng = np.random.default_rng(0)
    for a in pm.trainable_parameters().values():
        a[...] = 1 + 0.4 * rng.standard_normal(a.shape)
    pm.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    key = "base_model.model.transformer.h.0.attn.c_attn.ia3_l"
    if kwargs == "paper":                                # the whole vector, ones in q
        assert saved[key].shape == (3 * C, 1) and np.all(saved[key][:C] == 1)
    pm_t = quiet(TorchPeftModel.from_pretrained, copy.deepcopy(hf_model).to(torch.float64), tmp_path).eval()
    assert cmp("logits", torch_logits(pm_t), pm(IDS), 1e-10) <= 1e-10
    assert {peft_key(n): tuple(p.shape) for n, p in pm_t.named_parameters() if "ia3_l" in n} == \
        {k: v.shape for k, v in saved.items()}
    again = PeftModel.from_pretrained(base_model(folder), tmp_path)
    assert cmp("reloaded", again(IDS), pm(IDS), 1e-12) <= 1e-12


def test_saved_config_has_peft_keys_and_values(hf_checkpoint, tmp_path):
    from peft import IA3Config as TorchIA3Config
    from peft import get_peft_model as torch_get_peft_model
    folder, hf_model = hf_checkpoint(seed=3, **SMALL)
    quiet(torch_get_peft_model, copy.deepcopy(hf_model), TorchIA3Config()).save_pretrained(tmp_path / "t")
    quiet(get_peft_model, base_model(folder), IA3Config()).save_pretrained(tmp_path / "m")
    theirs, ours = (json.loads((tmp_path / s / "adapter_config.json").read_text()) for s in "tm")
    for k in ("target_modules", "feedforward_modules"):   # sets in peft: written in any order
        theirs[k] = sorted(theirs[k])
    assert ours == theirs                                 # keys and values, defaults resolved as peft
    paper = quiet(get_peft_model, base_model(folder), IA3Config.paper())
    assert paper._adapter_state("default")[0] == theirs   # the same peft config, q saved as ones


def test_init_false_is_random_normal_and_true_is_ones(hf_checkpoint):
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    ones = quiet(get_peft_model, base_model(folder), IA3Config())
    assert all(np.all(a == 1) for a in ones.trainable_parameters().values())
    rand = quiet(get_peft_model, base_model(folder), IA3Config(init_ia3_weights=False), seed=4)
    v = np.concatenate([a.ravel() for a in rand.trainable_parameters().values()])
    assert abs(v.mean()) < 0.25 and 0.75 < v.std() < 1.25       # 336 samples of N(0, 1)
    again = quiet(get_peft_model, base_model(folder), IA3Config(init_ia3_weights=False), seed=4)
    assert all(np.array_equal(a, again.trainable_parameters()[k])
               for k, a in rand.trainable_parameters().items())


# ------------------------------------------------------------------ finite differences
CFG = GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=12, vocab_size=17)
FD_IDS = np.array([[1, 5, 3, 16, 0, 2], [4, 4, 9, 11, 7, 6]])


def tiny_peft(config, seed=0):
    from minipeft.io.checkpoint import expected_shapes
    rng = np.random.default_rng(seed)
    params = {k: (0.3 * rng.standard_normal(s) + (1.0 if ".ln_" in k and k.endswith("weight") else 0))
              for k, s in expected_shapes(CFG).items()}
    pm = quiet(get_peft_model, GPT2(CFG, params), config)
    for a in pm.trainable_parameters().values():
        a[...] = 1 + 0.5 * rng.standard_normal(a.shape)
    return pm


FD_CONFIGS = {
    "peft-default": IA3Config(),
    "all-four-c_fc-ff": IA3Config(target_modules="all-linear", feedforward_modules=r".*mlp\.c_fc"),
    "paper": IA3Config.paper(),
    "q-and-v-slices": IA3Config(c_attn_slices=["q", "v"]),
}


@pytest.mark.parametrize("kernels", [False, True], ids=["numpy", "numba"])
@pytest.mark.parametrize("name", list(FD_CONFIGS))
def test_model_finite_differences(name, kernels):
    pm = tiny_peft(FD_CONFIGS[name])
    pm.use_kernels = kernels
    errors = grad_check(lambda **_: pm.forward(FD_IDS)[0], pm.trainable_parameters(),
                        lambda dout: pm.backward(dout, pm.forward(FD_IDS)[1]))
    assert errors and max(errors.values()) < FD_TOL, errors


# ------------------------------------------------------------------ kernels = twins
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_equal_twins(dtype):
    rng = np.random.default_rng(0)
    f = lambda *shape: rng.standard_normal(shape).astype(dtype)
    u, dy = f(17, 40)[:, 3:33], f(17, 30)                 # u (N, 30): a strided slice, as c_attn's k
    l, W, b = 1 + f(30), f(30, 20), f(20)                 # W (in 30, out 20)
    out = {}
    for name, m in (("kernel", K), ("twin", T)):
        y, cache = m.ia3_forward(u, l)
        du, dl = m.ia3_backward(dy, u, l)
        Wo, bo = m.merge_weight(W, b, l[:20], False)      # output scaling: columns and bias
        Wf, bf = m.merge_weight(W, b, l, True)            # input scaling: rows
        Wou, bou = m.unmerge_weight(Wo, bo, l[:20], False)
        Wfu, bfu = m.unmerge_weight(Wf, bf, l, True)
        out[name] = dict(y=y, cache=cache, du=du, dl=dl, Wo=Wo, bo=bo, Wf=Wf, bf=bf,
                         Wou=Wou, bou=bou, Wfu=Wfu, bfu=bfu)
    tol = {np.float32: 1e-5, np.float64: 1e-12}[dtype]
    assert_close(out["kernel"], out["twin"], tol)
    assert all(v.dtype == dtype for v in out["kernel"].values())
    for name in ("kernel", "twin"):                        # unmerge gives W, b back (one rounding each way)
        o = out[name]
        assert_close({"Wo": o["Wou"], "bo": o["bou"], "Wf": o["Wfu"], "bf": o["bfu"]},
                     {"Wo": W, "bo": b, "Wf": W, "bf": b}, 4 * np.finfo(dtype).eps, verbose=False)
    t = out["twin"]                                        # and merge is what the equations say
    assert np.array_equal(t["Wo"], W * l[:20]) and np.array_equal(t["bo"], b * l[:20])
    assert np.array_equal(t["Wf"], W * l[:, None]) and np.array_equal(t["bf"], b)


# ------------------------------------------------------------------ invariants
@pytest.mark.parametrize("config", [IA3Config(), IA3Config.paper(),
                                    IA3Config(target_modules="all-linear", feedforward_modules=["mlp.c_fc"])],
                         ids=["default", "paper", "all-linear"])
def test_invariants(config):
    pm = tiny_peft(config)
    base = GPT2(CFG, {k: v.copy() for k, v in pm.params.items()})
    ref = base(FD_IDS)
    with pm.disable_adapter():
        assert np.array_equal(pm(FD_IDS), ref)            # disabled: the base model exactly
    trained = {k: a.copy() for k, a in pm.trainable_parameters().items()}
    for a in pm.trainable_parameters().values():
        a[...] = 1.0
    assert np.array_equal(pm(FD_IDS), ref)                # all ones: the base model exactly
    for k, a in pm.trainable_parameters().items():
        a[...] = trained[k]
    unmerged = pm(FD_IDS)
    assert cmp("adapted != base", unmerged, ref) > 1e-3
    plain = pm.merge_and_unload()
    assert type(plain) is GPT2 and np.array_equal(pm(FD_IDS), unmerged)   # pm untouched
    assert cmp("merge_and_unload", plain(FD_IDS), unmerged, 1e-12) <= 1e-12
    # generation with a KV cache: the cached keys and values are already scaled
    assert np.array_equal(pm.generate(FD_IDS[:, :2], 4), plain.generate(FD_IDS[:, :2], 4))
    pm.merge_adapter()
    assert cmp("merged", pm(FD_IDS), unmerged, 1e-12) <= 1e-12
    with pm.disable_adapter():                            # as peft: the base model (W ⊙ l / l)
        assert cmp("disabled while merged", pm(FD_IDS), ref, 1e-12) <= 1e-12
    assert cmp("merged again", pm(FD_IDS), unmerged, 1e-12) <= 1e-12
    pm.unmerge_adapter()
    assert_close({k: pm.params[k] for k in base.params}, base.params, 1e-15, verbose=False)
    assert cmp("unmerged", pm(FD_IDS), unmerged, 1e-12) <= 1e-12


def test_slices_scale_only_their_columns():
    pm = tiny_peft(IA3Config(c_attn_slices=["v"]))
    x = np.random.default_rng(1).standard_normal((2, 3, CFG.n_embd))
    out, _ = pm._linear("transformer.h.0.attn.c_attn", x)
    with pm.disable_adapter():
        plain, _ = pm._linear("transformer.h.0.attn.c_attn", x)
    c = CFG.n_embd
    l = pm.ia3["default"]["transformer.h.0.attn.c_attn"]["v.ia3_l"][:, 0]
    assert np.array_equal(out[..., :2 * c], plain[..., :2 * c])
    assert np.allclose(out[..., 2 * c:], plain[..., 2 * c:] * l, rtol=1e-15, atol=0)


def test_several_adapters_and_astype(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    pm = quiet(get_peft_model, base_model(folder), IA3Config(init_ia3_weights=False))
    pm.add_adapter("paper", IA3Config.paper(init_ia3_weights=False), seed=2)
    first = pm(IDS)
    pm.set_adapter("paper")
    assert {k.split("transformer.h.0.")[1] for k in pm.trainable_parameters() if ".h.0." in k} == \
        {"attn.c_attn.k.ia3_l", "attn.c_attn.v.ia3_l", "mlp.c_proj.ia3_l"}
    assert cmp("switched", pm(IDS), first) > 1e-3
    pm32 = pm.astype(np.float32)
    assert all(a.dtype == np.float32 for a in pm32.trainable_parameters().values())
    assert cmp("float32", pm32(IDS), pm(IDS), 1e-4) <= 1e-4
    pm.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(base_model(folder), tmp_path / "paper")
    assert cmp("paper reloaded", loaded(IDS), pm(IDS), 1e-12) <= 1e-12
    pm.delete_adapter("paper")
    assert pm.active_adapter == "default" and np.array_equal(pm(IDS), first)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(target_modules=["c_attn"], feedforward_modules=["mlp.c_proj"]), "subset of target_modules"),
    (dict(target_modules=["c_proj"], feedforward_modules=["mlp.c_proj"]), "subset of target_modules"),
    (dict(c_attn_slices=["k", "x"]), "c_attn_slices must be"),
    (dict(c_attn_slices=["k", "k"]), "c_attn_slices must be"),
    (dict(c_attn_slices=[]), "c_attn_slices must be"),
    (dict(c_attn_slices="kv"), "c_attn_slices must be"),
    (dict(target_modules=[]), "list of module names"),
    (dict(target_modules="c_(attn"), "not a valid regular expression"),
    (dict(feedforward_modules=[3]), "list of module names"),
    (dict(init_ia3_weights="yes"), "True or False"),
    (dict(exclude_modules=["c_fc"]), "has no field 'exclude_modules'"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        IA3Config(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_modules=["ln_1"]), "'ln_1' is not a linear layer of GPT-2"),
    (dict(target_modules=["c_attn", "lm_head"]), "'lm_head' is not a linear layer"),
    (dict(target_modules=r"transformer\.h\.9\..*"), "matches no module"),
    (dict(target_modules=["mlp.c_fc"], c_attn_slices=["k", "v"]), "c_attn is not targeted"),
    (dict(target_modules=["c_attn"], feedforward_modules=["c_attn"], c_attn_slices=["v"]),
     "c_attn is in feedforward_modules"),
])
def test_bad_targets(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tiny_peft(IA3Config(**kwargs))


def test_bad_merges_and_files(hf_checkpoint, tmp_path):
    pm = tiny_peft(IA3Config())
    with pytest.warns(UserWarning, match="Already unmerged. Nothing to do"):   # as peft
        pm.unmerge_adapter()
    next(iter(pm.trainable_parameters().values()))[3, 0] = 0.0
    with pytest.raises(ConfigError, match="equal to 0.*merge_and_unload"):
        pm.merge_adapter()
    assert not pm.merged
    pm.merge_and_unload()                                 # fine: pm is left as it is
    pm.trainable_parameters()["base_model.model.transformer.h.0.attn.c_attn.ia3_l"][3, 0] = 2.0
    pm.merge_adapter()
    with pytest.warns(UserWarning, match="All adapters are already merged, nothing to do"):  # as peft
        pm.merge_adapter()
    folder, _ = hf_checkpoint(seed=3, **SMALL)
    small = quiet(get_peft_model, base_model(folder), IA3Config())
    small.save_pretrained(tmp_path)
    wider, _ = hf_checkpoint(seed=3, **{**SMALL, "n_embd": 30})
    with pytest.raises(CheckpointError, match="another model size"):
        PeftModel.from_pretrained(base_model(wider), tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    cfg["target_modules"] = ["c_attn", "mlp.c_proj", "mlp.c_fc"]     # a tensor missing from the file
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing"):
        PeftModel.from_pretrained(base_model(folder), tmp_path)
    cfg["target_modules"], cfg["exclude_modules"] = ["c_attn", "mlp.c_proj"], ["c_fc"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="exclude_modules"):
        PeftModel.from_pretrained(base_model(folder), tmp_path)
