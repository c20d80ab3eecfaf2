"""The project's seed, at the real GPT-2 124M shape: peft's LoRA on GPT-2, in minipeft.

    LoraConfig(r=8, lora_alpha=32, target_modules=["c_attn"], lora_dropout=0.1, bias="none")

Same trainable names as peft, peft's print_trainable_parameters line, and logits of
shape (1, 5, 50257) for "Hello, PEFT!" (five GPT-2 tokens) equal to peft's within
1e-4 (float32 sums over 768–3072 terms in another order than torch).
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
from test_lora_vs_peft import peft_name

from minipeft import GPT2, LoraConfig, get_peft_model, load_tokenizer
from minipeft.testing import cmp

SEED = dict(r=8, lora_alpha=32, target_modules=["c_attn"], lora_dropout=0.1, bias="none")


def test_seed_example_at_124m(hf_checkpoint, capsys):
    import torch
    from peft import LoraConfig as TorchLoraConfig
    from peft import get_peft_model as torch_get_peft_model
    folder, hf_model = hf_checkpoint(seed=0)                      # GPT2Config(): the 124M shape
    ids = np.array([load_tokenizer("gpt2").encode("Hello, PEFT!").ids])   # bundled, offline
    assert ids.shape == (1, 5)

    pm_t = torch_get_peft_model(copy.deepcopy(hf_model), TorchLoraConfig(**SEED)).eval()
    pm_t.print_trainable_parameters()
    theirs_line = capsys.readouterr().out.strip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(GPT2.from_pretrained(folder), LoraConfig(**SEED))
    pm.print_trainable_parameters()
    ours_line = capsys.readouterr().out.strip()
    assert ours_line == theirs_line == \
        "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364"

    theirs = {peft_name(n): p for n, p in pm_t.named_parameters() if p.requires_grad}
    assert sorted(pm.trainable_parameters()) == sorted(theirs)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                                         # B ≠ 0, or LoRA would hide
        for name, p in theirs.items():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            pm.trainable_parameters()[name][...] = p.numpy()
        ref = pm_t(torch.as_tensor(ids)).logits.numpy()
    logits = pm(ids)
    assert logits.shape == (1, 5, 50257) and logits.dtype == np.float32
    assert cmp("124M LoRA logits", logits, ref, 1e-4) <= 1e-4
