"""minipeft's LoRA, rsLoRA and DoRA against peft on transformers' GPT-2, tensor by tensor.

The same random base checkpoint on both sides; peft's LoRA tensors (A, B, DoRA's
magnitude) set to random non-zero values and copied into minipeft, so that no term
can hide behind B = 0 or m = ‖W‖. Compared: logits, loss and every trainable gradient.

Tolerances (max|a - b| / max|b| per tensor):
- float64 1e-10: the same expressions in float64, summed in another order (seen ~1e-15).
- float32 1e-4: float32 sums over C or B·T terms in another order than torch (seen ~1e-6).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from minipeft import GPT2, LoraConfig, get_peft_model
from minipeft.testing import assert_close, cmp

TOL = {"float64": 1e-10, "float32": 1e-4}
SMALL = dict(n_layer=2, n_head=3, n_embd=24, n_positions=16, vocab_size=50)


def peft_name(torch_name: str) -> str:
    """peft's parameter name -> its saved-state-dict key (what minipeft uses)."""
    return (torch_name.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector")
            .replace(".default.", "."))


def make_pair(hf_model, config_kwargs, dtype="float64", seed=0):
    """-> (peft model, minipeft PeftModel) with equal random LoRA tensors."""
    import torch
    from peft import LoraConfig as TorchLoraConfig
    from peft import get_peft_model as torch_get_peft_model
    tm = copy.deepcopy(hf_model).to(getattr(torch, dtype))
    with torch.no_grad():
        state = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
    pm_t = torch_get_peft_model(tm, TorchLoraConfig(**config_kwargs)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm_t.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3
                        + (1.0 if "magnitude" in name else 0.0))
    from minipeft.io.checkpoint import normalize_names
    base = GPT2(_config(hf_model), {k: v for k, v in normalize_names(state, "t").items()})
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        pm = get_peft_model(base, LoraConfig(**config_kwargs))
    theirs = {peft_name(n): p.detach().numpy() for n, p in pm_t.named_parameters() if p.requires_grad}
    ours = pm.trainable_parameters()
    assert sorted(ours) == sorted(theirs)
    for k, v in theirs.items():
        ours[k][...] = v
    return pm_t, pm


def _config(hf_model):
    from minipeft import GPT2Config
    return GPT2Config.from_hf_dict(hf_model.config.to_dict())


def torch_loss_and_grads(pm_t, ids, labels, name=peft_name):
    """peft's logits, loss (torch's cross_entropy on the shifted labels) and the gradients of
    its trainable parameters, keyed by ``name(parameter name)``."""
    import torch
    pm_t.zero_grad()
    logits = pm_t(torch.as_tensor(ids)).logits
    lab = torch.as_tensor(labels)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100)
    loss.backward()
    grads = {name(n): p.grad.numpy().copy() for n, p in pm_t.named_parameters() if p.requires_grad}
    return logits.detach().numpy(), loss.item(), grads


VARIANTS = {
    "c_attn": dict(r=4, lora_alpha=8, target_modules=["c_attn"]),
    "c_proj-both": dict(r=3, lora_alpha=6, target_modules=["c_proj"]),
    "mlp": dict(r=2, lora_alpha=5, target_modules=["mlp.c_fc", "mlp.c_proj"]),
    "all-linear": dict(r=4, lora_alpha=16, target_modules="all-linear"),
    "regex": dict(r=2, lora_alpha=2, target_modules=r".*\.1\.attn\.c_(attn|proj)"),
    "rslora": dict(r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_fc"], use_rslora=True),
    "dora": dict(r=4, lora_alpha=8, target_modules=["c_attn", "attn.c_proj"], use_dora=True),
    "dora-all-linear-rslora": dict(r=2, lora_alpha=4, target_modules="all-linear", use_dora=True,
                                   use_rslora=True),
    "bias-all": dict(r=4, lora_alpha=8, target_modules=["c_attn"], bias="all"),
    "bias-lora_only": dict(r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_proj"], bias="lora_only"),
    "layers_to_transform": dict(r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_fc"],
                                layers_to_transform=[1]),
    "dropout-eval": dict(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.1),
}


# float32 runs once, through the kernels; test_lora_kernels holds the twins to them
@pytest.mark.parametrize("dtype,kernels", [("float64", True), ("float64", False), ("float32", True)],
                         ids=["float64-numba", "float64-numpy", "float32-numba"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lora_equals_peft(hf_checkpoint, variant, dtype, kernels, capsys):
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm_t, pm = make_pair(hf_model, VARIANTS[variant], dtype)
    pm_t.print_trainable_parameters()
    pm.print_trainable_parameters()
    theirs, ours = capsys.readouterr().out.strip().splitlines()
    assert ours == theirs and ours.startswith("trainable params: ")
    pm.use_kernels = kernels
    rng = np.random.default_rng(0)
    ids = rng.integers(0, SMALL["vocab_size"], size=(2, 12))
    labels = ids.copy()
    labels[1, 3] = -100
    logits_t, loss_t, grads_t = torch_loss_and_grads(pm_t, ids, labels)
    tol = TOL[dtype]
    assert cmp("logits", pm(ids), logits_t, tol) <= tol
    loss, grads = pm.loss_and_grads(ids, labels)
    assert cmp("loss", loss, loss_t, tol) <= tol
    assert_close(grads, grads_t, tol)


class FixedDropout:
    """Stands in for peft's nn.Dropout: multiplies by minipeft's own (scaled) mask."""

    def __new__(cls, mask):
        import torch

        class _Fixed(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.mask = torch.as_tensor(mask)

            def forward(self, x):
                return x * self.mask.reshape(x.shape)
        return _Fixed()


@pytest.mark.parametrize("variant", [
    dict(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.3),
    dict(r=3, lora_alpha=6, target_modules=["c_attn", "mlp.c_proj"], lora_dropout=0.4, use_dora=True),
], ids=["lora", "dora"])
def test_training_dropout_equals_peft_with_the_same_masks(hf_checkpoint, variant):
    """Dropout in training: peft run with minipeft's masks (its RNG cannot be shared),
    so that the training path — for DoRA, peft's drop(x) W0 base term — is compared too."""
    from peft.tuners.lora import LoraLayer
    _, hf_model = hf_checkpoint(seed=3, **SMALL)
    pm_t, pm = make_pair(hf_model, variant, "float64")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, SMALL["vocab_size"], size=(2, 12))
    pm.train(seed=11)
    loss, grads = pm.loss_and_grads(ids, ids)
    pm.train(seed=11)
    _, cache = pm.forward(ids)
    for name, module in pm_t.named_modules():
        if isinstance(module, LoraLayer):
            i, sub = name.split("transformer.h.")[1].split(".", 1)
            mask = cache["layers"][int(i)][sub][1][0]                   # (N, in)
            module.lora_dropout["default"] = FixedDropout(mask)
            module.train()                                              # GPT-2's own dropout stays off
    _, loss_t, grads_t = torch_loss_and_grads(pm_t, ids, ids)
    assert cmp("loss", loss, loss_t, 1e-10) <= 1e-10
    assert_close(grads, grads_t, 1e-10)
    # dropout did something (beyond round-off)
    assert abs(loss - pm.eval().loss(ids, ids)) > 1e-8 * abs(loss)
