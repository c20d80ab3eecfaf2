"""The set-up: the same random GPT-2 on both sides, LoRA on each, the batch.

Both sides get the same random weights: a ``transformers`` GPT2LMHeadModel built with a
seed, whose state dict (as NumPy arrays) makes minipeft's GPT2. Without torch
(``--no-torch``, and the memory child of minipeft's side), minipeft's own random init.
torch, transformers and peft are imported only where a function needs them: they are
the `test` extra, not minipeft's dependencies.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np

from ..config import GPT2Config
from ..errors import MinipeftError
from ..io.checkpoint import normalize_names
from ..model.gpt2 import GPT2
from ..peft import LoraConfig, get_peft_model
from ..train.optim import AdamW
from ..train.pretrain import init_params
from .config import BenchConfig

TORCH_MISSING = (
    "the torch side of the benchmark needs torch, transformers and peft (the `test` extra). "
    "Install them with torch pinned first, as DEVELOPERS.md says:\n"
    "    pip install torch==2.13.0 && pip install -e \".[test]\"\n"
    "or measure minipeft alone with --no-torch.")


def require_torch():
    """-> (torch, transformers, peft), or a MinipeftError saying how to install them."""
    try:
        import peft  # optional (the test extra): the reference side
        import torch
        import transformers
    except ImportError as e:
        raise MinipeftError(f"{e}: {TORCH_MISSING}") from None
    return torch, transformers, peft


def build_hf(cfg: BenchConfig):
    """A random transformers GPT2LMHeadModel (seeded), dropout 0, eos = the last token."""
    torch, transformers, _ = require_torch()
    torch.manual_seed(cfg.seed)
    hf_config = transformers.GPT2Config(
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)
    hf = transformers.GPT2LMHeadModel(hf_config).to(getattr(torch, cfg.dtype))
    return hf.eval()


def minipeft_from_hf(hf) -> GPT2:
    """minipeft's GPT2 on the same weights: the NumPy arrays share the torch tensors' memory."""
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    return GPT2(GPT2Config.from_hf_dict(hf.config.to_dict()), normalize_names(state, "bench"))


def minipeft_random(cfg: BenchConfig) -> GPT2:
    """minipeft's GPT2 with GPT-2's random init, without torch (--no-torch, memory child)."""
    config = GPT2Config(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                        vocab_size=cfg.vocab_size, n_positions=cfg.n_positions)
    return GPT2(config, init_params(config, seed=cfg.seed, dtype=np.dtype(cfg.dtype)))


def lora_kwargs(cfg: BenchConfig) -> dict:
    """The LoRA config, the same on both sides."""
    return dict(r=cfg.r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.target_modules),
                lora_dropout=0.0, fan_in_fan_out=True)


def with_fresh_base(base: GPT2) -> GPT2:
    """A GPT2 sharing ``base``'s arrays in a new dict, so an adapter cannot rebind them."""
    return type(base)(base.config, dict(base.params))


def minipeft_lora(base: GPT2, cfg: BenchConfig):
    """-> (PeftModel with LoRA, its AdamW) on a view of ``base``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(with_fresh_base(base), LoraConfig(**lora_kwargs(cfg)))
    return pm.train(), AdamW(pm.trainable_parameters(), lr=1e-4)


def torch_lora(hf, cfg: BenchConfig):
    """-> (peft model with LoRA on a copy of ``hf``, torch's AdamW)."""
    torch, _, peft = require_torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm_t = peft.get_peft_model(copy.deepcopy(hf), peft.LoraConfig(**lora_kwargs(cfg)))
    pm_t.train()
    opt = torch.optim.AdamW([p for p in pm_t.parameters() if p.requires_grad], lr=1e-4)
    return pm_t, opt


def batch_ids(cfg: BenchConfig):
    """-> (ids (B, T), prompt (1, P)): random tokens, the same on both sides."""
    rng = np.random.default_rng(cfg.seed)
    return (rng.integers(0, cfg.vocab_size - 1, size=(cfg.batch, cfg.seq)),
            rng.integers(0, cfg.vocab_size - 1, size=(1, cfg.prompt)))


def half_masked_labels(ids):
    """The ids as labels with -100 on the first half of each sequence: completion-only
    labels (a prompt, then the completion that is scored), as ``finetune`` and the demo train."""
    labels = np.array(ids, copy=True)
    labels[:, : ids.shape[1] // 2] = -100
    return labels
