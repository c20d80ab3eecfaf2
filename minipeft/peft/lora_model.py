"""LoraModel: a frozen GPT2 whose linear layers carry LoRA adapters (the math: lora.py).

GPT2 sends every linear layer through ``_linear`` / ``_linear_backward``; LoraModel
overrides those two hooks and nothing else, so the forward and backward a reader
follows in ``model/gpt2.py`` stay the same. The base parameters are shared with the
model given to ``get_peft_model`` (as peft injects into the model in place); they
stay frozen except the biases that ``bias="all"`` / ``"lora_only"`` train.

    out = x W + b + s · drop(x) Aᵀ Bᵀ          on each LoRA part (the layer, or q/k/v slices)

Names follow peft's saved state dict: ``base_model.model.<module>.lora_A.weight``,
``….lora_B.weight``, ``….lora_magnitude_vector`` (DoRA), ``….base_layer.bias`` for
the bias of a layer that carries LoRA, ``base_model.model.<name>`` for other biases.
What a LoRA adapter saves, and how it is read back: lora_io.py.
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError
from ..kernels import lora as kernels
from . import lora as twin
from .base import PREFIX, MergeMixin, PeftModel, check_adapter_name, check_fits
from .lora_config import LoraConfig, lora_parts, target_keys
from .lora_init import check_combination, combine_adapters, lora_init
from .lora_io import lora_state, read_lora_state
from .mapping import register_peft_method


class LoraParts(NamedTuple):
    """What one LoRA layer's backward needs: nothing is read from the model then."""
    mask: np.ndarray | None       # (N, in) the dropout mask, or None
    parts: list                   # per part: (prefix, cols, A, B, lora cache, DoRA cache or None)
    scaling: float                # s of the adapter that ran


class LoraModel(MergeMixin, PeftModel):
    """A GPT2 with LoRA adapters: peft's LoraModel for GPT-2, in NumPy."""

    config_class = LoraConfig
    _stores = ("lora",)

    def _init_state(self):
        super()._init_state()
        self.lora: dict[str, dict[str, dict[str, np.ndarray]]] = {}   # adapter -> module -> tensors

    # ------------------------------------------------------------ adapters
    def add_adapter(self, adapter_name: str, config: LoraConfig, seed: int | None = None):
        """Create an adapter, initialised as config.init_lora_weights says; ``seed`` makes
        it repeatable (None: a fresh draw, so no two adapters start alike)."""
        self._check_new_adapter(adapter_name, config)
        if self.merged:
            raise ConfigError("unmerge_adapter() before adding an adapter.")
        config = copy.deepcopy(config)
        if not config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to False but GPT-2's layers are Conv1D, stored "
                          "[in, out]; setting fan_in_fan_out to True (as peft does).", stacklevel=3)
            config.fan_in_fan_out = True
        keys = target_keys(config, self.config)
        shapes = []                                                    # A (r, in), B (out, r), m (out,)
        for key in keys:
            n_in, n_out = self.params[f"{key}.weight"].shape
            for _, cols in self._parts(config, key):
                shapes += [(config.r, n_in), (cols.stop - cols.start, config.r)]
            shapes += [(n_out,)] if config.use_dora else []
        check_fits(f"LoraConfig r={config.r} on {len(keys)} modules", shapes, self.dtype)
        rng = self._init_rng(seed)
        tensors = {}
        for key in keys:
            W = self.params[f"{key}.weight"]                               # (in, out)
            t = {}
            for prefix, cols in self._parts(config, key):
                A, B, new_W = lora_init(config.init_lora_weights, W[:, cols], config.r,
                                        config.lora_alpha, config.use_rslora, rng)
                if new_W is not None:                                      # pissa / olora move W0
                    self.params[f"{key}.weight"] = W = new_W.astype(W.dtype)
                t[f"{prefix}lora_A.weight"], t[f"{prefix}lora_B.weight"] = A, B
            if config.use_dora:
                t["lora_magnitude_vector"] = twin.dora_weight_norm(
                    W, t["lora_A.weight"], t["lora_B.weight"], config.scaling)
            tensors[key] = t
        self._register(adapter_name, config, lora=tensors)

    def set_adapter(self, adapter_name: str):
        """Make ``adapter_name`` the active (and trainable) adapter, with the biases its
        ``bias`` setting trains."""
        super().set_adapter(adapter_name)
        cfg = self.peft_config[adapter_name]
        biases = set()
        if cfg.bias == "all":
            biases = {k for k in self.params if k.endswith(".bias")}
        elif cfg.bias == "lora_only":
            biases = {f"{k}.bias" for k in self.lora[adapter_name]}
        self.trainable = biases if not cfg.inference_mode else set()

    def _parts(self, config: LoraConfig, key: str):
        return lora_parts(config, key, self.params[f"{key}.weight"].shape[1], self.config.n_embd)

    def _peft_bias_name(self, name: str) -> str:
        module = name[: -len(".bias")]
        wrapped = any(module in t for t in self.lora.values())
        return f"{PREFIX}{module}.base_layer.bias" if wrapped else PREFIX + name

    def trainable_parameters(self) -> dict[str, np.ndarray]:
        """The adapter's tensors and the biases it trains, by peft's names (live arrays)."""
        out = super().trainable_parameters()
        if out:
            out.update({self._peft_bias_name(name): self.params[name] for name in sorted(self.trainable)})
        return out

    # ------------------------------------------------------------ forward / backward
    def _linear(self, name: str, x):
        """Base Conv1D, plus s · drop(x) Aᵀ Bᵀ on each LoRA part (and DoRA's terms)."""
        W, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
        t = None if self._disabled or self.merged else self.lora[self.active_adapter].get(name)
        if t is None:
            return self.ops.linear_forward(x, W, b)[0], (None, None)     # backward needs no x for W
        cfg = self.active_peft_config
        ops = kernels if self.use_kernels else twin
        s, x2 = cfg.scaling, x.reshape(-1, x.shape[-1])                 # (N, in)
        mask = None
        if self.training and cfg.lora_dropout > 0:
            mask = twin.dropout_mask(self._rng, x2.shape, cfg.lora_dropout, x2.dtype)
        m = t.get("lora_magnitude_vector")                              # DoRA: one part, all columns
        dora_merged = m is not None and mask is None                    # b comes with g ⊙ (x W0 + delta)
        out, _ = self.ops.linear_forward(x, W, None if dora_merged else b)    # (B, T, out), W frozen
        out2 = out.reshape(-1, out.shape[-1])                           # (N, out), a view
        parts = []
        for prefix, cols in self._parts(cfg, name):
            A, B = t[f"{prefix}lora_A.weight"], t[f"{prefix}lora_B.weight"]
            delta, lc = ops.lora_forward(x2, A, B, s, mask)             # (N, out_part)
            dc = None
            if m is None:
                out2[:, cols] += delta
            else:
                norm = ops.dora_weight_norm(W, A, B, s)                 # (out,), a constant
                if dora_merged:                                         # out2: x W0 -> b + g ⊙ (x W0 + delta)
                    out2, dc = ops.dora_merged_forward(out2, b, delta, m, norm)
                else:                                                   # peft's terms, base = drop(x) W0
                    extra, dc = ops.dora_forward((x2 * mask) @ W, delta, m, norm)
                    out2 += extra
            parts.append((prefix, cols, A, B, lc, dc))
        return out2.reshape(out.shape), (None, LoraParts(mask, parts, s))

    def _linear_backward(self, name: str, dout, cache, grads):
        """dout (B, T, out) -> dx; LoRA gradients go into ``grads`` under peft's names."""
        W = self.params[f"{name}.weight"]
        d2 = dout.reshape(-1, dout.shape[-1])                           # (N, out)
        if f"{name}.bias" in self.trainable:
            grads[f"{name}.bias"] = d2.sum(axis=0)
        lora = cache[1]
        if lora is None:
            return self.ops.linear_backward(dout, None, W, need_params=False)[0]
        ops = kernels if self.use_kernels else twin
        mask, dbase_total, dx_extra = lora.mask, d2, None               # dbase_total flows through x W0
        for prefix, cols, A, B, lc, dc in lora.parts:
            ddelta = d2[:, cols]
            if dc is not None:                                          # DoRA
                if mask is None:                                        # merged: x W0 and delta get
                    ddelta, dmag = ops.dora_merged_backward(ddelta, dc)     # the same g ⊙ dout
                    dbase_total = ddelta
                else:
                    dbase, ddelta, dmag = ops.dora_backward(ddelta, dc)
                    dx_extra = (dbase @ W.T) * mask                     # base = drop(x) W0
                grads[f"{PREFIX}{name}.lora_magnitude_vector"] = dmag
            dxl, dA, dB = ops.lora_backward(ddelta, lc, A, B, lora.scaling, mask)
            grads[f"{PREFIX}{name}.{prefix}lora_A.weight"] = dA
            grads[f"{PREFIX}{name}.{prefix}lora_B.weight"] = dB
            dx_extra = dxl if dx_extra is None else dx_extra + dxl
        dx = self.ops.linear_backward(dbase_total, None, W, need_params=False)[0] + dx_extra  # (N, in)
        return dx.reshape(*dout.shape[:-1], W.shape[0])

    def _backward_trunk(self, dxf, dwte, cache) -> dict[str, np.ndarray]:
        """GPT2's backward, with the trained biases renamed as peft saves them."""
        grads = super()._backward_trunk(dxf, dwte, cache)
        return {(self._peft_bias_name(k) if not k.startswith(PREFIX) else k): v
                for k, v in grads.items()}

    # ------------------------------------------------------------ merging (MergeMixin)
    def _merged_params(self, name, params, base, keep) -> dict[str, np.ndarray]:
        """{module.weight: W + s (BA)ᵀ} for adapter ``name`` on ``params``, new arrays. DoRA:
        (W + s (BA)ᵀ) · m / ‖W0 + s (BA)ᵀ‖ with W0 from ``base`` (nothing merged), the norm
        forward uses (peft: _unmerged_base_weight); the norm goes into ``keep`` for unmerging."""
        cfg, out = self.peft_config[name], {}
        for key, t in self.lora[name].items():
            W, W0 = params[f"{key}.weight"].copy(), base[f"{key}.weight"]
            for prefix, cols in self._parts(cfg, key):
                A, B = t[f"{prefix}lora_A.weight"], t[f"{prefix}lora_B.weight"]
                m = t.get("lora_magnitude_vector")
                if m is None:
                    W[:, cols] = twin.merge_weight(W[:, cols], A, B, cfg.scaling)[0]
                else:
                    norm = twin.dora_weight_norm(W0[:, cols], A, B, cfg.scaling)      # (out,)
                    W[:, cols] = (W[:, cols] + twin.delta_weight(A, B, cfg.scaling)) * (m / norm)
                    keep[(name, key)] = norm
            out[f"{key}.weight"] = W
        return out

    def _unmerged_params(self, name, params, kept) -> dict[str, np.ndarray]:
        """Adapter ``name`` taken back out of ``params``' weights, new arrays (DoRA divides
        by the factor its merge used, ``kept``)."""
        cfg, out = self.peft_config[name], {}
        for key, t in self.lora[name].items():
            W = params[f"{key}.weight"].copy()
            for prefix, cols in self._parts(cfg, key):
                W[:, cols] = twin.unmerge_weight(
                    W[:, cols], t[f"{prefix}lora_A.weight"], t[f"{prefix}lora_B.weight"],
                    cfg.scaling, t.get("lora_magnitude_vector"), kept.get((name, key)))
            out[f"{key}.weight"] = W
        return out

    # ------------------------------------------------------------ weighted adapters
    def add_weighted_adapter(self, adapters, weights, adapter_name, combination_type="svd",
                             svd_rank=None, svd_clamp=None, svd_full_matrices=True):
        """A new adapter mixing existing ones, as peft's add_weighted_adapter."""
        check_adapter_name(adapter_name)
        check_combination(adapters, weights, svd_rank, svd_clamp)
        for a in adapters:
            self._check_name(a)
        if adapter_name in self.peft_config:
            raise ConfigError(f"an adapter named {adapter_name!r} exists (peft would silently do "
                              "nothing); choose a new name.")
        cfgs = [self.peft_config[a] for a in adapters]
        combined, r_new, alpha_new = combine_adapters(
            [self.lora[a] for a in adapters], cfgs, weights, combination_type, svd_rank=svd_rank,
            svd_clamp=svd_clamp, svd_full_matrices=svd_full_matrices)
        keys = sorted(combined)
        # as peft: the first adapter's config with the new rank as both r and lora_alpha (the
        # weights and scalings are folded into A and B); targets: the modules combined, by full name
        config = dataclasses.replace(cfgs[0], r=r_new, lora_alpha=alpha_new, target_modules=keys,
                                     layers_to_transform=None)
        config.fan_in_fan_out = True
        self._check_new_adapter(adapter_name, config)        # its name, one adapter with bias
        self._register(adapter_name, config, lora=combined)

    # ------------------------------------------------------------ saving and loading (lora_io.py)
    def _adapter_state(self, adapter_name: str) -> tuple[dict, dict]:
        return lora_state(self.peft_config[adapter_name], self.lora[adapter_name], self.params,
                          self._peft_bias_name, self.config.n_embd)

    @classmethod
    def _read_state(cls, config, raw, model, path):
        return read_lora_state(config, raw, model, path)

    def _load_weights(self, adapter_name, weights, config):
        """Copy loaded tensors in; saved biases (bias="all"/"lora_only") replace the base's, as in peft."""
        super()._load_weights(adapter_name, weights, config)
        self.peft_config[adapter_name].init_lora_weights = config.init_lora_weights
        for key, v in weights.items():
            if key[len(PREFIX):] in self.params:
                self.params[key[len(PREFIX):]] = v.copy()

    @staticmethod
    def _as_loaded(config: LoraConfig, is_trainable: bool) -> LoraConfig:
        """No PiSSA/OLoRA re-init of the base when loading (the saved adapter assumes its
        base already holds the residual)."""
        config = PeftModel._as_loaded(config, is_trainable)
        if isinstance(config.init_lora_weights, str) and config.init_lora_weights != "gaussian":
            config.init_lora_weights = True                 # pissa, pissa_niter_K, olora
        return config


register_peft_method(peft_type="LORA", config_cls=LoraConfig, model_cls=LoraModel)
