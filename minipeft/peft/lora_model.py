"""LoraModel: a frozen GPT2 whose linear layers carry LoRA adapters.

GPT2 sends every linear layer through ``_linear`` / ``_linear_backward``; LoraModel
overrides those two hooks and nothing else, so the forward and backward a reader
follows in ``model/gpt2.py`` stay the same. The base parameters are shared with the
model given to ``get_peft_model`` (as peft injects into the model in place); they
stay frozen except the biases that ``bias="all"`` / ``"lora_only"`` train.

Names follow peft's saved state dict: ``base_model.model.<module>.lora_A.weight``,
``….lora_B.weight``, ``….lora_magnitude_vector`` (DoRA), ``….base_layer.bias`` for
the bias of a layer that carries LoRA, ``base_model.model.<name>`` for other biases.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import re
import warnings

import numpy as np

from ..errors import ConfigError
from . import lora as twin
from .base import PREFIX, MergeMixin, PeftModel, check_adapter_name, check_fits
from .lora_config import LINEAR_MODULES, LoraConfig
from .lora_init import lora_init
QKV = ("q", "k", "v")


def _kernels():
    from ..kernels import lora as kernels
    return kernels


def target_keys(config: LoraConfig, model_config) -> list[str]:
    """The module names (``transformer.h.0.attn.c_attn``, …) a config targets, as peft matches them."""
    keys = [f"transformer.h.{i}.{m}" for i in range(model_config.n_layer) for m in LINEAR_MODULES]
    t = config.target_modules if config.target_modules is not None else ["c_attn"]  # peft's GPT-2 default
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
    if config.layers_to_transform is not None:
        bad = [i for i in config.layers_to_transform if i >= model_config.n_layer]
        if bad:
            raise ConfigError(f"layers_to_transform {bad} do not exist: the model has layers "
                              f"0 .. {model_config.n_layer - 1}.")
        found = [k for k in found if int(k.split(".")[2]) in config.layers_to_transform]
    if config.enable_lora is not None and not any(k.endswith("attn.c_attn") for k in found):
        raise ConfigError("enable_lora picks q/k/v slices of c_attn, but c_attn is not targeted: "
                          "add 'c_attn' to target_modules, or leave enable_lora None.")
    return found


def lora_parts(config: LoraConfig, key: str, n_out: int, C: int):
    """(name prefix, output columns) of each LoRA on module ``key``: the whole layer,
    or the enabled q/k/v slices of c_attn (each C wide)."""
    if config.enable_lora is None or not key.endswith("attn.c_attn"):
        return [("", slice(0, n_out))]
    return [(f"{QKV[j]}.", slice(j * C, (j + 1) * C)) for j in range(3) if config.enable_lora[j]]


class LoraModel(MergeMixin, PeftModel):
    """A GPT2 with LoRA adapters: peft's LoraModel for GPT-2, in NumPy."""

    config_class = LoraConfig
    _stores = ("lora",)

    def _init_state(self):
        self.lora: dict[str, dict[str, dict[str, np.ndarray]]] = {}   # adapter -> module -> tensors
        self.merged: list[str] = []          # adapters merged into the base weights, in order
        self._unmerge_data: dict[tuple[str, str], np.ndarray] = {}    # DoRA's norms at merge time

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

    def _astype_adapters(self, dtype):
        self.lora = {a: {k: {n: v.astype(dtype) for n, v in t.items()} for k, t in m.items()}
                     for a, m in self.lora.items()}
        self.merged = list(self.merged)
        self._unmerge_data = {k: v.astype(dtype) for k, v in self._unmerge_data.items()}

    # ------------------------------------------------------------ parameters
    def _peft_bias_name(self, name: str) -> str:
        module = name[: -len(".bias")]
        wrapped = any(module in t for t in self.lora.values())
        return f"{PREFIX}{module}.base_layer.bias" if wrapped else PREFIX + name

    def trainable_parameters(self) -> dict[str, np.ndarray]:
        """name -> array (the live arrays: an optimiser updates them in place), peft's names;
        empty in inference mode or when no adapter is left."""
        if not self.peft_config or self.active_peft_config.inference_mode:
            return {}
        out = {}
        for key, t in self.lora[self.active_adapter].items():
            for name, arr in t.items():
                out[f"{PREFIX}{key}.{name}"] = arr
        for name in sorted(self.trainable):
            out[self._peft_bias_name(name)] = self.params[name]
        return out

    def _adapter_arrays(self, adapter_name: str) -> dict[str, np.ndarray]:
        return {f"{PREFIX}{key}.{name}": arr for key, t in self.lora[adapter_name].items()
                for name, arr in t.items()}

    # ------------------------------------------------------------ forward / backward
    def _active_lora(self, name):
        if self._disabled or self.merged:
            return None
        return self.lora[self.active_adapter].get(name)

    def _linear(self, name: str, x):
        """Base Conv1D, plus s · drop(x) Aᵀ Bᵀ on each LoRA part (and DoRA's terms)."""
        W, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
        out, _ = self.ops.linear_forward(x, W, b)                       # (B, T, out), W frozen
        x_cache = None                                                  # backward needs no x for W
        t = self._active_lora(name)
        if t is None:
            return out, (x_cache, None)
        cfg = self.active_peft_config
        ops = _kernels() if self.use_kernels else twin
        s, x2 = cfg.scaling, x.reshape(-1, x.shape[-1])                 # (N, in)
        out2 = out.reshape(-1, out.shape[-1])                           # (N, out), a view
        mask = None
        if self.training and cfg.lora_dropout > 0:
            mask = twin.dropout_mask(self._rng, x2.shape, cfg.lora_dropout, x2.dtype)
        parts = []
        for prefix, cols in self._parts(cfg, name):
            A, B = t[f"{prefix}lora_A.weight"], t[f"{prefix}lora_B.weight"]
            delta, lc = ops.lora_forward(x2, A, B, s, mask)             # (N, out_part)
            if "lora_magnitude_vector" in t:
                norm = ops.dora_weight_norm(W, A, B, s)                 # (out,), a constant
                base = out2 - b if mask is None else (x2 * mask) @ W    # x W0 without bias
                delta, dc = ops.dora_forward(base, delta, t["lora_magnitude_vector"], norm)
                parts.append((prefix, cols, lc, dc))
            else:
                parts.append((prefix, cols, lc, None))
            out2[:, cols] += delta
        return out, (x_cache, (mask, parts))

    def _linear_backward(self, name: str, dout, cache, grads):
        """dout (B, T, out) -> dx; LoRA gradients go into ``grads`` under peft's names."""
        x, lora_cache = cache
        W = self.params[f"{name}.weight"]
        d2 = dout.reshape(-1, dout.shape[-1])                           # (N, out)
        if f"{name}.bias" in self.trainable:
            grads[f"{name}.bias"] = d2.sum(axis=0)
        if lora_cache is None:
            return self.ops.linear_backward(dout, None, W, need_params=False)[0]
        mask, parts = lora_cache
        cfg, t = self.peft_config[self.active_adapter], self.lora[self.active_adapter][name]
        ops = _kernels() if self.use_kernels else twin
        dbase_total = d2                                                # flows through x W0
        dx_extra = None
        for prefix, cols, lc, dc in parts:
            ddelta = d2[:, cols]
            if dc is not None:                                          # DoRA
                dbase, ddelta, dmag = ops.dora_backward(ddelta, dc)
                grads[f"{PREFIX}{name}.lora_magnitude_vector"] = dmag
                if mask is None:
                    dbase_total = dbase_total + dbase                   # base = x W0
                else:
                    dx_extra = (dbase @ W.T) * mask                     # base = drop(x) W0
            A, B = t[f"{prefix}lora_A.weight"], t[f"{prefix}lora_B.weight"]
            dxl, dA, dB = ops.lora_backward(ddelta, lc, A, B, cfg.scaling, mask)
            grads[f"{PREFIX}{name}.{prefix}lora_A.weight"] = dA
            grads[f"{PREFIX}{name}.{prefix}lora_B.weight"] = dB
            dx_extra = dxl if dx_extra is None else dx_extra + dxl
        dx = self.ops.linear_backward(dbase_total, None, W, need_params=False)[0] + dx_extra  # (N, in)
        return dx.reshape(*dout.shape[:-1], W.shape[0])

    def backward(self, dlogits, cache) -> dict[str, np.ndarray]:
        """GPT2.backward, with the trained biases renamed as peft saves them."""
        grads = super().backward(dlogits, cache)
        if self.active_peft_config.inference_mode:
            return {}
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
        from .lora_init import combine_lora
        check_adapter_name(adapter_name)
        if isinstance(adapters, str) or not isinstance(adapters, (list, tuple)) or not adapters \
                or not isinstance(weights, (list, tuple)):
            raise ConfigError(f"add_weighted_adapter takes lists: adapters=['a', 'b'], weights=[0.5, "
                              f"0.5]; got adapters={adapters!r}, weights={weights!r}.")
        for a in adapters:
            self._check_name(a)
        if svd_rank is not None and (isinstance(svd_rank, bool) or not isinstance(
                svd_rank, numbers.Integral) or svd_rank <= 0):
            raise ConfigError(f"add_weighted_adapter svd_rank must be a positive integer or None "
                              f"(None: the largest r of the adapters), got {svd_rank!r}.")
        if svd_clamp is not None and (isinstance(svd_clamp, bool) or not isinstance(
                svd_clamp, numbers.Real) or not 0 <= svd_clamp <= 1):
            raise ConfigError(f"add_weighted_adapter svd_clamp is a quantile in [0, 1] or None, "
                              f"got {svd_clamp!r}.")
        if len(weights) != len(adapters):
            raise ConfigError(f"add_weighted_adapter got {len(adapters)} adapters but "
                              f"{len(weights)} weights.")
        if adapter_name in self.peft_config:
            raise ConfigError(f"an adapter named {adapter_name!r} exists (peft would silently do "
                              "nothing); choose a new name.")
        bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, numbers.Real)
               or not math.isfinite(w)]
        if bad:
            raise ConfigError(f"add_weighted_adapter weights must be finite numbers, got {bad[0]!r}.")
        cfgs = [self.peft_config[a] for a in adapters]
        if any(c.use_dora or c.enable_lora is not None for c in cfgs):
            raise ConfigError("add_weighted_adapter combines plain LoRA adapters (no DoRA, no q/k/v slices).")
        keys = sorted({k for a in adapters for k in self.lora[a]})
        combined, ranks = {}, []
        for key in keys:
            parts = [(self.lora[a][key]["lora_A.weight"], self.lora[a][key]["lora_B.weight"],
                      c.scaling, c.r, c.lora_alpha) for a, c in zip(adapters, cfgs) if key in self.lora[a]]
            w = [wt for a, wt in zip(adapters, weights) if key in self.lora[a]]
            A, B, r_new, alpha_new = combine_lora(parts, w, combination_type, svd_rank=svd_rank,
                                                  svd_clamp=svd_clamp, svd_full_matrices=svd_full_matrices)
            combined[f"{key}.lora_A.weight"], combined[f"{key}.lora_B.weight"] = A, B
            ranks.append(r_new)
        if len(set(ranks)) > 1:
            raise ConfigError("add_weighted_adapter: these adapters target different modules, so the "
                              "combined rank would differ between layers; combine adapters with the "
                              "same target_modules.")
        # as peft: the first adapter's config with the new rank as both r and lora_alpha (the
        # weights and scalings are folded into A and B); targets: the modules combined, by full name
        config = dataclasses.replace(cfgs[0], r=r_new, lora_alpha=alpha_new, target_modules=keys,
                                     layers_to_transform=None)
        config.fan_in_fan_out = True
        self._check_new_adapter(adapter_name, config)        # its name, one adapter with bias
        self._register(adapter_name, config, lora={
            key: {"lora_A.weight": combined[f"{key}.lora_A.weight"],
                  "lora_B.weight": combined[f"{key}.lora_B.weight"]} for key in keys})

    # ------------------------------------------------------------ saving
    def _adapter_state(self, adapter_name):
        from .io import adapter_state
        return adapter_state(self, adapter_name)

    @classmethod
    def _read_state(cls, config, raw, model, path):
        from .io import read_lora_state
        return read_lora_state(config, raw, model, path)

    def _load_weights(self, adapter_name, weights, config):
        """Copy loaded tensors in; saved biases (bias="all"/"lora_only") replace the base's, as in peft."""
        self.peft_config[adapter_name].init_lora_weights = config.init_lora_weights
        for key, t in self.lora[adapter_name].items():
            for name, arr in t.items():
                arr[...] = weights[f"{key}.{name}"]
        for name, v in weights.items():
            if name in self.params:
                self.params[name] = v.copy()

    @staticmethod
    def _as_loaded(config: LoraConfig, is_trainable: bool) -> LoraConfig:
        """No PiSSA/OLoRA re-init of the base when loading (the saved adapter assumes its
        base already holds the residual)."""
        config = PeftModel._as_loaded(config, is_trainable)
        if isinstance(config.init_lora_weights, str) and config.init_lora_weights != "gaussian":
            config.init_lora_weights = True                 # pissa, pissa_niter_K, olora
        return config
