"""Prefix tuning against peft's PREFIX_TUNING and AdapterHub's prefix tuning on
transformers' GPT-2, and on its own.

The same random base checkpoint on all sides; the prefix parameters (flat, or the
embedding and both Linear layers of the MLP) set to random values and copied into
minipeft. Compared: logits, loss and every trainable gradient with a left-padded batch,
peft's print_trainable_parameters line, greedy generate, the saved files both ways;
then float64 finite differences, positions, the KV cache, and the errors.

AdapterHub runs with transformers' eager attention: on the sdpa path adapters 1.3.0
gets the prefix mask wrong (no padding: the mask is None and sdpa's is_causal aligns
the causal triangle top-left over P + T keys; padding: it inverts the boolean mask for
the prefix, hiding it) — see the report of this method.

Tolerances (max|a - b| / max|b| per tensor):
- float64 1e-10: the same expressions in float64, summed in another order (seen ~1e-15).
- float32 1e-4: float32 sums over C, T or B in another order than torch (seen ~1e-7).
- finite differences 1e-6: central differences, h = 1e-5, on a loss of size ~4: round-off
  ~1e-16 · 4 / 1e-5 = 4e-11 against gradients ~1e-4 (seen ~1e-7).
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest

from minipeft import (
    GPT2,
    CheckpointError,
    ConfigError,
    GPT2Config,
    InputError,
    PeftModel,
    PrefixTuningConfig,
    PrefixTuningModel,
    get_peft_model,
)
from minipeft.io.checkpoint import normalize_names
from minipeft.testing import assert_close, cmp, numerical_gradient

TOL = {"float64": 1e-10, "float32": 1e-4}
SMALL = dict(n_layer=2, n_head=3, n_embd=24, n_positions=16, vocab_size=50)
P, H = 4, 7
FLAT = "prompt_embeddings"
MLP = ("prompt_encoder.embedding.weight", "prompt_encoder.transform.0.weight",
       "prompt_encoder.transform.0.bias", "prompt_encoder.transform.2.weight",
       "prompt_encoder.transform.2.bias")
IDS = np.array([[3, 14, 15, 9, 2, 6, 5], [8, 9, 7, 9, 3, 23, 8]])
MASK = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])     # row 0 left-padded


def base_from(hf_model, dtype):
    """minipeft's GPT2 with the weights of a transformers GPT-2, in ``dtype``."""
    state = {k: v.detach().numpy().astype(dtype) for k, v in hf_model.state_dict().items()}
    return GPT2(GPT2Config.from_hf_dict(hf_model.config.to_dict()), normalize_names(state, "t"))


def ours_config(projection, **kw):
    return PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=projection,
                              encoder_hidden_size=H, **kw)


def copy_in(pm, theirs: dict, seed=0):
    """Random values into the torch parameters ``theirs`` (minipeft name -> tensor), and
    the same into minipeft's; -> the torch tensors by minipeft name."""
    import torch
    g = torch.Generator().manual_seed(seed)
    ours = pm.trainable_parameters()
    assert sorted(ours) == sorted(theirs)
    with torch.no_grad():
        for name, p in theirs.items():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
            ours[name][...] = p.detach().numpy().reshape(ours[name].shape)
    return theirs


def peft_pair(hf_model, projection, dtype="float64", **kw):
    """-> (peft model, minipeft PrefixTuningModel, torch params by minipeft name)."""
    import torch
    from peft import PrefixTuningConfig as TorchConfig
    from peft import get_peft_model as torch_get_peft_model
    pm_t = torch_get_peft_model(copy.deepcopy(hf_model), TorchConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=projection,
        encoder_hidden_size=H))
    pm_t = pm_t.to(getattr(torch, dtype)).eval()     # peft makes its prefix in float32: cast all
    pm = get_peft_model(base_from(hf_model, dtype), ours_config(projection, **kw))
    named = {n.replace(".default.", "."): p for n, p in pm_t.named_parameters() if p.requires_grad}
    if not projection:
        named = {FLAT: named.pop("prompt_encoder.embedding.weight")}
    return pm_t, pm, copy_in(pm, named)


def adapters_pair(hf_model, projection, dtype="float64"):
    """-> (AdapterHub model (eager attention), minipeft model with convention="adapters",
    torch params by minipeft name)."""
    import adapters
    import torch
    tm = copy.deepcopy(hf_model)
    tm.set_attn_implementation("eager")
    adapters.init(tm)
    tm.add_adapter("p", config=adapters.PrefixTuningConfig(flat=not projection, prefix_length=P,
                                                          bottleneck_size=H))
    tm.train_adapter("p")
    tm = tm.to(getattr(torch, dtype)).eval()
    rename = {"control_trans": FLAT, "wte.weight": MLP[0], "control_trans.0.weight": MLP[1],
              "control_trans.0.bias": MLP[2], "control_trans.2.weight": MLP[3],
              "control_trans.2.bias": MLP[4]}
    named = {rename[n.split("self_prefix.")[1]]: p for n, p in tm.named_parameters() if p.requires_grad}
    pm = get_peft_model(base_from(hf_model, dtype), ours_config(projection, convention="adapters"))
    return tm, pm, copy_in(pm, named)


def torch_loss_and_grads(model, params, ids, labels, mask):
    import torch
    model.zero_grad()
    logits = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), torch.as_tensor(labels)[:, 1:].reshape(-1),
        ignore_index=-100)
    loss.backward()
    grads = {n: p.grad.numpy().reshape(-1) for n, p in params.items()}
    return logits.detach().numpy(), loss.item(), grads


def check_against(model_t, pm, params, dtype, kernels):
    """Logits (with and without the mask), loss and every gradient against the torch model."""
    import torch
    pm.use_kernels = kernels
    labels = IDS.copy()
    labels[1, 4] = -100
    logits_t, loss_t, grads_t = torch_loss_and_grads(model_t, params, IDS, labels, MASK)
    tol = TOL[dtype]
    assert cmp("logits", pm(IDS, MASK), logits_t, tol) <= tol
    with torch.no_grad():
        unmasked_t = model_t(input_ids=torch.as_tensor(IDS)).logits.numpy()
    assert cmp("logits, no mask", pm(IDS), unmasked_t, tol) <= tol
    loss, grads = pm.loss_and_grads(IDS, labels, MASK)
    assert cmp("loss", loss, loss_t, tol) <= tol
    assert_close({k: v.reshape(-1) for k, v in grads.items()}, grads_t, tol)


RUNS = pytest.mark.parametrize("dtype,kernels", [("float64", True), ("float64", False),
                                                 ("float32", True)],
                               ids=["float64-numba", "float64-numpy", "float32-numba"])
PROJECTION = pytest.mark.parametrize("projection", [False, True], ids=["flat", "projection"])


@RUNS
@PROJECTION
def test_equals_peft(hf_checkpoint, projection, dtype, kernels, capsys):
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm_t, pm, params = peft_pair(hf_model, projection, dtype)
    pm_t.print_trainable_parameters()
    pm.print_trainable_parameters()
    theirs, ours = capsys.readouterr().out.strip().splitlines()
    assert ours == theirs and ours.startswith("trainable params: ")
    check_against(pm_t, pm, params, dtype, kernels)


@pytest.mark.parametrize("projection,dtype,kernels", [
    (False, "float64", True), (True, "float64", True), (True, "float64", False),
    (False, "float32", True)], ids=["flat-float64-numba", "projection-float64-numba",
                                    "projection-float64-numpy", "flat-float32-numba"])
def test_equals_adapterhub(hf_checkpoint, projection, dtype, kernels):
    """AdapterHub's convention: the prefix inside attention, positions 0..T-1."""
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm, pm, params = adapters_pair(hf_model, projection, dtype)
    check_against(tm, pm, params, dtype, kernels)


@PROJECTION
def test_finite_differences_float64(hf_checkpoint, projection):
    """The loss's gradient for every prefix parameter against central differences
    (20 random entries of each tensor), with padding and an ignored label."""
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm = get_peft_model(base_from(hf_model, "float64"), ours_config(projection), seed=1)
    labels = IDS.copy()
    labels[1, 4] = -100
    _, grads = pm.loss_and_grads(IDS, labels, MASK)
    rng = np.random.default_rng(0)
    for name, x in pm.trainable_parameters().items():
        flat = x.reshape(-1)                                      # a view: nudges reach the model
        picks = rng.choice(flat.size, size=min(20, flat.size), replace=False)
        sub = np.zeros(len(picks))
        num = numerical_gradient(lambda: _nudged_loss(pm, flat, picks, sub, labels), sub, h=1e-5)
        assert cmp(f"fd {name}", grads[name].reshape(-1)[picks], num, 1e-6) <= 1e-6


def _nudged_loss(pm, flat, picks, sub, labels):
    """The loss with ``sub`` added to the picked entries (numerical_gradient nudges sub)."""
    old = flat[picks].copy()
    flat[picks] += sub
    try:
        return pm.loss(IDS, labels, MASK)
    finally:
        flat[picks] = old


@PROJECTION
def test_greedy_generate_equals_peft(hf_checkpoint, projection):
    """Batch 1 and a left-padded batch 2: peft's generate adds P to the positions that
    transformers builds from the mask (cumsum - 1); minipeft's generate does the same."""
    import torch
    _, hf_model = hf_checkpoint(seed=3, initializer_range=0.2, **{**SMALL, "n_positions": 32})
    pm_t, pm, _ = peft_pair(hf_model, projection)
    ids, mask, new = np.array([[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]]), np.array([[0, 0, 1, 1, 1], [1] * 5]), 12
    with torch.no_grad():
        one = pm_t.generate(input_ids=torch.as_tensor(ids[1:]), max_new_tokens=new, do_sample=False,
                            pad_token_id=0).numpy()
        two = pm_t.generate(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                            max_new_tokens=new, do_sample=False, pad_token_id=0).numpy()
    ours = pm.generate(ids[1:], new, eos_token_id=None)
    assert ours.tolist() == one.tolist()
    assert pm.generate(ids, new, attention_mask=mask, eos_token_id=None).tolist() == two.tolist()
    assert len(set(one[0, 5:].tolist())) > 2                          # not one repeated token
    pm.peft_config["default"].convention = "adapters"                 # positions matter here
    assert pm.generate(ids[1:], new, eos_token_id=None).tolist() != one.tolist()


def test_greedy_generate_equals_adapterhub(hf_checkpoint):
    """AdapterHub's convention in generate: its cache holds the real tokens only and each
    step prepends the prefix; minipeft's holds the prefix too. The same tokens."""
    import torch
    _, hf_model = hf_checkpoint(seed=3, initializer_range=0.2, **{**SMALL, "n_positions": 32})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm, pm, _ = adapters_pair(hf_model, True)
    ids, mask, new = np.array([[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]]), np.array([[0, 0, 1, 1, 1], [1] * 5]), 12
    with torch.no_grad():
        theirs = tm.generate(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                             max_new_tokens=new, do_sample=False, pad_token_id=0).numpy()
    assert pm.generate(ids, new, attention_mask=mask, eos_token_id=None).tolist() == theirs.tolist()
    assert len(set(theirs[1, 5:].tolist())) > 2


@pytest.mark.parametrize("convention", ["peft", "adapters"])
def test_kv_cache_equals_full_forward(hf_checkpoint, convention):
    """Each cached step's logits equal a full forward of the whole sequence (the cache
    holds P + t entries; positions continue as each convention has them)."""
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm = get_peft_model(base_from(hf_model, "float64"), ours_config(True, convention=convention))
    ids = np.array([[3, 14, 15, 9, 2, 6, 5, 35]])
    full = pm(ids)
    logits, cache = pm.forward(ids[:, :5], use_cache=True)
    assert cache["present_key_values"][0][0].shape[2] == P + 5
    steps = [logits]
    for t in range(5, ids.shape[1]):
        logits, cache = pm.forward(ids[:, t:t + 1], attention_mask=np.ones((1, t + 1)),
                                   past_key_values=cache["present_key_values"], use_cache=True)
        steps.append(logits)
    assert cmp("cached steps", np.concatenate(steps, axis=1), full, 1e-12) <= 1e-12
    with pytest.raises(InputError, match="KV cache"):
        pm.backward(np.ones_like(logits), cache)


def test_conventions_differ_by_positions_only(hf_checkpoint):
    """peft's convention = AdapterHub's with position_ids shifted by P."""
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    ours = {c: get_peft_model(base_from(hf_model, "float64"), ours_config(False, convention=c))
            for c in ("peft", "adapters")}
    pos = np.arange(IDS.shape[1])[None]
    peft_logits = ours["peft"](IDS)
    assert cmp("shifted", ours["adapters"].forward(IDS, position_ids=pos + P)[0], peft_logits, 1e-12) <= 1e-12
    assert cmp("explicit", ours["peft"].forward(IDS, position_ids=pos)[0], peft_logits, 1e-12) <= 1e-12
    assert np.abs(ours["adapters"](IDS) - peft_logits).max() > 1e-3


@PROJECTION
def test_interop_both_ways(hf_checkpoint, tmp_path, projection):
    """peft's saved adapter loads in minipeft and the other way round; both write the same
    config, and the projection's MLP is dropped (the saved prefix is its output)."""
    import torch
    from peft import PeftConfig
    from peft import PeftModel as TorchPeftModel
    folder, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm_t, pm, _ = peft_pair(hf_model, projection, "float32")
    with torch.no_grad():
        ref = pm_t(input_ids=torch.as_tensor(IDS)).logits.numpy()
    pm_t.save_pretrained(tmp_path / "peft")
    pm.save_pretrained(tmp_path / "ours")
    cfg = lambda d: json.loads((tmp_path / d / "adapter_config.json").read_text())
    assert cfg("ours") == cfg("peft")
    loaded = PeftModel.from_pretrained(GPT2.from_pretrained(folder), tmp_path / "peft")
    assert isinstance(loaded, PrefixTuningModel) and list(loaded.prefix["default"]) == [FLAT]
    assert cmp("peft -> minipeft", loaded(IDS), ref, 1e-4) <= 1e-4
    theirs = TorchPeftModel.from_pretrained(copy.deepcopy(hf_model), tmp_path / "ours")
    with torch.no_grad():
        back = theirs(input_ids=torch.as_tensor(IDS)).logits.numpy()
    assert cmp("minipeft -> peft", back, ref, 1e-4) <= 1e-4
    assert PeftConfig.from_pretrained(tmp_path / "ours").prefix_projection == projection
    trainable = PeftModel.from_pretrained(GPT2.from_pretrained(folder), tmp_path / "peft",
                                          is_trainable=True)          # peft refuses; here: flat
    assert list(trainable.loss_and_grads(IDS, IDS)[1]) == [FLAT]


def test_adapters_convention_saves_its_key(hf_checkpoint, tmp_path):
    """The extra "convention" key: minipeft reads it back; peft warns and ignores it."""
    from peft import PeftConfig
    folder, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm = get_peft_model(GPT2.from_pretrained(folder), ours_config(True, convention="adapters"))
    pm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["convention"] == "adapters"
    loaded = PeftModel.from_pretrained(GPT2.from_pretrained(folder), tmp_path)
    assert loaded.active_peft_config.convention == "adapters"
    assert cmp("reloaded", loaded(IDS), pm(IDS), 1e-6) <= 1e-6
    with pytest.warns(UserWarning, match="convention"):
        PeftConfig.from_pretrained(tmp_path)


def test_inits_and_disable(hf_checkpoint):
    """peft's init distributions (N(0, 1) embedding, U(±1/√fan_in) Linear), init_weights
    "zero", and disable_adapter giving the base model back."""
    _, hf_model = hf_checkpoint(seed=3, n_layer=2, n_head=2, n_embd=64, n_positions=64,
                                vocab_size=50)
    base = base_from(hf_model, "float64")
    t = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=30, prefix_projection=True,
                                                encoder_hidden_size=100)).trainable_parameters()
    assert abs(t[MLP[0]].std() - 1) < 0.05 and abs(t[MLP[0]].mean()) < 0.05
    for name, fan_in in ((MLP[1], 64), (MLP[2], 64), (MLP[3], 100), (MLP[4], 100)):
        assert np.abs(t[name]).max() <= 1 / np.sqrt(fan_in)
        assert np.abs(t[name]).max() > 0.9 / np.sqrt(fan_in)        # fills the interval
    flat = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=30)).trainable_parameters()[FLAT]
    assert flat.shape == (30, 2 * 2 * 64) and abs(flat.std() - 1) < 0.02
    zero = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True,
                                                   init_weights="zero"))
    assert not zero.prefix_output()[0].any()
    with zero.disable_adapter():
        assert cmp("disabled", zero(IDS), base(IDS), 1e-12) <= 1e-12      # the kernel vs the twin
    assert not np.allclose(zero(IDS), base(IDS))                      # zero k, v still take weight


def test_errors(hf_checkpoint, tmp_path):
    folder, hf_model = hf_checkpoint(seed=3, **SMALL)
    for bad in (0, -1, None, True, 2.5):
        with pytest.raises(ConfigError, match="num_virtual_tokens"):
            PrefixTuningConfig(num_virtual_tokens=bad)
    for bad in (0, -3):
        with pytest.raises(ConfigError, match="encoder_hidden_size"):
            PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=True, encoder_hidden_size=bad)
    with pytest.raises(ConfigError, match="convention"):
        PrefixTuningConfig(num_virtual_tokens=2, convention="hf")
    with pytest.raises(ConfigError, match="causal LM"):
        PrefixTuningConfig(num_virtual_tokens=2, task_type="SEQ_2_SEQ_LM")
    base = base_from(hf_model, "float64")
    with pytest.raises(ConfigError, match="n_positions=16"):
        get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=16))
    with pytest.raises(ConfigError, match="token_dim=32, but this model has n_embd=24"):
        get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=2, token_dim=32))
    pm = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=10))
    with pytest.raises(InputError, match=r"10 virtual tokens \+ 0 cached \+ 7 new tokens = 17 "
                                         r"positions exceeds n_positions=16. Use at most 6 tokens"):
        pm(IDS)
    with pytest.raises(InputError, match="10 \\+ 3 prompt tokens \\+ max_new_tokens=4 = 17"):
        pm.generate(IDS[:1, :3], 4)
    adapters = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=10, convention="adapters"))
    assert adapters(IDS).shape == (2, 7, 50)                          # positions 0..T-1: fits
    assert adapters.generate(IDS[:1, :3], 4).shape == (1, 7)
    pm.save_pretrained(tmp_path)
    small = GPT2(GPT2Config(n_layer=1, n_head=3, n_embd=24, n_positions=16, vocab_size=50),
                 {k: v for k, v in base.params.items() if ".h.1." not in k})
    with pytest.raises((ConfigError, CheckpointError), match="n_layer"):
        PeftModel.from_pretrained(small, tmp_path)
