"""Which of GPT-2's linear layers a config targets, matched as peft matches them.

LoRA and IA3 both name their targets with peft's ``target_modules``: a list of names
matched by suffix ("c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"; "c_proj" means
both c_proj layers), a regular expression matched against the whole module name
("transformer.h.0.attn.c_attn"), or "all-linear". Both can also adapt only some of
the q, k, v slices of the fused c_attn (LoRA's ``enable_lora``, IA3's ``c_attn_slices``),
each slice C wide and named with its letter (``….c_attn.k.ia3_l``).
"""
from __future__ import annotations

import re

from ..errors import ConfigError

LINEAR_MODULES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
QKV = ("q", "k", "v")


def target_keys(target_modules, model_config, layers_to_transform=None) -> list[str]:
    """The module names (``transformer.h.0.attn.c_attn``, …) that ``target_modules``
    names, in the model's order, kept to ``layers_to_transform`` when given."""
    keys = [f"transformer.h.{i}.{m}" for i in range(model_config.n_layer) for m in LINEAR_MODULES]
    t = target_modules
    if t == "all-linear":
        found = keys
    elif isinstance(t, str):
        try:
            found = [k for k in keys if re.fullmatch(t, k)]
        except re.error as e:
            raise ConfigError(f"target_modules {t!r} is not a valid regular expression: {e}.") from None
        if not found:
            raise ConfigError(f"target_modules regex {t!r} matches no module; module names look like "
                              f"'transformer.h.0.attn.c_attn' (layers h.0 .. h.{model_config.n_layer - 1}).")
    else:
        found = []
        for name in t:
            hits = [k for k in keys if k == name or k.endswith("." + name)]
            if not hits:
                raise ConfigError(
                    f"target module {name!r} is not a linear layer of GPT-2. Choose from "
                    "'c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj' ('c_proj' means both "
                    "c_proj layers), or 'all-linear'.")
            found += hits
        found = [k for k in keys if k in set(found)]
    if layers_to_transform is not None:
        bad = [i for i in layers_to_transform if i >= model_config.n_layer]
        if bad:
            raise ConfigError(f"layers_to_transform {bad} do not exist: the model has layers "
                              f"0 .. {model_config.n_layer - 1}.")
        found = [k for k in found if int(k.split(".")[2]) in layers_to_transform]
    return found


def parts(key: str, n: int, C: int, slices=None) -> list[tuple[str, slice]]:
    """(name prefix, columns) of each adapted part of module ``key``: the whole layer
    (n wide), or on c_attn the ``slices`` among "q", "k", "v" (each C wide; None: whole)."""
    if slices is None or not key.endswith("attn.c_attn"):
        return [("", slice(0, n))]
    return [(f"{s}.", slice(j * C, (j + 1) * C)) for j, s in enumerate(QKV) if s in slices]
