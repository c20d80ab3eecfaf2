"""IA3Config and IA3Model: a frozen GPT2 whose linear layers rescale activations.

The math is in ``ia3.py``. IA3Model overrides GPT2's ``_linear`` / ``_linear_backward``
hooks and nothing else, as LoraModel does. Names follow peft's saved state dict:
``base_model.model.transformer.h.0.attn.c_attn.ia3_l``, shape (out, 1) for an output
scaling and (1, in) for an input ("feedforward") scaling, as peft's tensors.

Placement. peft's GPT-2 default, ``target_modules=["c_attn", "mlp.c_proj"]`` and
``feedforward_modules=["mlp.c_proj"]``, scales the fused q, k, v output of c_attn (3C)
and the input of mlp.c_proj (4C). The paper scales k, v and the feed-forward only:
GPT-2 fuses q, k, v in one layer, so minipeft adds ``c_attn_slices`` (which of
"q", "k", "v" c_attn scales; None: all three, as peft). ``IA3Config.paper()`` is the
paper's placement. Each chosen slice is its own (C, 1) vector
(``….c_attn.k.ia3_l``); the others are a fixed 1 and never train.

Saving in peft's format: c_attn_slices is not written (peft has no such field); the
c_attn vector is saved whole, (3C, 1), with ones in the slices left out: the same
model, which peft, and minipeft, load back as a plain IA3 whose q part then trains too
(like LoRA's enable_lora, see io.py). peft resolves its GPT-2 defaults into the config
it saves, and so does minipeft, with one repair: peft writes some configs that its own
loader refuses (target_modules given, feedforward_modules left None: ["mlp.c_proj"] is
then not a subset of target_modules); minipeft writes those with the module names
spelt out, which both load back to the same model, and reads peft's such files too.
"all-linear" is written as "all-linear" (peft writes the module names, with the same
problem).

Merging folds l into W and b as peft does (base.MergeMixin: adapter_names, safe_merge,
merging twice); unmerging divides it back out exactly (peft divides by l + 1e-8), so
merge_adapter refuses an l with a zero entry (merge_and_unload, which leaves the model as
it is, takes any l).
"""
from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from ..config import refuse_unknown_fields
from ..errors import CheckpointError, ConfigError
from ..ops import linear_forward
from . import ia3 as twin
from .base import PREFIX, MergeMixin, PeftModel, check_fits
from .config_base import AUTO_MAPPING, checked_config, from_peft_dict, peft_dict
from .lora_model import target_keys as _lora_target_keys

GPT2_TARGETS = ["c_attn", "mlp.c_proj"]       # peft's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
GPT2_FEEDFORWARD = ["mlp.c_proj"]             # ... _FEEDFORWARD_MODULES_MAPPING
QKV = ("q", "k", "v")
_UNUSED_PEFT_FIELDS = {"exclude_modules": None, "modules_to_save": None}


def _kernels():
    from ..kernels import ia3 as kernels
    return kernels


def _names(value, what: str, allow_empty: bool):
    """A list/set/tuple of module names -> a list; a regex string or None as it is."""
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as e:
            raise ConfigError(f"IA3Config {what} {value!r} is not a valid regular expression: "
                              f"{e}.") from None
    if value is None or isinstance(value, str) and value:
        return value
    if isinstance(value, (set, tuple)):
        value = sorted(value) if isinstance(value, set) else list(value)
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value) \
            or not (value or allow_empty):
        raise ConfigError(f"IA3Config {what} must be a {'' if allow_empty else 'non-empty '}list of "
                          f"module names (e.g. {GPT2_TARGETS}) or a regex string; got {value!r}.")
    return value


@refuse_unknown_fields
@checked_config
@dataclass
class IA3Config:
    """IA3's settings, as ``peft.IA3Config`` (same names, same defaults).

    target_modules: module names matched by suffix (peft's rule: "c_attn",
        "attn.c_proj", "mlp.c_fc", "mlp.c_proj"; "c_proj" means both), a regular
        expression on the whole name ("transformer.h.0.attn.c_attn"), "all-linear",
        or None for peft's GPT-2 default ["c_attn", "mlp.c_proj"].
    feedforward_modules: the targets whose *input* is scaled; a list (peft's rule:
        the module name ends with the entry) that must be a subset of target_modules
        when both are lists, as peft checks, or a regex. None: ["mlp.c_proj"].
    init_ia3_weights: True starts every l at 1 (the base model); False at standard
        normal values, as peft's torch.randn (discouraged).
    c_attn_slices: minipeft's addition: which of "q", "k", "v" of the fused c_attn are
        scaled, e.g. ["k", "v"] (the paper); None: all three (peft).
    """
    target_modules: list[str] | str | None = None
    feedforward_modules: list[str] | str | None = None
    fan_in_fan_out: bool = False
    init_ia3_weights: bool = True
    c_attn_slices: list[str] | None = None
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    inference_mode: bool = False
    peft_type: str = field(default="IA3", init=False)

    def __post_init__(self):
        t = _names(self.target_modules, "target_modules", allow_empty=False)
        if isinstance(t, list) and len(t) == 1:
            t = t[0] if t[0].lower() == "all-linear" else t          # peft accepts ["all-linear"] too
        if isinstance(t, str) and t.lower() == "all-linear":
            t = "all-linear"
        self.target_modules = t
        self.feedforward_modules = ff = _names(self.feedforward_modules, "feedforward_modules", True)
        if isinstance(t, list) and isinstance(ff, list) and not set(ff) <= set(t):
            raise ConfigError(
                f"IA3Config feedforward_modules {sorted(set(ff) - set(t))} are not in target_modules "
                f"{t}: peft requires feedforward_modules to be a subset of target_modules (compared "
                "as names). Add them to target_modules, e.g. target_modules=['c_attn', 'mlp.c_proj'], "
                "feedforward_modules=['mlp.c_proj'].")
        for name in ("fan_in_fan_out", "init_ia3_weights", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"IA3Config {name} must be True or False, "
                                  f"got {getattr(self, name)!r}.")
        s = self.c_attn_slices
        if s is not None:
            if isinstance(s, str) or not isinstance(s, (list, tuple)) or not s or \
                    not all(x in QKV for x in s) or len(set(s)) != len(s):
                raise ConfigError("IA3Config c_attn_slices must be a non-empty list of distinct slices "
                                  "of c_attn among 'q', 'k', 'v', e.g. ['k', 'v'] (the paper); "
                                  f"got {s!r}.")
            self.c_attn_slices = [x for x in QKV if x in s]

    @classmethod
    def paper(cls, **kwargs) -> "IA3Config":
        """The paper's placement: keys, values and the feed-forward's inner activation."""
        return cls(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                   c_attn_slices=["k", "v"], **kwargs)

    def resolved(self) -> "IA3Config":
        """A copy with peft's GPT-2 defaults filled in, as peft stores and saves the config."""
        config = copy.deepcopy(self)
        if config.target_modules is None:
            config.target_modules = list(GPT2_TARGETS)
        if config.feedforward_modules is None:
            config.feedforward_modules = list(GPT2_FEEDFORWARD)
        return config

    # ------------------------------------------------------------ peft's json form
    def to_dict(self) -> dict:
        """The adapter_config.json peft writes (its unused fields at their defaults)."""
        d = peft_dict(self, _UNUSED_PEFT_FIELDS,          # peft: auto_mapping only without task_type
                      auto_mapping=AUTO_MAPPING if self.task_type is None else None)
        del d["c_attn_slices"]                              # peft has no such field: see the module doc
        for k in ("target_modules", "feedforward_modules"):
            if isinstance(d[k], list):                      # a set in peft: order has no meaning
                d[k] = sorted(set(d[k]))
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "adapter config") -> "IA3Config":
        """Read peft's adapter_config.json dict; refuse what minipeft cannot honour."""
        kwargs = from_peft_dict(cls, d, source, _UNUSED_PEFT_FIELDS,
                                hint="Use target_modules and feedforward_modules only.")
        t, ff = kwargs.get("target_modules"), kwargs.get("feedforward_modules")
        if isinstance(t, list) and isinstance(ff, list) and not set(ff) <= set(t):
            # peft saves this form (target_modules given, feedforward left to its default) but
            # refuses to read it back; minipeft reads it as the model peft had trained
            config = cls(**{**kwargs, "feedforward_modules": None})
            config.feedforward_modules = _names(ff, "feedforward_modules", True)
            return config
        return cls(**kwargs)


# ------------------------------------------------------------------ which modules, how
def target_keys(config: IA3Config, model_config) -> list[str]:
    """The modules a config adapts, matched as peft matches them (the rule LoRA uses)."""
    t = config.target_modules if config.target_modules is not None else GPT2_TARGETS
    keys = _lora_target_keys(SimpleNamespace(target_modules=t, layers_to_transform=None,
                                             enable_lora=None), model_config)
    if config.c_attn_slices is not None:
        c_attn = [k for k in keys if k.endswith("attn.c_attn")]
        if not c_attn:
            raise ConfigError("IA3Config c_attn_slices picks q/k/v slices of c_attn, but c_attn is not "
                              "targeted: add 'c_attn' to target_modules, or leave c_attn_slices None.")
        if any(is_feedforward(config, k) for k in c_attn):
            raise ConfigError("IA3Config c_attn_slices slices c_attn's output, but c_attn is in "
                              "feedforward_modules (its input is scaled): drop one of the two.")
    return keys


def is_feedforward(config: IA3Config, key: str) -> bool:
    """Is module ``key``'s input scaled? peft: a regex matches the whole name, a list
    entry matches when the name ends with it."""
    ff = config.feedforward_modules if config.feedforward_modules is not None else GPT2_FEEDFORWARD
    if isinstance(ff, str):
        return re.fullmatch(ff, key) is not None
    return any(key.endswith(f) for f in ff)


def ia3_parts(config: IA3Config, key: str, n: int, C: int, feedforward: bool):
    """(name prefix, columns) of each vector on module ``key``: the whole layer (n wide),
    or the chosen q/k/v slices of c_attn (each C wide)."""
    if config.c_attn_slices is None or feedforward or not key.endswith("attn.c_attn"):
        return [("", slice(0, n))]
    return [(f"{s}.", slice(j * C, (j + 1) * C)) for j, s in enumerate(QKV) if s in config.c_attn_slices]


class IA3Model(MergeMixin, PeftModel):
    """A GPT2 with IA3 adapters: peft's IA3Model for GPT-2, in NumPy."""

    config_class = IA3Config
    _stores = ("ia3", "feedforward")

    def _init_state(self):
        self.ia3: dict[str, dict[str, dict[str, np.ndarray]]] = {}   # adapter -> module -> {name: l}
        self.feedforward: dict[str, set[str]] = {}                    # adapter -> input-scaled modules
        self.merged: list[str] = []                                   # merged adapters, in order
        self._unmerge_data: dict = {}                                 # (IA3 needs none)

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

    def _adapter_arrays(self, adapter_name: str) -> dict[str, np.ndarray]:
        return {f"{PREFIX}{key}.{name}": arr for key, t in self.ia3[adapter_name].items()
                for name, arr in t.items()}

    def _astype_adapters(self, dtype):
        self.ia3 = {a: {k: {n: v.astype(dtype) for n, v in t.items()} for k, t in m.items()}
                    for a, m in self.ia3.items()}
        self.feedforward = {a: set(f) for a, f in self.feedforward.items()}
        self.merged = list(self.merged)
        self._unmerge_data = dict(self._unmerge_data)

    # ------------------------------------------------------------ forward / backward
    def _linear(self, name: str, x):
        """Conv1D with IA3: (x W + b) ⊙ l, or (x ⊙ l) W + b for a feedforward module."""
        W, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
        if self._disabled or self.merged or name not in self.ia3[self.active_adapter]:
            return linear_forward(x, W, b)[0], None
        ops = _kernels() if self.use_kernels else twin
        parts = self._parts(self.active_adapter, name)
        if name in self.feedforward[self.active_adapter]:
            x2 = x.reshape(-1, x.shape[-1])                             # (N, in)
            xs, _ = ops.ia3_forward(x2, parts[0][2])                    # x ⊙ l
            out, _ = linear_forward(xs.reshape(x.shape), W, b)          # (B, T, out)
            return out, x2
        h, _ = linear_forward(x, W, b)                                  # (B, T, out)  x W + b
        h2 = h.reshape(-1, h.shape[-1])                                 # (N, out)
        if parts[0][1] == slice(0, h2.shape[1]):                        # the whole output
            return ops.ia3_forward(h2, parts[0][2])[0].reshape(h.shape), h2
        out = h2.copy()                                                 # q/k/v slices: the rest × 1
        for _, cols, l in parts:
            out[:, cols] = ops.ia3_forward(h2[:, cols], l)[0]
        return out.reshape(h.shape), h2

    def _linear_backward(self, name: str, dout, cache, grads):
        """dout (B, T, out) -> dx (B, T, in); dl into ``grads`` under peft's names."""
        W = self.params[f"{name}.weight"]
        if cache is None:                                               # no IA3 on this layer
            return dout @ W.T
        ops = _kernels() if self.use_kernels else twin
        parts = self._parts(self.active_adapter, name)
        t = self.ia3[self.active_adapter][name]
        d2 = dout.reshape(-1, dout.shape[-1])                           # (N, out)
        if name in self.feedforward[self.active_adapter]:
            # out = xs W + b;  xs = x ⊙ l
            dx, dl = ops.ia3_backward(d2 @ W.T, cache, parts[0][2])
            grads[f"{PREFIX}{name}.ia3_l"] = dl.reshape(t["ia3_l"].shape)
            return dx.reshape(*dout.shape[:-1], W.shape[0])
        # out = h ⊙ l;  h = x W + b
        if parts[0][1] == slice(0, d2.shape[1]):                        # the whole output
            dh, dl = ops.ia3_backward(d2, cache, parts[0][2])
            grads[f"{PREFIX}{name}.ia3_l"] = dl.reshape(t["ia3_l"].shape)
        else:
            dh = d2.copy()                                              # q/k/v slices: the rest × 1
            for prefix, cols, l in parts:
                dh[:, cols], dl = ops.ia3_backward(d2[:, cols], cache[:, cols], l)
                grads[f"{PREFIX}{name}.{prefix}ia3_l"] = dl.reshape(t[f"{prefix}ia3_l"].shape)
        return (dh @ W.T).reshape(*dout.shape[:-1], W.shape[0])

    # ------------------------------------------------------------ merging
    def _folded(self, adapter_name: str, params, unmerge: bool = False) -> dict[str, np.ndarray]:
        """{module.weight / .bias: new array} with each vector folded into ``params`` (or divided
        out): W ⊙ l on the output columns and b ⊙ l, or W's input rows for a feedforward module."""
        ops = _kernels() if self.use_kernels else twin
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

    # ------------------------------------------------------------ saving
    def _adapter_state(self, adapter_name: str) -> tuple[dict, dict]:
        """peft's config and tensors: c_attn's slices saved as one (3C, 1) vector, ones where
        no slice is chosen; module lists spelt out where peft could not read its own form."""
        config = self.peft_config[adapter_name]
        d = config.to_dict()
        d["inference_mode"] = True                                      # as peft writes it
        t, ff = d["target_modules"], d["feedforward_modules"]
        if isinstance(t, list) and isinstance(ff, list) and not set(ff) <= set(t):
            d["target_modules"] = sorted(self.ia3[adapter_name])
            d["feedforward_modules"] = sorted(self.feedforward[adapter_name])
        state = {}
        for key, tensors in self.ia3[adapter_name].items():
            if "ia3_l" in tensors:
                state[f"{PREFIX}{key}.ia3_l"] = tensors["ia3_l"]
                continue
            whole = np.ones((self.params[f"{key}.weight"].shape[1], 1), self.dtype)  # (3C, 1)
            for _, cols, l in self._parts(adapter_name, key):
                whole[cols, 0] = l
            state[f"{PREFIX}{key}.ia3_l"] = whole
        return d, state

    @classmethod
    def _read_state(cls, config, raw, model, path):
        """The saved vectors -> {"<module>.ia3_l": array in the model's dtype}, each checked
        against the module it scales (present, with peft's shape, nothing else)."""
        config = config.resolved()
        expected = {}
        for key in target_keys(config, model.config):
            n_in, n_out = model.params[f"{key}.weight"].shape
            expected[f"{key}.ia3_l"] = (1, n_in) if is_feedforward(config, key) else (n_out, 1)
        named = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in raw.items()}
        from .io import check_state
        return check_state(named, expected, path, model)

    def _load_weights(self, adapter_name, weights, config):
        """Copy the saved vectors in. A config asking for c_attn slices takes them out of
        the whole saved vector, whose other slices must then be ones."""
        for key, t in self.ia3[adapter_name].items():
            saved = weights[f"{key}.ia3_l"]
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
