"""Shared fixtures: GPT-2 checkpoints built with `transformers` (random weights,
``save_pretrained``) and the torch reference of every tensor minipeft computes."""
from __future__ import annotations

import os

import numpy as np
import pytest

from minipeft import GPT2, GPT2Config
from minipeft.train.pretrain import init_params

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # nothing here may touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Nothing in the suite reads ../shared/data: a fresh clone has no such folder. GPT-2's
# vocabulary is bundled (minipeft/assets/gpt2, load_tokenizer("gpt2")).

# The tiny GPT-2 of the API-level tests (hooks, flags, adapter bookkeeping), where the
# numbers are compared with minipeft itself: two blocks, two heads, C = 8.
TINY = GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=16, vocab_size=20)
TINY_IDS = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])


def tiny_gpt2(seed: int = 0) -> GPT2:
    """TINY with minipeft's own random init (float32; .astype for float64)."""
    return GPT2(TINY, init_params(TINY, seed))


def build_hf_model(seed: int = 0, **config):
    """A randomly initialised transformers GPT2LMHeadModel (float32)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config))
    # GPT-2's init leaves layernorm at (1, 0) and biases at 0: randomise them so that
    # a missing or swapped term cannot hide behind an identity or a zero.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """make(seed, **config) -> (folder, torch model): saved with save_pretrained, cached."""
    made = {}

    def make(seed: int = 0, **config):
        key = (seed, tuple(sorted(config.items())))
        if key not in made:
            model = build_hf_model(seed, **config)
            folder = tmp_path_factory.mktemp("hf_gpt2")
            model.save_pretrained(folder)
            made[key] = (folder, model)
        return made[key]
    return make


def torch_reference(model, input_ids, labels, attention_mask=None, dtype="float64"):
    """Run the torch GPT-2 and collect what minipeft must reproduce.

    Returns {"embeddings", "block.{i}", "ln_f", "logits", "loss", "grads": {name: grad}}.
    The loss is torch's own cross_entropy on the shifted labels in the model's dtype
    (GPT2LMHeadModel's built-in loss upcasts logits with .float(), i.e. *down*-casts a
    float64 model to float32, which would hide float64 agreement)."""
    import copy

    import torch
    m = copy.deepcopy(model).to(getattr(torch, dtype)).eval()
    m.zero_grad()
    seen = {}
    hooks = [m.transformer.drop.register_forward_hook(
        lambda mod, inp, out: seen.__setitem__("embeddings", out))]
    for i, block in enumerate(m.transformer.h):
        hooks.append(block.register_forward_hook(
            lambda mod, inp, out, i=i: seen.__setitem__(f"block.{i}",
                                                        out[0] if isinstance(out, tuple) else out)))
    hooks.append(m.transformer.ln_f.register_forward_hook(
        lambda mod, inp, out: seen.__setitem__("ln_f", out)))
    ids = torch.as_tensor(np.asarray(input_ids))
    mask = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask))
    logits = m(ids, attention_mask=mask).logits
    lab = torch.as_tensor(np.asarray(labels))
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100)
    loss.backward()
    for h in hooks:
        h.remove()
    ref = {k: v.detach().numpy() for k, v in seen.items()}
    ref["logits"] = logits.detach().numpy()
    ref["loss"] = loss.item()
    ref["grads"] = {n: p.grad.numpy().copy() for n, p in m.named_parameters()}
    return ref
