"""LoraConfig: peft's field names and defaults, checked when made.

Written to ``adapter_config.json`` in peft's own form, so ``peft.PeftConfig`` reads
it, and read back from any LoRA config peft 0.21 writes. A field peft has but
minipeft does not implement is accepted only at its default value; anything else
is refused with its name, rather than silently ignored.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from ..config import refuse_unknown_fields
from ..errors import ConfigError
from .config_base import AUTO_MAPPING, checked_config, from_peft_dict, peft_dict
from .lora import lora_scaling
from .targets import LINEAR_MODULES, QKV
from .targets import parts as target_parts
from .targets import target_keys as match_targets

INITS = (True, False, "gaussian", "pissa", "pissa_niter_K", "olora")


def _is_init(value) -> bool:
    """One of INITS, "pissa_niter_K" standing for pissa_niter_0, pissa_niter_1, … (K
    power iterations of the randomised SVD, as peft's ``pissa_niter_[number of iters]``)."""
    if isinstance(value, bool):
        return True
    if not isinstance(value, str):
        return False
    head, sep, k = value.partition("_niter_")
    if sep:
        return head == "pissa" and k.isascii() and k.isdigit()
    return value in INITS and value != "pissa_niter_K"
BIASES = ("none", "all", "lora_only")

# peft LoraConfig fields minipeft does not implement, and the value meaning "unused"
_UNUSED_PEFT_FIELDS = {
    "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None,
    "corda_config": None, "eva_config": None, "exclude_modules": None,
    "layer_replication": None, "layers_pattern": None, "loftq_config": {},
    "lora_bias": False, "lora_ga_config": None, "megatron_config": None,
    "modules_to_save": None, "monteclora_config": None, "rank_pattern": {},
    "target_parameters": None, "trainable_token_indices": None, "use_bdlora": None,
    "use_qalora": False, "velora_config": None, "kasa_config": None,
}
@refuse_unknown_fields
@checked_config
@dataclass
class LoraConfig:
    """LoRA's settings, as ``peft.LoraConfig`` (same names, same defaults).

    target_modules: a list of module names matched by suffix, as peft does
        ("c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"; "c_proj" matches both
        c_proj layers), a regular expression matched against the whole module name
        ("transformer.h.0.attn.c_attn"), "all-linear", or None for peft's GPT-2
        default ["c_attn"].
    fan_in_fan_out: GPT-2's Conv1D stores weights [in, out], the transpose of
        nn.Linear; peft sets this to True for GPT-2 (with a warning) and so does
        get_peft_model here, so the saved config says True either way.
    enable_lora: minipeft's addition, from loralib's MergedLinear: which of the q, k, v
        slices of the fused c_attn get a LoRA, e.g. [True, False, True]. None: all of
        c_attn, as peft.
    """
    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    fan_in_fan_out: bool = False
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    enable_lora: list[bool] | None = None
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    inference_mode: bool = False
    peft_type: str = field(default="LORA", init=False)

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, numbers.Integral) or self.r <= 0:
            raise ConfigError(f"LoraConfig r must be a positive integer (the rank), got {self.r!r}.")
        self.r = int(self.r)
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, numbers.Real) \
                or not self.lora_alpha > 0:
            raise ConfigError(f"LoraConfig lora_alpha must be a positive number, got {self.lora_alpha!r}.")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, numbers.Real) \
                or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"LoraConfig lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        self.lora_dropout = float(self.lora_dropout)
        if self.bias not in BIASES:
            raise ConfigError(f"LoraConfig bias must be one of {BIASES}, got {self.bias!r}.")
        if not _is_init(self.init_lora_weights):
            raise ConfigError(f"LoraConfig init_lora_weights must be one of {INITS} (K a whole "
                              f"number of power iterations, e.g. 'pissa_niter_4'), got "
                              f"{self.init_lora_weights!r}.")
        self._check_targets()
        self._check_layers()
        self._check_enable_lora()
        for name in ("fan_in_fan_out", "use_rslora", "use_dora", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"LoraConfig {name} must be True or False, got {getattr(self, name)!r}.")

    def _check_targets(self):
        t = self.target_modules
        if isinstance(t, str) and t.lower() == "all-linear":
            self.target_modules = t = "all-linear"
        if t is None or isinstance(t, str):
            if isinstance(t, str) and not t:
                raise ConfigError("LoraConfig target_modules is an empty string; name modules "
                                  f"such as {list(LINEAR_MODULES)} or use 'all-linear'.")
            return
        if isinstance(t, (set, tuple)):
            t = sorted(t) if isinstance(t, set) else list(t)
        if isinstance(t, list) and len(t) == 1 and isinstance(t[0], str) and t[0].lower() == "all-linear":
            t = "all-linear"                                # peft accepts ["all-linear"] too
        if not isinstance(t, list) or not t or not all(isinstance(x, str) and x for x in t):
            raise ConfigError("LoraConfig target_modules must be a non-empty list of module names "
                              f"(e.g. {list(LINEAR_MODULES)}), a regex string or 'all-linear'; "
                              f"got {self.target_modules!r}.")
        self.target_modules = t

    def _check_layers(self):
        layers = self.layers_to_transform
        if layers is None:
            return
        if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
            layers = [int(layers)]
        if not isinstance(layers, (list, tuple)) or not layers or not all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in layers):
            raise ConfigError(f"LoraConfig layers_to_transform must be a layer index or a non-empty "
                              f"list of indices >= 0, got {self.layers_to_transform!r}.")
        if isinstance(self.target_modules, str):
            raise ConfigError("LoraConfig layers_to_transform cannot be used with a string "
                              "target_modules (a regex or 'all-linear'; peft refuses it too): list "
                              "the modules, or put the layers in the regex.")
        self.layers_to_transform = [int(i) for i in layers]

    def _check_enable_lora(self):
        e = self.enable_lora
        if e is None:
            return
        if not isinstance(e, (list, tuple)) or len(e) != 3 or not all(isinstance(x, bool) for x in e) \
                or not any(e):
            raise ConfigError("LoraConfig enable_lora must be three booleans for the q, k, v slices "
                              f"of c_attn with at least one True, e.g. [True, False, True]; got {e!r}.")
        if self.use_dora:
            raise ConfigError("LoraConfig enable_lora (q/k/v slices) cannot be combined with use_dora: "
                              "DoRA's norm is per output column of the whole layer.")
        if isinstance(self.init_lora_weights, str) and self.init_lora_weights != "gaussian":
            raise ConfigError("LoraConfig enable_lora works with init_lora_weights True, False or "
                              f"'gaussian', not {self.init_lora_weights!r}.")
        self.enable_lora = list(e)

    @property
    def scaling(self) -> float:
        return lora_scaling(self.lora_alpha, self.r, self.use_rslora)

    @property
    def qkv_slices(self) -> list[str] | None:
        """enable_lora as the names of the slices it enables (["q", "v"]), or None."""
        return None if self.enable_lora is None else [s for s, on in zip(QKV, self.enable_lora) if on]

    # ------------------------------------------------------------ peft's json form
    def to_dict(self) -> dict:
        """The adapter_config.json peft writes (its unused fields at their defaults)."""
        d = peft_dict(self, _UNUSED_PEFT_FIELDS, megatron_core="megatron.core", qalora_group_size=16,
                      ensure_weight_tying=False,          # peft: auto_mapping only without task_type
                      auto_mapping=AUTO_MAPPING if self.task_type is None else None)
        del d["enable_lora"]
        if isinstance(self.target_modules, list):          # a set in peft: order has no meaning
            d["target_modules"] = sorted(set(self.target_modules))
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "adapter config") -> "LoraConfig":
        """Read peft's adapter_config.json dict; refuse what minipeft cannot honour."""
        kwargs = from_peft_dict(cls, d, source, _UNUSED_PEFT_FIELDS,
                                hint="Use plain LoRA/rsLoRA/DoRA settings.")
        if isinstance(kwargs.get("init_lora_weights"), str) and \
                not _is_init(kwargs["init_lora_weights"]):
            # the init only matters when the adapter is created; a saved one is already trained
            kwargs["init_lora_weights"] = True
        return cls(**kwargs)


def target_keys(config: LoraConfig, model_config) -> list[str]:
    """The module names (``transformer.h.0.attn.c_attn``, …) a config targets, as peft matches them."""
    t = config.target_modules if config.target_modules is not None else ["c_attn"]  # peft's GPT-2 default
    found = match_targets(t, model_config, config.layers_to_transform)
    if config.enable_lora is not None and not any(k.endswith("attn.c_attn") for k in found):
        raise ConfigError("enable_lora picks q/k/v slices of c_attn, but c_attn is not targeted: "
                          "add 'c_attn' to target_modules, or leave enable_lora None.")
    return found


def lora_parts(config: LoraConfig, key: str, n_out: int, C: int):
    """(name prefix, output columns) of each LoRA on module ``key``: the whole layer,
    or the enabled q/k/v slices of c_attn (each C wide)."""
    return target_parts(key, n_out, C, config.qkv_slices)
