"""BottleneckModel: AdapterHub's bottleneck adapters on minipeft's GPT2 (the math:
bottleneck.py; the config and its presets: bottleneck_config.py).

GPT2 sends both residual additions of each block through ``_residual`` /
``_residual_backward`` ("transformer.h.{i}.attn": x + attention, ".mlp": x2 + MLP);
BottleneckModel overrides those two hooks, where AdapterHub's GPT-2 puts its
``attention_adapters`` and ``output_adapters``.

Saved format: peft's two files. ``adapter_config.json`` holds this config with
``peft_type: "BOTTLENECK"``; ``adapter_model.safetensors`` holds, per location,

    base_model.model.transformer.h.{i}.{attention_adapters|output_adapters}.{tensor}
    tensor: adapter_down.0.weight (m, C)  adapter_down.0.bias (m,)   (adapter_down.1.* after ln_before)
            adapter_up.weight (C, m)      adapter_up.bias (C,)
            adapter_norm_before.weight/.bias (C,)   adapter_norm_after.weight/.bias (C,)
            scaling (1,) or (C,)          (scaling "learned" / "channel")

i.e. AdapterHub's parameter names without ``.adapters.<adapter name>``, behind peft's
``base_model.model.`` prefix, weights in nn.Linear's [out, in] layout.
"""
from __future__ import annotations

import copy

import numpy as np

from ..kernels import bottleneck as kernels
from ..ops import residual_backward
from . import bottleneck as twin
from .base import PREFIX, PeftModel, check_fits
from .bottleneck_config import LOCATIONS, BottleneckConfig, adapter_shapes
from .lora import dropout_mask
from .mapping import register_peft_method


class BottleneckModel(PeftModel):
    """A GPT2 with bottleneck adapters: AdapterHub's GPT-2 adapters, in NumPy."""

    config_class = BottleneckConfig
    _stores = ("adapters",)

    def _init_state(self):
        self.adapters: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # adapter -> module -> tensors

    # ------------------------------------------------------------ adapters
    def add_adapter(self, adapter_name: str, config: BottleneckConfig, seed: int | None = None):
        """Create an adapter, initialised as config.init_weights says (AdapterHub's inits;
        ``seed`` makes it repeatable, None: a fresh draw)."""
        self._check_new_adapter(adapter_name, config)
        config = copy.deepcopy(config)
        all_shapes = adapter_shapes(config, self.config)
        check_fits(f"BottleneckConfig reduction_factor={config.reduction_factor}",
                   [s for shapes in all_shapes.values() for s in shapes.values()], self.dtype)
        rng, tensors = self._init_rng(seed), {}
        for module, shapes in all_shapes.items():
            if config.init_weights_seed is not None:   # AdapterHub: the same init in every module
                rng = np.random.default_rng(config.init_weights_seed)
            tensors[module] = self._init_tensors(config, shapes, rng)
        self._register(adapter_name, config, adapters=tensors)

    def _init_tensors(self, config, shapes, rng) -> dict[str, np.ndarray]:
        dn = twin.down_name(config)
        C, m = shapes["adapter_up.weight"]
        t = dict(zip((f"{dn}.weight", f"{dn}.bias", "adapter_up.weight", "adapter_up.bias"),
                     twin.init_adapter(config.init_weights, C, m, rng, self.dtype)))
        for name, shape in shapes.items():             # layer norms (1, 0), scaling 1
            if name not in t:
                t[name] = (np.zeros if name.endswith(".bias") else np.ones)(shape, self.dtype)
        return t

    # ------------------------------------------------------------ forward / backward
    def _residual(self, name: str, x, fx):
        """x + fx, or the adapter at this location: (B, T, C) -> (B, T, C), cache."""
        block, sub = name.rsplit(".", 1)
        module = f"{block}.{LOCATIONS[sub][0]}"
        t = None if self._disabled else self.adapters[self.active_adapter].get(module)
        if t is None:
            return super()._residual(name, x, fx)
        cfg = self.peft_config[self.active_adapter]
        shape, C = x.shape, x.shape[-1]
        mask = None
        if self.training and cfg.dropout > 0:
            mask = dropout_mask(self._rng, (x.size // C, C), cfg.dropout, x.dtype)  # as nn.Dropout
        ops = kernels if self.use_kernels else twin
        y, layer = twin.adapter_forward(x.reshape(-1, C), fx.reshape(-1, C), t, cfg, mask, ops)
        return y.reshape(shape), {"module": module, "tensors": t, "config": cfg, "mask": mask,
                                  "layer": layer, "ops": ops}

    def _residual_backward(self, name: str, dout, cache, grads):
        """-> (dx, dfx); the adapter's gradients go into ``grads`` under their saved names."""
        if cache is None:
            return residual_backward(dout, cache)
        C = dout.shape[-1]
        dx, da, g = twin.adapter_backward(dout.reshape(-1, C), cache["layer"], cache["tensors"],
                                          cache["config"], cache["ops"])
        for tensor, value in g.items():
            grads[f"{PREFIX}{cache['module']}.{tensor}"] = value
        return dx.reshape(dout.shape), da.reshape(dout.shape)

    # ------------------------------------------------------------ saving
    @classmethod
    def _saved_shapes(cls, config, model):
        return {f"{PREFIX}{module}.{name}": shape
                for module, shapes in adapter_shapes(config, model.config).items()
                for name, shape in shapes.items()}


register_peft_method(peft_type="BOTTLENECK", config_cls=BottleneckConfig, model_cls=BottleneckModel)
