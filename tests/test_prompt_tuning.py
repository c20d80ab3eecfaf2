"""Prompt tuning against peft's PROMPT_TUNING on transformers' GPT-2, and on its own.

The same random base checkpoint on both sides; peft's prompt embeddings set to random
values and copied into minipeft. Compared: the logits of the real tokens (peft returns
P + T positions, minipeft the last T), peft's loss (labels padded with -100 for the
virtual tokens), the prompt's gradient, greedy generate, the saved files both ways,
the inits, and float64 finite differences.

Tolerances (max|a - b| / max|b| per tensor):
- float64 1e-10: the same expressions in float64, summed in another order (seen ~1e-15).
- float32 1e-4: float32 sums over C, T or B in another order than torch (seen ~1e-7).
- kernels vs twins 1e-12 / 1e-6: the same additions; the batch sum in another order.
- finite differences 1e-7: central differences, h = 1e-4: truncation ~h² and round-off
  ~1e-16 / h, both ~1e-9 relative to these gradients (seen 3e-9; h = 1e-6 gives 2e-7).
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from minipeft import (
    GPT2,
    ConfigError,
    GPT2Config,
    InputError,
    PeftModel,
    PromptTuningConfig,
    PromptTuningModel,
    WeightsNotFoundError,
    get_peft_model,
)
from minipeft.io.checkpoint import normalize_names
from minipeft.kernels import prompt as K
from minipeft.peft import prompt as T
from minipeft.testing import cmp, numerical_gradient
from minipeft.train.pretrain import init_params

TOL = {"float64": 1e-10, "float32": 1e-4}
SMALL = dict(n_layer=2, n_head=3, n_embd=24, n_positions=16, vocab_size=50)
P = 3
KEY = "prompt_embeddings"


def base_from(hf_model, dtype):
    """minipeft's GPT2 with the weights of a transformers GPT-2, in ``dtype``."""
    state = {k: v.detach().numpy().astype(dtype) for k, v in hf_model.state_dict().items()}
    return GPT2(GPT2Config.from_hf_dict(hf_model.config.to_dict()), normalize_names(state, "t"))


def make_pair(hf_model, dtype="float64", seed=0, **config):
    """-> (peft model, minipeft PromptTuningModel) with the same random prompt."""
    import torch
    from peft import PromptTuningConfig as TorchConfig
    from peft import get_peft_model as torch_get_peft_model
    config = {"num_virtual_tokens": P, **config}
    # peft makes the prompt in float32 whatever the model's dtype: cast the whole model after
    pm_t = torch_get_peft_model(copy.deepcopy(hf_model), TorchConfig(task_type="CAUSAL_LM", **config))
    pm_t = pm_t.to(getattr(torch, dtype)).eval()
    w = pm_t.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(seed), dtype=w.dtype))
    pm = get_peft_model(base_from(hf_model, dtype), PromptTuningConfig(**config))
    assert list(pm.trainable_parameters()) == [KEY]
    pm.trainable_parameters()[KEY][...] = w.detach().numpy()
    return pm_t, pm


def torch_loss_and_grad(pm_t, ids, labels, mask=None):
    """peft's forward with labels, which pads them with -100 for the virtual tokens. Its
    loss upcasts the logits with .float() (float32 even for a float64 model), so the loss
    compared is torch's cross_entropy on the same padded labels in the model's dtype,
    checked against peft's own to float32 precision."""
    import torch
    pm_t.zero_grad()
    lab = torch.as_tensor(labels)
    out = pm_t(torch.as_tensor(ids), attention_mask=None if mask is None else torch.as_tensor(mask),
               labels=lab)
    padded = torch.cat([torch.full((lab.shape[0], P), -100), lab], dim=1)     # (B, P + T)
    V = out.logits.shape[-1]
    loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, V),
                                             padded[:, 1:].reshape(-1), ignore_index=-100)
    assert abs(loss.item() - out.loss.item()) <= 1e-6 * abs(loss.item())
    loss.backward()
    grad = pm_t.prompt_encoder["default"].embedding.weight.grad.numpy().copy()
    return out.logits.detach().numpy(), loss.item(), grad


def batch(seed=0, B=2, T_=9, V=SMALL["vocab_size"]):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(B, T_))
    labels = ids.copy()
    labels[1, 3] = -100
    mask = np.ones_like(ids)
    mask[0, :2] = 0                                     # left padding
    labels[0, :2] = -100
    return ids, labels, mask


@pytest.mark.parametrize("dtype,kernels", [("float64", True), ("float64", False), ("float32", True)],
                         ids=["float64-numba", "float64-numpy", "float32-numba"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "left-padding"])
def test_prompt_tuning_equals_peft(hf_checkpoint, dtype, kernels, masked, capsys):
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm_t, pm = make_pair(hf_model, dtype)
    pm.use_kernels = kernels
    pm_t.print_trainable_parameters()
    pm.print_trainable_parameters()
    theirs, ours = capsys.readouterr().out.strip().splitlines()
    assert ours == theirs and ours.startswith("trainable params: 72 ")
    ids, labels, mask = batch()
    mask = mask if masked else None
    logits_t, loss_t, grad_t = torch_loss_and_grad(pm_t, ids, labels, mask)
    assert logits_t.shape == (2, P + 9, SMALL["vocab_size"])
    tol = TOL[dtype]
    assert cmp("logits", pm(ids, mask), logits_t[:, P:], tol) <= tol
    loss, grads = pm.loss_and_grads(ids, labels, mask)
    assert cmp("loss", loss, loss_t, tol) <= tol
    assert cmp("dprompt", grads[KEY], grad_t, tol) <= tol


def test_finite_differences_float64(hf_checkpoint):
    """The loss and the public forward/backward (random dlogits) against central differences."""
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm = get_peft_model(base_from(hf_model, "float64"), PromptTuningConfig(num_virtual_tokens=P))
    prompt = pm.trainable_parameters()[KEY]                     # N(0, 1): not a special value
    ids, labels, mask = batch(seed=1)
    loss, grads = pm.loss_and_grads(ids, labels, mask)
    num = numerical_gradient(lambda: pm.loss(ids, labels, mask), prompt, h=1e-4)
    assert cmp("dloss/dprompt vs finite differences", grads[KEY], num, 1e-7) <= 1e-7
    dout = np.random.default_rng(2).standard_normal((2, 9, SMALL["vocab_size"]))
    logits, cache = pm.forward(ids, mask)
    analytic = pm.backward(dout, cache)[KEY]
    num = numerical_gradient(lambda: float(np.sum(pm(ids, mask) * dout)), prompt, h=1e-4)
    assert cmp("backward(random dlogits) vs finite differences", analytic, num, 1e-7) <= 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_equal_twins(dtype):
    rng = np.random.default_rng(0)
    B, T_, P_, C, V, NP = 3, 7, 4, 10, 30, 16
    f = lambda *s: rng.standard_normal(s).astype(dtype)
    ids = rng.integers(0, V, size=(B, T_))
    prompt = f(C, P_).T                                          # strided: (P, C) view of (C, P)
    wte, wpe, dx = f(V, C), f(NP, C), f(B, P_ + T_, C)
    tol = 1e-12 if dtype == np.float64 else 1e-6                 # the batch sum in another order
    for pos in (np.arange(T_)[None], rng.integers(0, NP - P_, size=(B, T_))):   # (1, T) and (B, T)
        full = T.prompt_positions(P_, pos)
        x_k, c_k = K.prompt_embedding_forward(ids, prompt, wte, wpe, full)
        x_t, c_t = T.prompt_embedding_forward(ids, prompt, wte, wpe, full)
        assert c_k == c_t and x_k.dtype == x_t.dtype == dtype
        assert cmp("x", x_k, x_t, tol) <= tol
        assert np.array_equal(x_t[:, :P_], np.broadcast_to(prompt + wpe[:P_], (B, P_, C)))
    d_k, d_t = K.prompt_embedding_backward(dx, c_t), T.prompt_embedding_backward(dx, c_t)
    assert d_k.dtype == dtype and cmp("dprompt", d_k, d_t, tol) <= tol


@pytest.mark.filterwarnings("ignore:Position ids are not supported")   # peft drops them
def test_greedy_generate_equals_peft(hf_checkpoint):
    """Batch 1, and a left-padded batch of 2. peft drops position_ids in prompt tuning,
    so in peft a padded row's tokens sit after its padding and its output depends on it;
    minipeft positions real tokens by the mask: the padded row gives what peft gives for
    that row alone, and the unpadded row what peft gives in the batch."""
    import torch
    # weights 10x GPT-2's init: a tiny random model at the usual scale repeats one token
    _, hf_model = hf_checkpoint(seed=3, initializer_range=0.2, **SMALL)
    pm_t, pm = make_pair(hf_model, "float64", seed=4)

    def peft_generate(ids, mask, n):
        with torch.no_grad():
            return pm_t.generate(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                                 max_new_tokens=n, do_sample=False, pad_token_id=0).numpy()

    ids = np.array([[3, 7, 9, 11, 2]])
    ours = pm.generate(ids, 8)
    assert ours.tolist() == peft_generate(ids, np.ones_like(ids), 8).tolist()
    assert len(set(ours[0, 5:].tolist())) > 3                    # not one token repeated
    ids2 = np.array([[0, 0, 5, 6, 8], [3, 7, 9, 11, 2]])
    mask2 = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    ours2 = pm.generate(ids2, 7, attention_mask=mask2)
    assert ours2[1].tolist() == peft_generate(ids2, mask2, 7)[1].tolist()
    alone = peft_generate(ids2[:1, 2:], mask2[:1, 2:], 7)
    assert ours2[0, 2:].tolist() == alone[0].tolist() and len(set(alone[0, 3:].tolist())) > 2


def test_interop_both_ways(hf_checkpoint, tmp_path):
    import torch
    from peft import PeftModel as TorchPeftModel
    folder, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm_t, pm = make_pair(hf_model, "float64", seed=5)
    ids, _, _ = batch()
    with torch.no_grad():
        logits_t = pm_t(torch.as_tensor(ids)).logits.numpy()[:, P:]
    pm_t.save_pretrained(tmp_path / "peft")
    loaded = PeftModel.from_pretrained(base_from(hf_model, "float64"), tmp_path / "peft")
    assert isinstance(loaded, PromptTuningModel) and loaded.trainable_parameters() == {}
    assert cmp("peft -> minipeft", loaded(ids), logits_t, 1e-10) <= 1e-10
    trainable = PeftModel.from_pretrained(base_from(hf_model, "float64"), tmp_path / "peft",
                                          is_trainable=True)
    assert np.array_equal(trainable.trainable_parameters()[KEY], pm.trainable_parameters()[KEY])

    prompt = pm.trainable_parameters()[KEY]
    # other values than peft's, float32 ones: peft loads them into its float32 prompt
    prompt[...] = (0.5 * prompt).astype(np.float32)
    pm.save_pretrained(tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["adapter_config.json",
                                                                    "adapter_model.safetensors"]
    theirs_cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    ours_cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert ours_cfg == {**theirs_cfg, "base_model_name_or_path": None}
    back = TorchPeftModel.from_pretrained(copy.deepcopy(hf_model).to(torch.float64), tmp_path / "ours")
    with torch.no_grad():
        logits_back = back.eval()(torch.as_tensor(ids)).logits.numpy()[:, P:]
    assert cmp("minipeft -> peft", logits_back, pm(ids), 1e-10) <= 1e-10


def test_inits(hf_checkpoint):
    """TEXT equals peft's (its AutoTokenizer reads the bundled tokenizer folder too);
    RANDOM is N(0, 1) and SAMPLE_VOCAB rows of wte, as peft's (another random stream)."""
    import torch
    from peft import PromptTuningConfig as TorchConfig
    from peft import get_peft_model as torch_get_peft_model

    from minipeft.io.paths import bundled_dir
    _, hf_model = hf_checkpoint(seed=1, n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=2048)
    for text, n in (("Hello there, good sir", 16), ("To be, or not to be, that is the question", 5)):
        kw = dict(num_virtual_tokens=n, prompt_tuning_init="TEXT", prompt_tuning_init_text=text)
        pm_t = torch_get_peft_model(copy.deepcopy(hf_model), TorchConfig(
            task_type="CAUSAL_LM", tokenizer_name_or_path=str(bundled_dir("tiny-shakespeare")), **kw))
        pm = get_peft_model(base_from(hf_model, "float32"),
                            PromptTuningConfig(tokenizer_name_or_path="tiny-shakespeare", **kw))
        assert np.array_equal(pm.trainable_parameters()[KEY],
                              pm_t.prompt_encoder["default"].embedding.weight.detach().numpy())
    base = base_from(hf_model, "float64")
    wte = base.params["transformer.wte.weight"]
    rnd = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=60), seed=1).prompts["default"]
    assert abs(rnd.mean()) < 0.15 and abs(rnd.std() - 1) < 0.1   # 960 draws: ~5 standard errors
    with torch.no_grad():
        w_t = torch.nn.Embedding(60, 16).weight                  # peft's RANDOM
    assert abs(w_t.std().item() - rnd.std()) < 0.1
    vocab = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=60,
                                                    prompt_tuning_init="SAMPLE_VOCAB")).prompts["default"]
    rows = [np.flatnonzero((wte == r).all(axis=1)) for r in vocab]
    assert all(len(j) == 1 for j in rows) and len({int(j[0]) for j in rows}) > 50


def test_cache_generation_disable_and_adapters(hf_checkpoint):
    """Decoding with the KV cache equals a full forward; disable_adapter gives the base;
    a second adapter of another length runs on its own."""
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    base = base_from(hf_model, "float64")
    pm = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=P))
    ids, _, mask = batch(T_=6)
    full = pm(ids, mask)
    logits, cache = pm.forward(ids[:, :4], mask[:, :4], use_cache=True)
    step, _ = pm.forward(ids[:, 4:], mask, past_key_values=cache["present_key_values"])
    assert cmp("KV cache", np.concatenate([logits, step], axis=1), full, 1e-12) <= 1e-12
    with pm.disable_adapter():
        assert np.array_equal(pm(ids, mask), base(ids, mask))
    pm.add_adapter("long", PromptTuningConfig(num_virtual_tokens=5), seed=3)
    pm.set_adapter("long")
    assert pm.num_virtual_tokens == 5 and pm(ids).shape == (2, 6, SMALL["vocab_size"])
    assert not np.allclose(pm(ids), full)


def test_errors(hf_checkpoint):
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    base = base_from(hf_model, "float32")
    for bad in (0, -2, None, 1.5, True):
        with pytest.raises(ConfigError, match="num_virtual_tokens must be a positive integer"):
            PromptTuningConfig(num_virtual_tokens=bad)
    with pytest.raises(ConfigError, match="prompt_tuning_init must be one of"):
        PromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="VOCAB")
    with pytest.raises(ConfigError, match="needs prompt_tuning_init_text"):
        PromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="TEXT", tokenizer_name_or_path="x")
    with pytest.raises(ConfigError, match="needs tokenizer_name_or_path"):
        PromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="TEXT", prompt_tuning_init_text="hi")
    # GPT-2's vocabulary is bundled, so "gpt2" loads offline; its ids do not fit this tiny model
    with pytest.raises(ConfigError, match="outside this model's vocabulary of 50"):
        get_peft_model(base, PromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="TEXT",
                                                prompt_tuning_init_text="hi", tokenizer_name_or_path="gpt2"))
    with pytest.raises(WeightsNotFoundError):
        get_peft_model(base, PromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="TEXT",
                                                prompt_tuning_init_text="hi",
                                                tokenizer_name_or_path="no-such-tokenizer"))
    with pytest.raises(ConfigError, match="outside this model's vocabulary of 50"):
        get_peft_model(base, PromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="TEXT",
                                                prompt_tuning_init_text="Good morrow, my lord",
                                                tokenizer_name_or_path="tiny-shakespeare"))
    with pytest.raises(ConfigError, match="leaves no position.*n_positions=16"):
        get_peft_model(base, PromptTuningConfig(num_virtual_tokens=16))
    pm = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=10))
    with pytest.raises(InputError, match=r"10 virtual tokens \+ 7 tokens = 17 exceeds .*n_positions=16"):
        pm(np.zeros((1, 7), dtype=np.int64))
    with pytest.raises(InputError, match="max_new_tokens=2 = 17 exceeds n_positions=16"):
        pm.generate(np.zeros((1, 5), dtype=np.int64), 2)
    logits, cache = pm.forward(np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(InputError, match=r"dlogits has shape \(1, 15, 50\).*\(1, 5, 50\)"):
        pm.backward(np.zeros((1, 15, 50)), cache)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "twins"])
@pytest.mark.parametrize("n_virtual", [1, 2, 5])
def test_shared_virtual_tokens_equal_running_them_in_every_row(dtype, kernels, n_virtual, monkeypatch):
    """The first P - 1 virtual tokens run once for the batch (``_prefix``): logits, the KV
    cache, the loss and the prompt's gradient are those of running all P in every row (what
    peft does; ``_shared`` = 0 forces it), with a padded row and completion-only labels."""
    cfg = GPT2Config(**SMALL)
    base = GPT2(cfg, init_params(cfg, seed=2)).astype(dtype)
    pm = get_peft_model(base, PromptTuningConfig(num_virtual_tokens=n_virtual), seed=4)
    pm.use_kernels = kernels
    rng = np.random.default_rng(6)
    ids = rng.integers(0, 50, size=(3, 8))
    mask = np.ones_like(ids)
    mask[2, :3] = 0                                                  # a left-padded row
    labels = np.where(mask == 1, ids, -100)
    labels[:, :2] = -100                                             # a prompt: completion-only
    shared = (pm.forward(ids, mask, use_cache=True), pm.loss_and_grads(ids, labels, mask))
    monkeypatch.setattr(type(pm), "_shared", staticmethod(lambda P: 0))
    every_row = (pm.forward(ids, mask, use_cache=True), pm.loss_and_grads(ids, labels, mask))
    tol = TOL[dtype]
    (logits, cache), (loss, grads) = shared
    (logits_r, cache_r), (loss_r, grads_r) = every_row
    assert cmp("logits", logits, logits_r, tol) <= tol
    for (k, v), (k_r, v_r) in zip(cache["present_key_values"], cache_r["present_key_values"]):
        assert k.shape == k_r.shape == (3, 3, n_virtual + 8, 8)
        assert cmp("k", k, k_r, tol) <= tol and cmp("v", v, v_r, tol) <= tol
    assert abs(loss - loss_r) <= tol * abs(loss_r)
    assert list(grads) == [KEY] == list(grads_r)
    assert cmp("dprompt", grads[KEY], grads_r[KEY], tol) <= tol
    rows = cache["layers"][0]["attn"][0].shape[2]                    # queries per row in the blocks
    assert rows == (8 + 1 if n_virtual >= 2 else 8 + n_virtual)      # the last virtual token + T
    step, _ = pm.forward(ids[:, -1:], np.concatenate([mask, mask[:, -1:]], axis=1),
                         past_key_values=cache["present_key_values"])   # generation goes on from it
    assert np.isfinite(step).all()
