"""PeftModel: a frozen GPT2 whose linear layers carry LoRA adapters.

GPT2 sends every linear layer through ``_linear`` / ``_linear_backward``; PeftModel
overrides those two hooks and nothing else, so the forward and backward a reader
follows in ``model/gpt2.py`` stay the same. The base parameters are shared with the
model given to ``get_peft_model`` (as peft injects into the model in place); they
stay frozen except the biases that ``bias="all"`` / ``"lora_only"`` train.

Names follow peft's saved state dict: ``base_model.model.<module>.lora_A.weight``,
``….lora_B.weight``, ``….lora_magnitude_vector`` (DoRA), ``….base_layer.bias`` for
the bias of a layer that carries LoRA, ``base_model.model.<name>`` for other biases.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import warnings

import numpy as np

from ..errors import ConfigError
from ..model.gpt2 import GPT2
from ..ops import linear_forward
from . import lora as twin
from .config import LINEAR_MODULES, LoraConfig
from .lora_init import lora_init

PREFIX = "base_model.model."
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


class PeftModel(GPT2):
    """A GPT2 with LoRA adapters: peft's PeftModel for GPT-2, in NumPy."""

    def __init__(self, model: GPT2, config: LoraConfig, adapter_name: str = "default", seed: int = 0):
        if not isinstance(model, GPT2) or isinstance(model, PeftModel):
            raise ConfigError("get_peft_model needs a minipeft GPT2 (e.g. GPT2.from_pretrained(...)), "
                              f"got {type(model).__name__}.")
        super().__init__(model.config, model.params, trainable=())
        self.base_model = model
        self.peft_config: dict[str, LoraConfig] = {}
        self.lora: dict[str, dict[str, dict[str, np.ndarray]]] = {}   # adapter -> module -> tensors
        self.active_adapter = adapter_name
        self.training = False
        self.use_kernels = True
        self.merged: list[str] = []          # adapters merged into the base weights
        self._dora_norms: dict[tuple[str, str], np.ndarray] = {}
        self._disabled = False
        self._rng = np.random.default_rng(seed)
        self.add_adapter(adapter_name, config, seed=seed)

    # ------------------------------------------------------------ adapters
    def add_adapter(self, adapter_name: str, config: LoraConfig, seed: int = 0):
        """Create an adapter, initialised as config.init_lora_weights says."""
        if not isinstance(config, LoraConfig):
            raise ConfigError(f"add_adapter needs a LoraConfig, got {type(config).__name__}.")
        if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
            raise ConfigError(f"adapter name must be a non-empty string without dots, got {adapter_name!r}.")
        if adapter_name in self.peft_config:
            raise ConfigError(f"an adapter named {adapter_name!r} exists; delete_adapter it first "
                              "or choose another name.")
        if self.merged:
            raise ConfigError("unmerge_adapter() before adding an adapter.")
        config = copy.deepcopy(config)
        if not config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to False but GPT-2's layers are Conv1D, stored "
                          "[in, out]; setting fan_in_fan_out to True (as peft does).", stacklevel=3)
            config.fan_in_fan_out = True
        keys = target_keys(config, self.config)
        rng = np.random.default_rng(seed)
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
        self.peft_config[adapter_name] = config
        self.lora[adapter_name] = tensors
        if len(self.peft_config) == 1:
            self.set_adapter(adapter_name)

    def set_adapter(self, adapter_name: str):
        """Make ``adapter_name`` the active (and trainable) adapter."""
        self._check_name(adapter_name)
        if self.merged:
            raise ConfigError("unmerge_adapter() before switching adapters.")
        self.active_adapter = adapter_name
        cfg = self.peft_config[adapter_name]
        biases = set()
        if cfg.bias == "all":
            biases = {k for k in self.params if k.endswith(".bias")}
        elif cfg.bias == "lora_only":
            biases = {f"{k}.bias" for k in self.lora[adapter_name]}
        self.trainable = biases if not cfg.inference_mode else set()

    def delete_adapter(self, adapter_name: str):
        self._check_name(adapter_name)
        if adapter_name in self.merged:
            raise ConfigError(f"adapter {adapter_name!r} is merged; unmerge_adapter() first.")
        del self.peft_config[adapter_name], self.lora[adapter_name]
        if adapter_name == self.active_adapter and self.peft_config:
            self.set_adapter(next(iter(self.peft_config)))

    def _check_name(self, adapter_name):
        if adapter_name not in self.peft_config:
            raise ConfigError(f"no adapter named {adapter_name!r}; this model has "
                              f"{sorted(self.peft_config)}.")

    def _parts(self, config: LoraConfig, key: str):
        return lora_parts(config, key, self.params[f"{key}.weight"].shape[1], self.config.n_embd)

    def astype(self, dtype) -> "PeftModel":
        """A copy in float32 or float64, base and adapters alike (float64 for checks)."""
        base = self.base_model.astype(dtype)           # shares self.params: merged or not, as now
        new = copy.copy(self)
        new.base_model, new.params = base, base.params
        new.lora = {a: {k: {n: v.astype(dtype) for n, v in t.items()} for k, t in m.items()}
                    for a, m in self.lora.items()}
        new.peft_config = copy.deepcopy(self.peft_config)
        new.trainable, new.merged = set(self.trainable), list(self.merged)
        new._dora_norms = {k: v.astype(dtype) for k, v in self._dora_norms.items()}
        return new

    # ------------------------------------------------------------ parameters
    def _peft_bias_name(self, name: str) -> str:
        module = name[: -len(".bias")]
        wrapped = any(module in t for t in self.lora.values())
        return f"{PREFIX}{module}.base_layer.bias" if wrapped else PREFIX + name

    def trainable_parameters(self) -> dict[str, np.ndarray]:
        """name -> array (the live arrays: an optimiser updates them in place), peft's names."""
        if self.peft_config[self.active_adapter].inference_mode:
            return {}
        out = {}
        for key, t in self.lora[self.active_adapter].items():
            for name, arr in t.items():
                out[f"{PREFIX}{key}.{name}"] = arr
        for name in sorted(self.trainable):
            out[self._peft_bias_name(name)] = self.params[name]
        return out

    def num_parameters(self) -> int:
        """The base model's parameters plus every adapter's."""
        return super().num_parameters() + sum(a.size for t in self.lora.values()
                                              for m in t.values() for a in m.values())

    def print_trainable_parameters(self):
        """peft's line: trainable params: N || all params: M || trainable%: P."""
        trainable = sum(a.size for a in self.trainable_parameters().values())
        total = self.num_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    # ------------------------------------------------------------ modes
    def train(self, mode: bool = True, seed: int | None = None):
        """Training mode turns LoRA dropout on; ``seed`` restarts its random stream."""
        self.training = mode
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def disable_adapter(self):
        """``with model.disable_adapter():`` runs the base model."""
        if self.merged:
            raise ConfigError("the adapter is merged into the weights; unmerge_adapter() before "
                              "disable_adapter().")
        self._disabled = True
        try:
            yield self
        finally:
            self._disabled = False

    # ------------------------------------------------------------ forward / backward
    def _active_lora(self, name):
        if self._disabled or self.merged:
            return None
        return self.lora[self.active_adapter].get(name)

    def _linear(self, name: str, x):
        """Base Conv1D, plus s · drop(x) Aᵀ Bᵀ on each LoRA part (and DoRA's terms)."""
        W, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
        out, x_cache = linear_forward(x, W, b)                          # (B, T, out)
        t = self._active_lora(name)
        if t is None:
            return out, (x_cache, None)
        cfg = self.peft_config[self.active_adapter]
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
            return dout @ W.T
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
        dx = (dbase_total @ W.T) + dx_extra                             # (N, in)
        return dx.reshape(*dout.shape[:-1], W.shape[0])

    def backward(self, dlogits, cache) -> dict[str, np.ndarray]:
        """GPT2.backward, with the trained biases renamed as peft saves them."""
        grads = super().backward(dlogits, cache)
        if self.peft_config[self.active_adapter].inference_mode:
            return {}
        return {(self._peft_bias_name(k) if not k.startswith(PREFIX) else k): v
                for k, v in grads.items()}

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False):
        if not self.peft_config:
            raise ConfigError("this PeftModel has no adapter left; add_adapter one.")
        return super().forward(input_ids, attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, use_cache=use_cache)

    # ------------------------------------------------------------ merging
    def merge_adapter(self):
        """Fold the active adapter into the base weights (forward then skips LoRA)."""
        if self.merged:
            raise ConfigError(f"adapter {self.merged[0]!r} is already merged.")
        self.params.update(self._merged_weights(self.active_adapter, keep_norms=True))
        self.merged = [self.active_adapter]

    def _merged_weights(self, name, keep_norms=False) -> dict[str, np.ndarray]:
        """{module.weight: W0 + s (BA)ᵀ (DoRA: times m / norm)} for adapter ``name``, new arrays."""
        cfg, out = self.peft_config[name], {}
        for key, t in self.lora[name].items():
            W = self.params[f"{key}.weight"].copy()
            for prefix, cols in self._parts(cfg, key):
                W[:, cols], norm = twin.merge_weight(
                    W[:, cols], t[f"{prefix}lora_A.weight"], t[f"{prefix}lora_B.weight"],
                    cfg.scaling, t.get("lora_magnitude_vector"))
                if norm is not None and keep_norms:        # unmerge divides by the same factor
                    self._dora_norms[(name, key)] = norm
            out[f"{key}.weight"] = W
        return out

    def unmerge_adapter(self):
        """Take the merged adapter back out of the base weights."""
        if not self.merged:
            raise ConfigError("no adapter is merged.")
        name = self.merged[0]
        cfg = self.peft_config[name]
        for key, t in self.lora[name].items():
            W = self.params[f"{key}.weight"].copy()
            for prefix, cols in self._parts(cfg, key):
                W[:, cols] = twin.unmerge_weight(
                    W[:, cols], t[f"{prefix}lora_A.weight"], t[f"{prefix}lora_B.weight"],
                    cfg.scaling, t.get("lora_magnitude_vector"), self._dora_norms.pop((name, key), None))
            self.params[f"{key}.weight"] = W
        self.merged = []

    def merge_and_unload(self) -> GPT2:
        """A plain GPT2 with the active adapter merged in (new arrays; this model is untouched)."""
        params = {k: v.copy() for k, v in self.params.items()}
        if not self.merged:
            params.update(self._merged_weights(self.active_adapter))
        return GPT2(self.config, params)

    # ------------------------------------------------------------ weighted adapters
    def add_weighted_adapter(self, adapters, weights, adapter_name, combination_type="svd",
                             svd_rank=None, svd_clamp=None, svd_full_matrices=True):
        """A new adapter mixing existing ones, as peft's add_weighted_adapter."""
        from .lora_init import combine_lora
        for a in adapters:
            self._check_name(a)
        if len(weights) != len(adapters):
            raise ConfigError(f"add_weighted_adapter got {len(adapters)} adapters but "
                              f"{len(weights)} weights.")
        if adapter_name in self.peft_config:
            raise ConfigError(f"an adapter named {adapter_name!r} exists (peft would silently do "
                              "nothing); choose a new name.")
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
        self.peft_config[adapter_name] = config
        self.lora[adapter_name] = {key: {"lora_A.weight": combined[f"{key}.lora_A.weight"],
                                         "lora_B.weight": combined[f"{key}.lora_B.weight"]}
                                   for key in keys}

    # ------------------------------------------------------------ saving
    def save_pretrained(self, folder, selected_adapters=None):
        """peft's format: adapter_config.json + adapter_model.safetensors per adapter
        ("default" in ``folder``, others in ``folder/<name>``)."""
        from .io import save_adapters
        return save_adapters(self, folder, selected_adapters)

    @classmethod
    def from_pretrained(cls, model: GPT2, folder, adapter_name: str = "default",
                        is_trainable: bool = False) -> "PeftModel":
        """Load an adapter saved by peft or minipeft onto ``model`` (for inference unless
        ``is_trainable``, as peft)."""
        from .io import read_adapter
        config, weights = read_adapter(folder, model)
        pm = cls(model, _as_loaded(config, is_trainable), adapter_name=adapter_name)
        pm._load_weights(adapter_name, weights, config.init_lora_weights)
        return pm

    def load_adapter(self, folder, adapter_name: str, is_trainable: bool = False):
        """Load another saved adapter into this model under ``adapter_name``."""
        from .io import read_adapter
        config, weights = read_adapter(folder, self.base_model)
        self.add_adapter(adapter_name, _as_loaded(config, is_trainable))
        self._load_weights(adapter_name, weights, config.init_lora_weights)

    def _load_weights(self, adapter_name, weights, init):
        """Copy loaded tensors in; saved biases (bias="all"/"lora_only") replace the base's, as in peft."""
        self.peft_config[adapter_name].init_lora_weights = init
        for key, t in self.lora[adapter_name].items():
            for name, arr in t.items():
                arr[...] = weights[f"{key}.{name}"]
        for name, v in weights.items():
            if name in self.params:
                self.params[name] = v.copy()

    def __repr__(self):
        return (f"PeftModel(adapters={sorted(self.peft_config)}, active={self.active_adapter!r}, "
                f"n_layer={self.config.n_layer}, n_embd={self.config.n_embd})")


def _as_loaded(config: LoraConfig, is_trainable: bool) -> LoraConfig:
    """The config to create a loaded adapter with: no PiSSA/OLoRA re-init of the base
    (the saved adapter assumes its base already holds the residual)."""
    config = copy.deepcopy(config)
    config.inference_mode = not is_trainable
    if config.init_lora_weights in ("pissa", "olora"):
        config.init_lora_weights = True
    return config


def get_peft_model(model: GPT2, config: LoraConfig, adapter_name: str = "default",
                   seed: int = 0) -> PeftModel:
    """Wrap ``model`` with a LoRA adapter, as peft.get_peft_model. The base stays frozen;
    ``seed`` makes the adapter's initialisation repeatable."""
    if not isinstance(config, LoraConfig):
        raise ConfigError(f"get_peft_model needs a PEFT config such as LoraConfig, got "
                          f"{type(config).__name__}.")
    return PeftModel(model, config, adapter_name=adapter_name, seed=seed)
