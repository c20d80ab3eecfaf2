"""IA3Config: peft's IA3 settings, checked when made; which modules it scales, and how.

Placement. peft's GPT-2 default, ``target_modules=["c_attn", "mlp.c_proj"]`` and
``feedforward_modules=["mlp.c_proj"]``, scales the fused q, k, v output of c_attn (3C)
and the input of mlp.c_proj (4C). The paper scales k, v and the feed-forward only:
GPT-2 fuses q, k, v in one layer, so minipeft adds ``c_attn_slices`` (which of
"q", "k", "v" c_attn scales; None: all three, as peft). ``IA3Config.paper()`` is the
paper's placement. Each chosen slice is its own (C, 1) vector (``….c_attn.k.ia3_l``).
How these are saved in peft's files, and where peft's own files need repair:
docs/compatibility.md.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from ..config import refuse_unknown_fields
from ..errors import ConfigError
from .config_base import AUTO_MAPPING, checked_config, from_peft_dict, peft_dict
from .targets import QKV
from .targets import parts as target_parts
from .targets import target_keys as match_targets

GPT2_TARGETS = ["c_attn", "mlp.c_proj"]       # peft's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
GPT2_FEEDFORWARD = ["mlp.c_proj"]             # ... _FEEDFORWARD_MODULES_MAPPING
_UNUSED_PEFT_FIELDS = {"exclude_modules": None, "modules_to_save": None}


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
        del d["c_attn_slices"]                  # peft has no such field: docs/compatibility.md
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
            # peft saves this form but refuses to read it back (docs/compatibility.md)
            config = cls(**{**kwargs, "feedforward_modules": None})
            config.feedforward_modules = _names(ff, "feedforward_modules", True)
            return config
        return cls(**kwargs)


# ------------------------------------------------------------------ which modules, how
def target_keys(config: IA3Config, model_config) -> list[str]:
    """The modules a config adapts, matched as peft matches them (the rule LoRA uses)."""
    t = config.target_modules if config.target_modules is not None else GPT2_TARGETS
    keys = match_targets(t, model_config)
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
    return target_parts(key, n, C, None if feedforward else config.c_attn_slices)
