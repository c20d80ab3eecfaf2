"""PrefixTuningConfig and PrefixTuningModel: prefix tuning on a frozen GPT2 (prefix.py
has the equations), as peft's PREFIX_TUNING, or as AdapterHub's prefix tuning.

The prefix enters through GPT2's KV-cache path: ``forward`` hands each layer its
(k, v) prefix (B, NH, P, hs) as ``past_key_values`` and puts P ones in front of the
attention mask; ``_trains_past = True`` makes GPT2.backward send the prefix's key and
value gradients to ``_past_backward``. Two conventions, ``convention=``:

    "peft"      peft's get_prompt: the prefix is a KV cache of P tokens, so the real
                tokens take positions P .. P + T - 1 (P + T <= n_positions). In generate,
                peft adds P to the position ids transformers builds from the mask
                (cumsum(mask) - 1, padding at 1): a left-padded row's real tokens then
                take P, P + 1, ... as here, while forward without position_ids gives
                P .. P + T - 1 whatever the padding (as GPT2.forward does here).
    "adapters"  AdapterHub's PrefixTuningLayer: the prefix is concatenated to the keys and
                values inside attention, the positions stay 0 .. T - 1. The same attention,
                so minipeft runs it through the same cache path, positions not shifted.

Both keep the prefix in the KV cache during generate, so later steps see P + t cached
entries; a mask the caller passes covers the real tokens only, and forward widens it.

Saving is peft's: ``prompt_embeddings`` (P, 2LC), the MLP's output when there is one
(the MLP is dropped; a loaded adapter is flat). peft's config has no field for the
convention: "adapters" writes one extra key, ``"convention": "adapters"``, only then.
peft 0.21 loads such a file with a warning ("Unexpected keyword arguments
['convention'] ... ignored") and runs it with peft's positions, i.e. another model.
"""
from __future__ import annotations

import copy
import dataclasses
import numbers
from dataclasses import dataclass, field

import numpy as np

from ..config import refuse_unknown_fields
from ..errors import ConfigError, InputError
from ..model.gpt2 import NO_PAST_BACKWARD
from ..model.inputs import (check_attention_mask, check_input_ids, check_past_key_values,
                            check_position_ids)
from . import prefix as twin
from .base import PeftModel, check_fits
from .config_base import checked_config, from_peft_dict, peft_dict

CONVENTIONS = ("peft", "adapters")
FLAT = "prompt_embeddings"                         # peft's saved key; the flat prefix (P, 2LC)
EMB, W1, B1, W2, B2 = (f"prompt_encoder.{n}" for n in (   # peft's parameter names, less ".default"
    "embedding.weight", "transform.0.weight", "transform.0.bias", "transform.2.weight",
    "transform.2.bias"))
_DKV = "_prefix_dkv"                               # backward's working slot in grads (popped)
_UNUSED_PEFT_FIELDS = {"modules_to_save": None}
_MODEL_FIELDS = (("num_layers", "n_layer"), ("token_dim", "n_embd"), ("num_attention_heads", "n_head"))


def _positive(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


@refuse_unknown_fields
@checked_config
@dataclass
class PrefixTuningConfig:
    """Prefix tuning's settings, as ``peft.PrefixTuningConfig`` (same names and defaults;
    task_type defaults to "CAUSAL_LM", the only one minipeft runs: with peft's None,
    peft's own model would ignore the prefix).

    num_virtual_tokens: P, the prefix length. prefix_projection: train through the MLP
    E (P, C) -> Linear(C, H) -> tanh -> Linear(H, 2LC), H = encoder_hidden_size (None:
    n_embd, as peft). init_weights "zero": the prefix (or the MLP's last layer) starts at 0.
    num_layers, token_dim, num_attention_heads, num_transformer_submodules: filled from
    the model by get_peft_model, as peft does. convention: minipeft's, "peft" or
    "adapters" (see the module docstring)."""
    num_virtual_tokens: int | None = None
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None
    init_weights: str | None = None
    convention: str = "peft"
    num_layers: int | None = None
    token_dim: int | None = None
    num_attention_heads: int | None = None
    num_transformer_submodules: int | None = None
    task_type: str | None = "CAUSAL_LM"
    base_model_name_or_path: str | None = None
    inference_mode: bool = False
    peft_type: str = field(default="PREFIX_TUNING", init=False)

    def __post_init__(self):
        if not _positive(self.num_virtual_tokens):
            raise ConfigError(f"PrefixTuningConfig num_virtual_tokens must be a positive integer (the "
                              f"prefix length P), got {self.num_virtual_tokens!r}; try 10 or 20.")
        for name in ("encoder_hidden_size", "num_layers", "token_dim", "num_attention_heads"):
            value = getattr(self, name)
            if value is not None and not _positive(value):
                raise ConfigError(f"PrefixTuningConfig {name} must be a positive integer or None "
                                  f"(None: from the model), got {value!r}.")
        if self.convention not in CONVENTIONS:
            raise ConfigError(f"PrefixTuningConfig convention must be 'peft' (the prefix as past "
                              f"keys/values, tokens at positions P..P+T-1) or 'adapters' (AdapterHub: "
                              f"tokens at 0..T-1), got {self.convention!r}.")
        if self.init_weights not in (None, "zero"):
            raise ConfigError(f"PrefixTuningConfig init_weights must be None (random) or 'zero', "
                              f"got {self.init_weights!r}.")
        if self.task_type not in ("CAUSAL_LM", None) or self.num_transformer_submodules not in (None, 1):
            raise ConfigError("minipeft's prefix tuning runs GPT-2 as a causal LM: task_type must be "
                              f"'CAUSAL_LM' and num_transformer_submodules 1, got {self.task_type!r} "
                              f"and {self.num_transformer_submodules!r}.")
        for name in ("prefix_projection", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"PrefixTuningConfig {name} must be True or False, got "
                                  f"{getattr(self, name)!r}.")

    @property
    def flat(self) -> bool:
        """Is the prefix itself the parameter? peft's rule: without projection, or loaded."""
        return not (self.prefix_projection and not self.inference_mode)

    def to_dict(self) -> dict:
        """peft's adapter_config.json; "convention" only when it is not peft's."""
        d = peft_dict(self, _UNUSED_PEFT_FIELDS, auto_mapping=None)
        if self.convention == "peft":
            del d["convention"]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "adapter config") -> "PrefixTuningConfig":
        return cls(**from_peft_dict(cls, d, source, _UNUSED_PEFT_FIELDS))


class PrefixTuningModel(PeftModel):
    """A frozen GPT2 with prefix-tuning adapters: peft's PeftModelForCausalLM with
    PREFIX_TUNING (or AdapterHub's prefix tuning), in NumPy."""

    config_class = PrefixTuningConfig
    _stores = ("prefix",)
    _trains_past = True

    def _init_state(self):
        self.prefix: dict[str, dict[str, np.ndarray]] = {}   # adapter -> {name: array}

    # ------------------------------------------------------------ adapters
    def add_adapter(self, adapter_name: str, config: PrefixTuningConfig, seed: int | None = None):
        """A new prefix with peft's init: nn.Embedding N(0, 1); nn.Linear U(±1/√fan_in)
        (``seed`` makes it repeatable; None: a fresh draw)."""
        self._check_new_adapter(adapter_name, config)
        config = self._filled(copy.deepcopy(config))
        P, C, H = config.num_virtual_tokens, config.token_dim, config.encoder_hidden_size
        out = 2 * config.num_layers * C                       # 2LC
        check_fits(f"PrefixTuningConfig num_virtual_tokens={P}, encoder_hidden_size={H}",
                   [(P, out)] if config.flat else [(P, C), (H, C), (H,), (out, H), (out,), (P, out)],
                   self.dtype)                                # the MLP's output (P, 2LC) too
        rng, dt = self._init_rng(seed), self.dtype
        zero = config.init_weights == "zero"
        uniform = lambda shape, fan_in: rng.uniform(-1, 1, shape) / np.sqrt(fan_in)
        if config.flat:
            t = {FLAT: np.zeros((P, out)) if zero else rng.standard_normal((P, out))}
        else:
            t = {EMB: rng.standard_normal((P, C)), W1: uniform((H, C), C), B1: uniform(H, C),
                 W2: uniform((out, H), H), B2: uniform(out, H)}
            if zero:
                t[W2], t[B2] = np.zeros((out, H)), np.zeros(out)
        self._register(adapter_name, config, prefix={k: v.astype(dt) for k, v in t.items()})

    def _filled(self, config: PrefixTuningConfig) -> PrefixTuningConfig:
        """Fill the model's sizes in (as peft's _prepare_prompt_learning_config); check them."""
        for name, attr in _MODEL_FIELDS:
            want, got = getattr(self.config, attr), getattr(config, name)
            if got is not None and got != want:
                raise ConfigError(f"PrefixTuningConfig {name}={got}, but this model has {attr}={want}; "
                                  f"leave {name} None to take it from the model.")
            setattr(config, name, want)
        config.num_transformer_submodules = 1
        if config.encoder_hidden_size is None:
            config.encoder_hidden_size = config.token_dim
        P, n = config.num_virtual_tokens, self.config.n_positions
        if config.convention == "peft" and P >= n:
            raise ConfigError(f"num_virtual_tokens={P}: in peft's convention the prefix takes positions "
                              f"0..{P - 1}, leaving no position for a token (n_positions={n}); use "
                              f"fewer virtual tokens or convention='adapters'.")
        return config

    def _adapter_arrays(self, adapter_name):
        return self.prefix[adapter_name]

    def _astype_adapters(self, dtype):
        self.prefix = {a: {k: v.astype(dtype) for k, v in t.items()} for a, t in self.prefix.items()}

    def prefix_output(self, adapter_name: str | None = None):
        """-> (prefix (P, 2LC), MLP cache or None): what the layers receive."""
        t = self.prefix[adapter_name or self.active_adapter]
        if FLAT in t:
            return t[FLAT], None
        return twin.prefix_mlp_forward(t[EMB], t[W1], t[B1], t[W2], t[B2])

    # ------------------------------------------------------------ forward / backward
    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False):
        """GPT2.forward with the prefix as the first P keys/values of every layer.
        ``past_key_values``: a cache of this model (it starts with the prefix);
        ``attention_mask`` covers the cached and new real tokens, not the prefix."""
        if self._disabled or not self.peft_config:
            return super().forward(input_ids, attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, use_cache=use_cache)
        cfg, pc = self.config, self.active_peft_config
        P = pc.num_virtual_tokens
        ids = check_input_ids(input_ids, cfg.vocab_size, cfg.n_positions)
        B, T = ids.shape
        if past_key_values is None:                             # first call: the prefix is the cache
            prefix, mlp_cache = self.prefix_output()
            past, seen = twin.layer_past(twin.prefix_to_kv(prefix, cfg.n_layer, cfg.n_head), B), 0
        else:                                                   # generate: P + seen cached entries
            wider = dataclasses.replace(cfg, n_positions=cfg.n_positions + P)
            past, mlp_cache = past_key_values, None
            seen = check_past_key_values(past, ids.shape, wider, self.dtype) - P
            if seen < 0:
                raise InputError(f"past_key_values holds {seen + P} entries, but a cache of this "
                                 f"prefix-tuned model starts with its {P} virtual tokens; pass back "
                                 "cache['present_key_values'] of its own forward(..., use_cache=True).")
        mask = check_attention_mask(attention_mask, ids.shape, seen)        # (B, seen + T)
        if mask is not None:
            mask = np.concatenate([np.ones((B, P), dtype=bool), mask], axis=1)  # (B, P + seen + T)
        pos = self._positions(position_ids, ids.shape, seen, P if pc.convention == "peft" else 0)
        x, emb_cache = self._embed(ids, pos)                                # (B, T, C)
        logits, cache = self._forward_embedded(x, emb_cache, mask, past, use_cache)
        cache["prefix"] = {"adapter": self.active_adapter, "mlp": mlp_cache, "seen": seen}
        return logits, cache

    def _positions(self, position_ids, shape, seen, shift):
        """Token positions: given or seen .. seen + T - 1, plus ``shift`` (P for peft)."""
        n, T = self.config.n_positions, shape[1]
        pos = check_position_ids(position_ids, shape, n)
        given = pos is not None
        pos = (pos if given else np.arange(seen, seen + T)[None, :]) + shift   # (B|1, T)
        if pos.max() >= n:
            what = (f"position_ids up to {pos.max() - shift} + the {shift} virtual tokens" if given
                    else f"{shift} virtual tokens + {seen} cached + {T} new tokens")
            raise InputError(
                f"prefix tuning in peft's convention puts the tokens after the prefix: {what} "
                f"= {pos.max() + 1} positions exceeds n_positions={n}. Use at most "
                f"{n - shift - seen} tokens, fewer num_virtual_tokens, or convention='adapters' "
                "(positions 0..T-1).")
        return pos

    def _past_backward(self, i, dk_past, dv_past, grads):
        """Layer i's prefix gradients, summed over the batch, into their slots of dkv."""
        dkv = grads.get(_DKV)
        if dkv is None:
            dkv = grads[_DKV] = np.zeros((2 * self.config.n_layer,) + dk_past.shape[1:],
                                         dk_past.dtype)                 # (2L, NH, P, hs)
        dkv[2 * i] = dk_past.sum(axis=0)
        dkv[2 * i + 1] = dv_past.sum(axis=0)

    def backward(self, dlogits, cache) -> dict[str, np.ndarray]:
        """GPT2.backward, then the prefix's gradient back through the reshape (and the MLP)."""
        info = cache.get("prefix") if isinstance(cache, dict) else None
        if isinstance(cache, dict) and cache.get("past_length") and (info is None or info["seen"]):
            raise InputError(NO_PAST_BACKWARD)
        grads = super().backward(dlogits, cache)
        dkv = grads.pop(_DKV, None)
        if dkv is None:                                         # disabled, or inference mode
            return grads
        dprefix = twin.prefix_to_kv_backward(dkv)               # (P, 2LC)
        if info["mlp"] is None:
            grads[FLAT] = dprefix
            return grads
        t = self.prefix[info["adapter"]]
        names = (EMB, W1, B1, W2, B2)
        grads.update(zip(names, twin.prefix_mlp_backward(dprefix, info["mlp"], t[W1], t[W2])))
        return grads

    def generate(self, input_ids, max_new_tokens, do_sample=False, temperature=1.0, top_k=None,
                 top_p=None, seed=None, attention_mask=None, eos_token_id="auto",
                 pad_token_id=None) -> np.ndarray:
        """GPT2.generate, the prefix in the KV cache. peft's convention needs room for the
        prefix: P + T + max_new_tokens <= n_positions."""
        cfg = self.config
        if not self._disabled and self.peft_config and self.active_peft_config.convention == "peft":
            P = self.active_peft_config.num_virtual_tokens
            T = check_input_ids(input_ids, cfg.vocab_size, cfg.n_positions).shape[1]
            if isinstance(max_new_tokens, numbers.Integral) and P + T + max_new_tokens > cfg.n_positions:
                raise InputError(
                    f"prefix tuning in peft's convention places the {P} virtual tokens before the "
                    f"prompt: {P} + {T} prompt tokens + max_new_tokens={max_new_tokens} = "
                    f"{P + T + max_new_tokens} exceeds n_positions={cfg.n_positions}. Ask for at most "
                    f"{max(cfg.n_positions - P - T, 0)} new tokens, or use convention='adapters'.")
        return super().generate(input_ids, max_new_tokens, do_sample=do_sample,
                                temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                attention_mask=attention_mask, eos_token_id=eos_token_id,
                                pad_token_id=pad_token_id)

    # ------------------------------------------------------------ saving
    def _adapter_state(self, adapter_name):
        """peft's file: the prefix the layers see (the MLP's output), as prompt_embeddings."""
        d = self.peft_config[adapter_name].to_dict()
        d["inference_mode"] = True
        return d, {FLAT: np.ascontiguousarray(self.prefix_output(adapter_name)[0])}

    @classmethod
    def _read_state(cls, config, raw, model, path):
        from .io import check_state
        mc = model.config
        for name, attr in _MODEL_FIELDS:
            got = getattr(config, name)
            if got is not None and got != getattr(mc, attr):
                raise ConfigError(f"{path.parent} holds a prefix for {name}={got}, but this model has "
                                  f"{attr}={getattr(mc, attr)}; load it on the model it was trained on.")
        expected = {FLAT: (config.num_virtual_tokens, 2 * mc.n_layer * mc.n_embd)}
        return check_state(raw, expected, path, model)

    def _load_weights(self, adapter_name, weights, config):
        self.prefix[adapter_name][FLAT][...] = weights[FLAT]

    @staticmethod
    def _as_loaded(config, is_trainable):
        """Loaded adapters are flat (only the MLP's output was saved). peft refuses
        is_trainable=True for prompt-learning adapters; minipeft trains the flat prefix."""
        config = PeftModel._as_loaded(config, is_trainable)
        if is_trainable:
            config.prefix_projection = False
        return config

