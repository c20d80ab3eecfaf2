"""IA3Model: a frozen GPT2 whose linear layers rescale activations (the math: ia3.py;
the config and its placement: ia3_config.py).

IA3Model overrides GPT2's ``_linear`` / ``_linear_backward`` hooks and nothing else, as
LoraModel does:

    out = (x W + b) ⊙ l                  an output scaling, l (out, 1) in peft's shape
    out = (x ⊙ l) W + b                  a "feedforward" module's input scaling, l (1, in)

Names follow peft's saved state dict: ``base_model.model.transformer.h.0.attn.c_attn.ia3_l``.
With ``c_attn_slices`` each chosen q/k/v slice has its own (C, 1) vector
(``….c_attn.k.ia3_l``); the others are a fixed 1 and never train. Saved, the slices
become one (3C, 1) vector with ones in the slices left out (docs/compatibility.md).

Merging folds l into W and b as peft does (base.MergeMixin: adapter_names, safe_merge,
merging twice); unmerging divides it back out exactly (peft divides by l + 1e-8), so
merge_adapter refuses an l with a zero entry (merge_and_unload, which leaves the model as
it is, takes any l).
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..kernels import ia3 as kernels
from . import ia3 as twin
from .base import PREFIX, MergeMixin, PeftModel, check_fits
from .ia3_config import IA3Config, ia3_parts, is_feedforward, target_keys
from .mapping import register_peft_method


class IA3LayerCache(NamedTuple):
    """What one IA3 layer's backward needs: nothing is read from the model then."""
    saved: np.ndarray             # (N, in) x of a feedforward module, else (N, out) h = x W + b
    parts: list                   # [(prefix, columns, l (n,))] of the adapter that ran
    feedforward: bool             # the input is scaled (else the output)


class IA3Model(MergeMixin, PeftModel):
    """A GPT2 with IA3 adapters: peft's IA3Model for GPT-2, in NumPy."""

    config_class = IA3Config
    _stores = ("ia3", "feedforward")

    def _init_state(self):
        super()._init_state()
        self.ia3: dict[str, dict[str, dict[str, np.ndarray]]] = {}   # adapter -> module -> {name: l}
        self.feedforward: dict[str, set[str]] = {}                    # adapter -> input-scaled modules

    # ------------------------------------------------------------ adapters
    def add_adapter(self, adapter_name: str, config: IA3Config, seed: int | None = None):
        """Create an adapter: l = 1 (init_ia3_weights), else standard normal as peft
        (``seed`` makes that repeatable; None: a fresh draw)."""
        self._check_new_adapter(adapter_name, config)
        if self.merged:
            raise ConfigError("unmerge_adapter() before adding an adapter.")
        config = config.resolved()
        if not config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to False but GPT-2's layers are Conv1D, stored "
                          "[in, out]; setting fan_in_fan_out to True (as peft does).", stacklevel=3)
            config.fan_in_fan_out = True
        keys = target_keys(config, self.config)
        check_fits(f"IA3 on {len(keys)} modules", [self.params[f"{k}.weight"].shape[:1]
                                                    for k in keys], self.dtype)   # at most in + out each
        rng = self._init_rng(seed)
        tensors, ff = {}, set()
        for key in keys:
            n_in, n_out = self.params[f"{key}.weight"].shape
            fwd = is_feedforward(config, key)
            if fwd:
                ff.add(key)
            t = {}
            for prefix, cols in ia3_parts(config, key, n_in if fwd else n_out, self.config.n_embd, fwd):
                n = cols.stop - cols.start
                shape = (1, n) if fwd else (n, 1)                       # peft's shapes
                t[f"{prefix}ia3_l"] = (np.ones(shape) if config.init_ia3_weights
                                       else rng.standard_normal(shape)).astype(self.dtype)
            tensors[key] = t
        self._register(adapter_name, config, ia3=tensors, feedforward=ff)

    def _parts(self, adapter_name: str, key: str):
        """[(prefix, columns, l (n,) view of the live vector)] of one module."""
        cfg, fwd = self.peft_config[adapter_name], key in self.feedforward[adapter_name]
        n_in, n_out = self.params[f"{key}.weight"].shape
        t = self.ia3[adapter_name][key]
        return [(prefix, cols, t[f"{prefix}ia3_l"].reshape(-1))
                for prefix, cols in ia3_parts(cfg, key, n_in if fwd else n_out, self.config.n_embd, fwd)]

    # ------------------------------------------------------------ forward / backward
    def _linear(self, name: str, x):
        """Conv1D with IA3: (x W + b) ⊙ l, or (x ⊙ l) W + b for a feedforward module."""
        W, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
        if self._disabled or self.merged or name not in self.ia3[self.active_adapter]:
            return self.ops.linear_forward(x, W, b)[0], None
        ops = kernels if self.use_kernels else twin
        parts = self._parts(self.active_adapter, name)
        if name in self.feedforward[self.active_adapter]:
            x2 = x.reshape(-1, x.shape[-1])                             # (N, in)
            xs, _ = ops.ia3_forward(x2, parts[0][2])                    # x ⊙ l
            out, _ = self.ops.linear_forward(xs.reshape(x.shape), W, b)  # (B, T, out)
            return out, IA3LayerCache(x2, parts, True)
        h, _ = self.ops.linear_forward(x, W, b)                         # (B, T, out)  x W + b
        h2 = h.reshape(-1, h.shape[-1])                                 # (N, out)
        if parts[0][1] == slice(0, h2.shape[1]):                        # the whole output
            return ops.ia3_forward(h2, parts[0][2])[0].reshape(h.shape), IA3LayerCache(h2, parts, False)
        out = h2.copy()                                                 # q/k/v slices: the rest × 1
        for _, cols, l in parts:
            out[:, cols] = ops.ia3_forward(h2[:, cols], l)[0]
        return out.reshape(h.shape), IA3LayerCache(h2, parts, False)

    def _linear_backward(self, name: str, dout, cache, grads):
        """dout (B, T, out) -> dx (B, T, in); dl into ``grads`` under peft's names."""
        W = self.params[f"{name}.weight"]
        if cache is None:                                               # no IA3 on this layer
            return self.ops.linear_backward(dout, None, W, need_params=False)[0]
        ops = kernels if self.use_kernels else twin
        d2 = dout.reshape(-1, dout.shape[-1])                           # (N, out)
        if cache.feedforward:
            # out = xs W + b;  xs = x ⊙ l
            (_, cols, l), = cache.parts
            dxs = self.ops.linear_backward(d2, None, W, need_params=False)[0]
            dx, dl = ops.ia3_backward(dxs, cache.saved, l)
            grads[f"{PREFIX}{name}.ia3_l"] = dl.reshape(1, -1)         # peft's (1, in)
            return dx.reshape(*dout.shape[:-1], W.shape[0])
        # out = h ⊙ l;  h = x W + b
        if cache.parts[0][0] == "":                                     # the whole output
            (_, _, l), = cache.parts
            dh, dl = ops.ia3_backward(d2, cache.saved, l)
            grads[f"{PREFIX}{name}.ia3_l"] = dl.reshape(-1, 1)          # peft's (out, 1)
        else:
            dh = d2.copy()                                              # q/k/v slices: the rest × 1
            for prefix, cols, l in cache.parts:
                dh[:, cols], dl = ops.ia3_backward(d2[:, cols], cache.saved[:, cols], l)
                grads[f"{PREFIX}{name}.{prefix}ia3_l"] = dl.reshape(-1, 1)
        return self.ops.linear_backward(dh, None, W, need_params=False)[0].reshape(
            *dout.shape[:-1], W.shape[0])

    # ------------------------------------------------------------ merging
    def _folded(self, adapter_name: str, params, unmerge: bool = False) -> dict[str, np.ndarray]:
        """{module.weight / .bias: new array} with each vector folded into ``params`` (or divided
        out): W ⊙ l on the output columns and b ⊙ l, or W's input rows for a feedforward module."""
        ops = kernels if self.use_kernels else twin
        fold, out = ops.unmerge_weight if unmerge else ops.merge_weight, {}
        for key in self.ia3[adapter_name]:
            W, b = params[f"{key}.weight"].copy(), params[f"{key}.bias"].copy()
            fwd = key in self.feedforward[adapter_name]
            for _, cols, l in self._parts(adapter_name, key):
                if fwd:
                    W, b = fold(W, b, l, True)
                else:
                    W[:, cols], b[cols] = fold(W[:, cols], b[cols], l, False)
            out[f"{key}.weight"], out[f"{key}.bias"] = W, b
        return out

    def _merged_params(self, name, params, base, keep):
        return self._folded(name, params)

    def _unmerged_params(self, name, params, kept):
        """Exact division, where peft divides by l + 1e-8 (its warning: "Unmerge result can
        be inaccurate for (IA)^3")."""
        return self._folded(name, params, unmerge=True)

    def _check_mergeable(self, adapter_name: str):
        """merge_adapter only: a zero in l could never be divided back out (merge_and_unload,
        which leaves this model as it is, takes any l)."""
        zero = [k for k, a in self._adapter_arrays(adapter_name).items() if not np.all(a != 0)]
        if zero:
            raise ConfigError(f"{zero[0]} has entries equal to 0: merged, they could never be divided "
                              "back out. Use merge_and_unload(), which leaves this model as it is.")

    # ------------------------------------------------------------ saving and loading
    def _adapter_state(self, adapter_name: str) -> tuple[dict, dict]:
        """peft's config and tensors: c_attn's slices saved as one (3C, 1) vector, ones where
        no slice is chosen; module lists spelt out where peft could not read its own form."""
        d = self.peft_config[adapter_name].to_dict()
        d["inference_mode"] = True                                      # as peft writes it
        t, ff = d["target_modules"], d["feedforward_modules"]
        if isinstance(t, list) and isinstance(ff, list) and not set(ff) <= set(t):
            d["target_modules"] = sorted(self.ia3[adapter_name])
            d["feedforward_modules"] = sorted(self.feedforward[adapter_name])
        state = {}
        for key, t in self.ia3[adapter_name].items():
            if "ia3_l" in t:                                            # one vector: saved as it is
                state[f"{PREFIX}{key}.ia3_l"] = t["ia3_l"]
                continue
            whole = np.ones((self.params[f"{key}.weight"].shape[1], 1), self.dtype)  # (3C, 1)
            for _, cols, l in self._parts(adapter_name, key):
                whole[cols, 0] = l
            state[f"{PREFIX}{key}.ia3_l"] = whole
        return d, state

    @classmethod
    def _saved_shapes(cls, config, model):
        """One vector per module it scales, in peft's shape: (1, in) or (out, 1)."""
        config, expected = config.resolved(), {}
        for key in target_keys(config, model.config):
            n_in, n_out = model.params[f"{key}.weight"].shape
            expected[f"{PREFIX}{key}.ia3_l"] = (1, n_in) if is_feedforward(config, key) else (n_out, 1)
        return expected

    @classmethod
    def _read_state(cls, config, raw, model, path):
        named = {(k if k.startswith(PREFIX) else PREFIX + k): v for k, v in raw.items()}
        return super()._read_state(config, named, model, path)

    def _load_weights(self, adapter_name, weights, config):
        """Copy the saved vectors in. A config asking for c_attn slices takes them out of
        the whole saved vector, whose other slices must then be ones."""
        for key, t in self.ia3[adapter_name].items():
            saved = weights[f"{PREFIX}{key}.ia3_l"]
            if "ia3_l" in t:
                t["ia3_l"][...] = saved
                continue
            rest = np.ones(saved.shape[0], bool)
            for prefix, cols, _ in self._parts(adapter_name, key):
                t[f"{prefix}ia3_l"][...] = saved[cols]
                rest[cols] = False
            if not np.all(saved[rest] == 1):
                raise CheckpointError(f"{key}.ia3_l scales c_attn slices that c_attn_slices "
                                      f"{config.c_attn_slices} leaves out; load it without c_attn_slices.")


register_peft_method(peft_type="IA3", config_cls=IA3Config, model_cls=IA3Model)
