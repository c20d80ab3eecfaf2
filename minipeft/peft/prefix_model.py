"""PrefixTuningModel: prefix tuning on a frozen GPT2 (the equations: prefix.py; the
config: prefix_config.py), as peft's PREFIX_TUNING, or as AdapterHub's prefix tuning.

The prefix fills GPT2's hooks for entries before the tokens: ``_prefix`` hands every
layer its P keys and values (k, v) (B, NH, P, hs) when no KV cache is given,
``_extra_length`` puts P ones in front of the attention mask, ``_positions`` shifts the
real tokens to P .. P + T - 1 in peft's convention (0 .. T - 1 in AdapterHub's), and
``_prefix_backward`` takes every layer's (dk, dv) back to the prefix's tensors, all it
needs kept in the cache ``_prefix`` returned. In generate the prefix stays in the KV
cache, so later steps see P + t cached entries (``_check_past``).

Saved as peft saves it: ``prompt_embeddings`` (P, 2LC), the MLP's output when there is
one (a loaded adapter is flat). The two conventions, and how each library treats them:
docs/compatibility.md.
"""
from __future__ import annotations

import copy
import dataclasses
import numbers
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError, InputError
from ..model.inputs import check_input_ids, check_past_key_values, check_position_ids
from . import prefix as twin
from .base import PeftModel, check_fits
from .io import check_state
from .mapping import register_peft_method
from .prefix_config import MODEL_FIELDS, PrefixTuningConfig

FLAT = "prompt_embeddings"                         # peft's saved key; the flat prefix (P, 2LC)
EMB, W1, B1, W2, B2 = (f"prompt_encoder.{n}" for n in (   # peft's parameter names, less ".default"
    "embedding.weight", "transform.0.weight", "transform.0.bias", "transform.2.weight",
    "transform.2.bias"))


class PrefixCache(NamedTuple):
    """What _prefix_backward needs: nothing is read from the model then."""
    tensors: dict                 # the adapter's tensors that made the prefix
    mlp: tuple | None             # prefix_mlp_forward's cache, or None (a flat prefix)


class PrefixTuningModel(PeftModel):
    """A frozen GPT2 with prefix-tuning adapters: peft's PeftModelForCausalLM with
    PREFIX_TUNING (or AdapterHub's prefix tuning), in NumPy."""

    config_class = PrefixTuningConfig
    _stores = ("prefix",)
    _saved_prefix = ""                   # peft saves prompt learning's tensors by their own names

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

        def uniform(shape, fan_in):
            return rng.uniform(-1, 1, shape) / np.sqrt(fan_in)

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
        for name, attr in MODEL_FIELDS:
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

    def prefix_output(self, adapter_name: str | None = None):
        """-> (prefix (P, 2LC), MLP cache or None): what the layers receive."""
        t = self.prefix[adapter_name or self.active_adapter]
        if FLAT in t:
            return t[FLAT], None
        return twin.prefix_mlp_forward(t[EMB], t[W1], t[B1], t[W2], t[B2])

    # ------------------------------------------------------------ the hooks
    def _extra_length(self) -> int:
        return self.active_peft_config.num_virtual_tokens if self._adapting else 0

    def _check_past(self, past_key_values, shape) -> int:
        """A cache of this model starts with the P prefix entries: -> the real tokens after them."""
        if not self._adapting or past_key_values is None:
            return super()._check_past(past_key_values, shape)
        cfg, P = self.config, self.active_peft_config.num_virtual_tokens
        wider = dataclasses.replace(cfg, n_positions=cfg.n_positions + P)
        seen = check_past_key_values(past_key_values, shape, wider, self.dtype) - P
        if seen < 0:
            raise InputError(f"past_key_values holds {seen + P} entries, but a cache of this "
                             f"prefix-tuned model starts with its {P} virtual tokens; pass back "
                             "cache['present_key_values'] of its own forward(..., use_cache=True).")
        return seen

    def _positions(self, position_ids, shape, seen):
        """Token positions: given or seen .. seen + T - 1, plus P in peft's convention."""
        if not self._adapting:
            return super()._positions(position_ids, shape, seen)
        pc, n, T = self.active_peft_config, self.config.n_positions, shape[1]
        shift = pc.num_virtual_tokens if pc.convention == "peft" else 0
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

    def _prefix(self, batch_size: int):
        """The prefix as every layer's first P keys/values: (k, v) (B, NH, P, hs) per layer."""
        if not self._adapting:
            return super()._prefix(batch_size)
        cfg, t = self.config, self.prefix[self.active_adapter]
        prefix, mlp_cache = self.prefix_output()                          # (P, 2LC)
        kv = twin.prefix_to_kv(prefix, cfg.n_layer, cfg.n_head)            # (2L, NH, P, hs)
        return twin.layer_past(kv, batch_size), PrefixCache(t, mlp_cache)

    def _prefix_backward(self, dpast, cache, grads):
        """Each layer's (dk, dv), summed over the batch, back through the reshape (and the MLP)."""
        dkv = np.stack([d.sum(axis=0) for dk_dv in dpast for d in dk_dv])  # (2L, NH, P, hs)
        dprefix = twin.prefix_to_kv_backward(dkv)                         # (P, 2LC)
        if cache.mlp is None:
            grads[FLAT] = dprefix
            return
        t = cache.tensors
        grads.update(zip((EMB, W1, B1, W2, B2),
                         twin.prefix_mlp_backward(dprefix, cache.mlp, t[W1], t[W2])))

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
        mc = model.config
        for name, attr in MODEL_FIELDS:
            got = getattr(config, name)
            if got is not None and got != getattr(mc, attr):
                raise ConfigError(f"{path.parent} holds a prefix for {name}={got}, but this model has "
                                  f"{attr}={getattr(mc, attr)}; load it on the model it was trained on.")
        expected = {FLAT: (config.num_virtual_tokens, 2 * mc.n_layer * mc.n_embd)}
        return check_state(raw, expected, path, model)

    @staticmethod
    def _as_loaded(config, is_trainable):
        """Loaded adapters are flat (only the MLP's output was saved). peft refuses
        is_trainable=True for prompt-learning adapters; minipeft trains the flat prefix."""
        config = PeftModel._as_loaded(config, is_trainable)
        if is_trainable:
            config.prefix_projection = False
        return config


register_peft_method(peft_type="PREFIX_TUNING", config_cls=PrefixTuningConfig,
                     model_cls=PrefixTuningModel)
