"""LoRA in peft's files: what a LoRA adapter saves, and the checks of what is loaded.

Keys: ``base_model.model.<module>.lora_A.weight`` (r, in), ``….lora_B.weight`` (out, r),
``….lora_magnitude_vector`` (out,) for DoRA, and the biases trained with
``bias="all"``/``"lora_only"``: ``….base_layer.bias`` on a layer that carries LoRA,
``base_model.model.<module>.bias`` elsewhere.

LoRA on q/k/v slices of c_attn (``enable_lora``, which peft lacks) is saved in its
exact peft equivalent: one c_attn LoRA of rank r·(slices) whose A stacks the slices'
A and whose B is block-shaped with zeros for the slices left out, α scaled to keep s.
peft, and minipeft, load it back as that plain c_attn LoRA (the zero blocks then train too).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from .base import PREFIX
from .io import check_state
from .lora_config import LoraConfig, lora_parts, target_keys


def block_form(config: LoraConfig, tensors: dict, C: int):
    """enable_lora slices -> (equivalent peft config dict, tensors) of one c_attn LoRA."""
    if any(not k.endswith("attn.c_attn") for k in tensors):
        raise ConfigError("enable_lora adapters that also target other layers cannot be saved in "
                          "peft's format (ranks would differ per layer); target c_attn alone.")
    r, n, out = config.r, len(config.qkv_slices), {}
    for key, t in tensors.items():
        some = t[f"{config.qkv_slices[0]}.lora_A.weight"]
        A = np.zeros((n * r, some.shape[1]), some.dtype)                 # (n·r, in)
        B = np.zeros((3 * C, n * r), some.dtype)                         # (3C, n·r)
        for i, (prefix, cols) in enumerate(lora_parts(config, key, 3 * C, C)):
            A[i * r:(i + 1) * r] = t[f"{prefix}lora_A.weight"]
            B[cols, i * r:(i + 1) * r] = t[f"{prefix}lora_B.weight"]
        out[key] = {"lora_A.weight": A, "lora_B.weight": B}
    d = config.to_dict()
    d["r"] = r_new = n * r
    d["lora_alpha"] = config.scaling * (math.sqrt(r_new) if config.use_rslora else r_new)
    return d, out


def lora_state(config: LoraConfig, tensors: dict, params: dict, bias_name, C: int):
    """-> (peft config dict, {saved key: array}) of one adapter: its ``tensors``
    ({module: {tensor: array}}) and the biases it trains (``bias_name``: peft's name of one)."""
    d, tensors = block_form(config, tensors, C) if config.enable_lora is not None \
        else (config.to_dict(), tensors)
    d["inference_mode"] = True                    # as peft writes it
    state = {f"{PREFIX}{key}.{name}": arr for key, t in tensors.items() for name, arr in t.items()}
    if config.bias != "none":
        names = [k for k in params if k.endswith(".bias")] if config.bias == "all" \
            else [f"{m}.bias" for m in tensors]
        state.update({bias_name(name): params[name] for name in names})
    return d, state


def saved_shapes(config: LoraConfig, model) -> dict[str, tuple]:
    """{saved key: shape} of the tensors ``config`` needs on ``model``."""
    expected = {}
    for key in target_keys(config, model.config):
        W = model.params[f"{key}.weight"]
        for prefix, cols in lora_parts(config, key, W.shape[1], model.config.n_embd):
            expected[f"{PREFIX}{key}.{prefix}lora_A.weight"] = (config.r, W.shape[0])
            expected[f"{PREFIX}{key}.{prefix}lora_B.weight"] = (cols.stop - cols.start, config.r)
        if config.use_dora:
            expected[f"{PREFIX}{key}.lora_magnitude_vector"] = (W.shape[1],)
    return expected


def read_lora_state(config: LoraConfig, raw: dict, model, w_path) -> dict:
    """LoRA's saved tensors -> {saved key (``base_layer.`` taken out): array in the model's
    dtype}, checked against ``model`` (its size, its layers) before anything is loaded;
    trained biases (bias="all"/"lora_only") may come too."""
    named = {(k if k.startswith(PREFIX) else PREFIX + k).replace(".base_layer.", "."): v
             for k, v in raw.items()}
    biases = {k: model.params[k[len(PREFIX):]].shape for k in named
              if k.endswith(".bias") and k[len(PREFIX):] in model.params}
    return check_state(named, saved_shapes(config, model), w_path, model, optional=biases)
