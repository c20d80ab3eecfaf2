"""Generation with a KV cache: against a full recompute, transformers and peft.

- The KV cache changes the order of work, not the maths: each step's logits equal
  a full forward over the whole sequence to 1e-12 in float64 (only BLAS blocking
  differs; seen ~1e-15).
- Greedy tokens equal transformers' / peft's ``generate(do_sample=False)`` on the same
  weights, exactly. Both sides run in float64 (both then take the argmax of float32
  scores), so no near-tie can flip between two correct implementations.
- Sampling cannot share torch's random stream, so it is checked piecewise: the kept
  sets of top-k / top-p equal transformers' warpers, draws follow softmax, a seed repeats.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import build_hf_model

from minipeft import GPT2, GPT2Config, LoraConfig, get_peft_model
from minipeft.errors import ConfigError, InputError
from minipeft.io.checkpoint import normalize_names
from minipeft.model.generate import _positions, filter_scores, sample
from minipeft.testing import cmp

SMALL = dict(n_layer=2, n_embd=24, n_head=3, vocab_size=50, n_positions=32)
TOL_CACHE = 1e-12        # float64, the same expressions; only matmul blocking differs


@pytest.fixture(scope="module")
def pair():
    """-> (transformers model, minipeft GPT2), float64, equal weights.

    Weights scaled ×16: at GPT-2's init (std 0.02) a tiny random model repeats one
    token forever, which would hide position or cache bugs behind a constant answer."""
    import torch
    hf = build_hf_model(1, **SMALL).double()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".weight") and ".ln_" not in name and "ln_f" not in name:
                p.mul_(16.0)
    state = {k: v.numpy().copy() for k, v in hf.state_dict().items()}
    model = GPT2(GPT2Config.from_hf_dict(hf.config.to_dict()), normalize_names(state, "t"))
    return hf, model


def lora_model(model, seed=0):
    """LoRA on c_attn and mlp.c_fc with random non-zero A and B."""
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_fc"]))
    rng = np.random.default_rng(seed)
    for name, p in pm.trainable_parameters().items():
        p[...] = 0.3 * rng.standard_normal(p.shape)
    return pm


def left_padded(rng, lengths, T, V, pad_id):
    """Rows of ``lengths`` real tokens, left-padded to T with ``pad_id`` -> (ids, mask)."""
    ids = np.full((len(lengths), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(lengths), T), dtype=np.int64)
    for b, n in enumerate(lengths):
        ids[b, T - n:] = rng.integers(1, V, size=n)
        mask[b, T - n:] = 1
    return ids, mask


# ---------------------------------------------------------------- (a) cache == recompute
@pytest.mark.parametrize("peft", [False, True], ids=["gpt2", "lora"])
@pytest.mark.parametrize("padded", [False, True], ids=["no-mask", "left-padded"])
def test_cached_logits_equal_a_full_recompute(pair, peft, padded):
    _, model = pair
    model = lora_model(model) if peft else model
    rng = np.random.default_rng(0)
    T, prompt = 12, 5
    if padded:
        ids, mask = left_padded(rng, [12, 9, 6], T, 50, pad_id=0)
        pos = _positions(mask.astype(bool))
    else:
        ids, mask, pos = rng.integers(0, 50, size=(2, T)), None, None
    full = model.forward(ids, mask, position_ids=pos)[0]                # (B, T, V)

    sub = (lambda a, t0, t1: None if a is None else a[:, t0:t1])
    logits, cache = model.forward(ids[:, :prompt], sub(mask, 0, prompt), sub(pos, 0, prompt),
                                  use_cache=True)
    steps = [logits]
    for t in range(prompt, T):                                          # one token at a time
        logits, cache = model.forward(ids[:, t:t + 1], sub(mask, 0, t + 1), sub(pos, t, t + 1),
                                      past_key_values=cache["present_key_values"], use_cache=True)
        steps.append(logits)
    assert [k.shape for k, _ in cache["present_key_values"]] == [(len(ids), 3, T, 8)] * 2
    assert cmp("cached vs full logits", np.concatenate(steps, axis=1), full, TOL_CACHE) <= TOL_CACHE


# ---------------------------------------------------------------- (b) greedy == transformers
def hf_greedy(hf, ids, mask, max_new_tokens, eos, pad):
    import torch
    mask = np.ones_like(ids) if mask is None else mask      # explicit: no mask guessed from pad
    with torch.no_grad():
        out = hf.generate(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                          max_new_tokens=max_new_tokens, do_sample=False,
                          eos_token_id=eos, pad_token_id=pad)
    return out.numpy()


@pytest.mark.parametrize("case", ["batch1", "leftpad2"])
def test_greedy_equals_transformers(pair, case):
    hf, model = pair
    rng = np.random.default_rng(1)
    if case == "batch1":
        ids, mask = rng.integers(0, 50, size=(1, 7)), None
    else:
        ids, mask = left_padded(rng, [8, 5], 8, 50, pad_id=0)
    n = 16
    # an eos that never occurs: every row runs to max_new_tokens
    free = hf_greedy(hf, ids, mask, n, eos=None, pad=0)
    unused = next(t for t in range(50) if t not in free)
    ours = model.generate(ids, n, attention_mask=mask, eos_token_id=unused, pad_token_id=0)
    assert ours.dtype == np.int64 and ours.shape == free.shape == (len(ids), ids.shape[1] + n)
    np.testing.assert_array_equal(ours, free)
    assert all(len(set(row)) >= 4 for row in free[:, -n:]), "a row repeats itself: weak check"

    # an eos that occurs mid-way in row 0: that row stops and is padded (pad given, or eos)
    eos = int(free[0, ids.shape[1] + n // 3])
    for pad in (7, None):
        theirs = hf_greedy(hf, ids, mask, n, eos=eos, pad=eos if pad is None else pad)
        ours = model.generate(ids, n, attention_mask=mask, eos_token_id=eos, pad_token_id=pad)
        np.testing.assert_array_equal(ours, theirs)
        assert (ours[0] == eos).any()


def test_greedy_with_lora_equals_peft(pair):
    import torch
    from peft import LoraConfig as TorchLoraConfig
    from peft import get_peft_model as torch_get_peft_model
    hf, model = pair
    pm_t = torch_get_peft_model(copy.deepcopy(hf), TorchLoraConfig(r=4, target_modules=["c_attn"])).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pm_t.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        pm = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"]))
    ours = pm.trainable_parameters()
    for name, p in pm_t.named_parameters():
        if p.requires_grad:                 # ...lora_A.default.weight -> ...lora_A.weight
            ours[name.replace(".default.", ".")][...] = p.detach().numpy()

    ids, mask = left_padded(np.random.default_rng(2), [7, 4], 7, 50, pad_id=0)
    theirs = hf_greedy(pm_t, ids, mask, 14, eos=None, pad=0)
    np.testing.assert_array_equal(pm.generate(ids, 14, attention_mask=mask, eos_token_id=None), theirs)
    base = model.generate(ids, 14, attention_mask=mask, eos_token_id=None)
    assert (base != theirs).any(), "the adapter changed nothing: the check would be weak"


# ---------------------------------------------------------------- (c) sampling
def test_sampling_is_seeded_and_top_k_1_is_greedy(pair):
    _, model = pair
    ids = np.random.default_rng(3).integers(0, 50, size=(2, 5))
    kw = dict(do_sample=True, temperature=1.5, top_p=0.9, eos_token_id=None)
    a = model.generate(ids, 20, seed=7, **kw)
    np.testing.assert_array_equal(a, model.generate(ids, 20, seed=7, **kw))
    assert (a != model.generate(ids, 20, seed=8, **kw)).any()
    greedy = model.generate(ids, 20, eos_token_id=None)
    np.testing.assert_array_equal(model.generate(ids, 20, do_sample=True, top_k=1, seed=0,
                                                 eos_token_id=None), greedy)


SETTINGS = [(1, None), (5, None), (40, None), (200, None), (None, 0.05), (None, 0.5), (None, 0.9),
            (None, 0.999), (None, 1.0), (10, 0.7), (3, 0.2)]


def hf_filter(scores, top_k, top_p):
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
    ref = torch.as_tensor(scores)
    if top_k is not None:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p is not None:
        ref = TopPLogitsWarper(top_p)(None, ref)
    return ref.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kept_sets_equal_transformers_warpers(dtype):
    scores = (3 * np.random.default_rng(4).standard_normal((64, 100))).astype(dtype)
    for top_k, top_p in SETTINGS:
        kept = np.isfinite(filter_scores(scores, top_k, top_p))
        np.testing.assert_array_equal(kept, np.isfinite(hf_filter(scores, top_k, top_p)),
                                      err_msg=f"top_k={top_k} top_p={top_p}")


def test_kept_sets_with_tied_scores():
    """top-k keeps every tie of the k-th score, as transformers does. When tied scores
    straddle the top-p boundary, transformers keeps whichever torch's unstable sort puts
    last; minipeft drops the lower ids first (a stable sort): the same number of tokens,
    with the same scores, is kept."""
    scores = np.random.default_rng(5).integers(0, 6, size=(32, 100)).astype(np.float32)
    for top_k, top_p in SETTINGS:
        ours, ref = filter_scores(scores, top_k, top_p), hf_filter(scores, top_k, top_p)
        if top_p is None or top_p == 1.0:
            np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
        for a, b in zip(ours, ref):
            np.testing.assert_array_equal(np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)]),
                                          err_msg=f"top_k={top_k} top_p={top_p}")


def test_draws_follow_softmax():
    scores = np.array([[2.0, 0.5, -np.inf, 1.0, -1.0]], dtype=np.float32)
    p = np.exp(scores[0] - scores.max())
    p /= p.sum()
    n = 200_000
    draws = sample(np.repeat(scores, n, axis=0), np.random.default_rng(0))
    freq = np.bincount(draws, minlength=5) / n
    # 5 standard errors of a binomial proportion: fails by chance ~1e-6 of the time
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12), (freq, p)


# ---------------------------------------------------------------- (d) errors
def test_bad_arguments_are_refused_clearly(pair):
    _, model = pair
    ids = np.zeros((1, 10), dtype=np.int64)
    with pytest.raises(InputError, match="max_new_tokens must be an integer >= 0"):
        model.generate(ids, -1)
    with pytest.raises(InputError, match="max_new_tokens must be an integer"):
        model.generate(ids, 2.0)
    with pytest.raises(InputError, match=r"exceeds this model's n_positions=32. Ask for at most 22"):
        model.generate(ids, 23)
    with pytest.raises(ConfigError, match="temperature must be > 0 when sampling"):
        model.generate(ids, 3, do_sample=True, temperature=0)
    for top_p in (0, 0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"top_p must be in \(0, 1\]"):
            model.generate(ids, 3, do_sample=True, top_p=top_p)
    for top_k in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="top_k must be an integer >= 1"):
            model.generate(ids, 3, do_sample=True, top_k=top_k)
    with pytest.raises(ConfigError, match="eos_token_id must be a token id in 0..49"):
        model.generate(ids, 3, eos_token_id=50256)
    with pytest.warns(UserWarning, match="only act when do_sample=True"):
        model.generate(ids, 1, top_k=5)
    assert model.generate(ids, 0).shape == (1, 10)


def test_bad_kv_cache_is_refused(pair):
    _, model = pair
    ids = np.zeros((2, 4), dtype=np.int64)
    _, cache = model.forward(ids, use_cache=True)
    past = cache["present_key_values"]
    with pytest.raises(InputError, match="must match the 4 cached tokens"):
        model.forward(ids[:, :1], np.ones((2, 1)), past_key_values=past)
    with pytest.raises(InputError, match=r"expected \(B=1"):
        model.forward(ids[:1, :1], past_key_values=past)
    with pytest.raises(InputError, match="list of 2"):
        model.forward(ids[:, :1], past_key_values=past[:1])
    with pytest.raises(InputError, match="4 cached \\+ 29 new tokens"):
        model.forward(np.zeros((2, 29), dtype=np.int64), past_key_values=past)
    logits, cache = model.forward(ids[:, :1], past_key_values=past)
    with pytest.raises(InputError, match="backward through a KV cache"):
        model.backward(np.ones_like(logits), cache)


def test_generate_runs_a_training_peft_model_without_dropout():
    import warnings

    from minipeft import GPT2, GPT2Config, LoraConfig, get_peft_model
    from minipeft.train.pretrain import init_params
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(GPT2(cfg, init_params(cfg, seed=2)),
                            LoraConfig(r=2, target_modules="all-linear", lora_dropout=0.5))
    for a in pm.trainable_parameters().values():
        a[...] = np.random.default_rng(0).standard_normal(a.shape)
    ids = np.array([[1, 2, 3, 4]])
    expected = pm.generate(ids, 8)                       # eval mode
    pm.train(seed=1)
    assert np.array_equal(pm.generate(ids, 8), expected) and pm.training
