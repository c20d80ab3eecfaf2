"""PromptTuningConfig and PromptTuningModel: prompt tuning on GPT2, as peft's PROMPT_TUNING.

The equations are in prompt.py. Here, how peft's PeftModelForCausalLM runs them:

- forward without a KV cache: the P virtual tokens come first (positions 0 .. P - 1,
  the real tokens P .. P + T - 1), the attention mask gets P ones in front, and the
  blocks run through ``GPT2._forward_embedded``. ``model(ids)`` and ``forward`` return
  the logits of the real tokens only, (B, T, V), as every minipeft model does (peft's
  output holds all P + T positions).
- ``loss_and_grads`` pads the labels with -100 for the virtual tokens, as peft: the last
  virtual position is scored on the first real token.
- with a KV cache (generation), the prompt is already in the cache: the new tokens take
  positions after it, and a given attention mask (which covers real tokens only) gets
  P ones in front.
- ``position_ids`` count the real tokens from 0, as for the base model, and are shifted
  by P. peft ignores position_ids (with a warning), so in peft a left-padded row's real
  tokens sit after its padding; minipeft's ``generate`` passes the mask's positions, so
  a padded row gives the tokens it gives alone (tests/test_prompt_tuning.py shows both).

The saved tensor is ``prompt_embeddings`` (P, C), as peft's save_pretrained writes it.
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, field

import numpy as np

from ..config import refuse_unknown_fields
from ..errors import ConfigError, InputError
from ..model.gpt2 import GPT2
from ..model.inputs import (_as_int_array, check_attention_mask, check_input_ids, check_labels,
                            check_past_key_values, check_position_ids)
from ..ops import IGNORE_INDEX, EmbeddingCache, cross_entropy_forward, shift_labels
from . import prompt as twin
from .base import PeftModel, check_fits
from .config_base import checked_config, from_peft_dict, peft_dict

INITS = ("RANDOM", "TEXT", "SAMPLE_VOCAB")
KEY = "prompt_embeddings"                  # the saved (and trainable) tensor's name, as peft's
_UNUSED_PEFT_FIELDS = {"modules_to_save": None}


def _kernels():
    from ..kernels import prompt as kernels
    return kernels


@refuse_unknown_fields
@checked_config
@dataclass
class PromptTuningConfig:
    """Prompt tuning's settings, as ``peft.PromptTuningConfig`` (same names, same defaults).

    num_virtual_tokens: P, the length of the soft prompt (required, as in peft).
    prompt_tuning_init: "RANDOM" (N(0, 1)), "SAMPLE_VOCAB" (embeddings of random
        tokens) or "TEXT" (embeddings of ``prompt_tuning_init_text``, tokenized with
        ``minipeft.load_tokenizer(tokenizer_name_or_path)``, repeated or cut to P).
    token_dim, num_layers, num_attention_heads, num_transformer_submodules: the base
        model's sizes; get_peft_model fills them in (as peft does) and saves them.
    task_type: "CAUSAL_LM", which get_peft_model fills in (peft needs it to load the
        adapter into a PeftModelForCausalLM).
    """
    num_virtual_tokens: int | None = None
    prompt_tuning_init: str = "RANDOM"
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    tokenizer_kwargs: dict | None = None
    token_dim: int | None = None
    num_transformer_submodules: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    inference_mode: bool = False
    peft_type: str = field(default="PROMPT_TUNING", init=False)

    def __post_init__(self):
        P = self.num_virtual_tokens
        if isinstance(P, bool) or not isinstance(P, numbers.Integral) or P <= 0:
            raise ConfigError(f"PromptTuningConfig num_virtual_tokens must be a positive integer "
                              f"(the number of virtual tokens, e.g. 20), got {P!r}.")
        self.num_virtual_tokens = int(P)
        for name in ("token_dim", "num_attention_heads", "num_layers"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0):
                raise ConfigError(f"PromptTuningConfig {name} must be a positive integer or None "
                                  f"(get_peft_model fills it in), got {v!r}.")
        if self.num_transformer_submodules not in (None, 1):
            raise ConfigError("PromptTuningConfig num_transformer_submodules must be 1 (GPT-2 is a "
                              f"decoder only) or None, got {self.num_transformer_submodules!r}.")
        self.task_type = getattr(self.task_type, "value", self.task_type)
        if self.task_type not in (None, "CAUSAL_LM"):
            raise ConfigError(f"PromptTuningConfig task_type must be 'CAUSAL_LM' or None (GPT-2 is a "
                              f"causal language model), got {self.task_type!r}.")
        self._check_init()
        if not isinstance(self.inference_mode, bool):
            raise ConfigError(f"PromptTuningConfig inference_mode must be True or False, got "
                              f"{self.inference_mode!r}.")

    def _check_init(self):
        init = getattr(self.prompt_tuning_init, "value", self.prompt_tuning_init)  # peft's enum
        if not isinstance(init, str) or init.upper() not in INITS:
            raise ConfigError(f"PromptTuningConfig prompt_tuning_init must be one of {INITS}, got "
                              f"{self.prompt_tuning_init!r}.")
        self.prompt_tuning_init = init = init.upper()
        if init == "TEXT":
            if not isinstance(self.prompt_tuning_init_text, str) or not self.prompt_tuning_init_text:
                raise ConfigError("prompt_tuning_init='TEXT' needs prompt_tuning_init_text, the text whose "
                                  "token embeddings start the prompt (e.g. 'Classify the review:'), got "
                                  f"{self.prompt_tuning_init_text!r}.")
            if not self.tokenizer_name_or_path:
                raise ConfigError("prompt_tuning_init='TEXT' needs tokenizer_name_or_path, the tokenizer "
                                  "of the base model (a folder or a bundled name such as "
                                  "'tiny-shakespeare'), as in peft.")
        if self.tokenizer_kwargs and init != "TEXT":
            raise ConfigError("PromptTuningConfig tokenizer_kwargs only apply to prompt_tuning_init="
                              "'TEXT' (peft refuses them otherwise); remove them.")

    # ------------------------------------------------------------ peft's json form
    def to_dict(self) -> dict:
        """The adapter_config.json peft writes (task_type set: no auto_mapping)."""
        return peft_dict(self, _UNUSED_PEFT_FIELDS, auto_mapping=None)

    @classmethod
    def from_dict(cls, d: dict, source: str = "adapter config") -> "PromptTuningConfig":
        """Read peft's adapter_config.json dict; refuse what minipeft cannot honour."""
        return cls(**from_peft_dict(cls, d, source, _UNUSED_PEFT_FIELDS))


class PromptTuningModel(PeftModel):
    """A frozen GPT2 that reads P trainable virtual tokens before its input: peft's
    PeftModelForCausalLM with PROMPT_TUNING, in NumPy."""

    config_class = PromptTuningConfig
    _stores = ("prompts",)

    def _init_state(self):
        self.prompts: dict[str, np.ndarray] = {}        # adapter -> prompt_embeddings (P, C)

    # ------------------------------------------------------------ adapters
    def add_adapter(self, adapter_name: str, config: PromptTuningConfig, seed: int | None = None):
        """Create an adapter, initialised as config.prompt_tuning_init says (random values
        in inference mode, as peft: loading replaces them; ``seed`` makes them repeatable,
        None: a fresh draw)."""
        self._check_new_adapter(adapter_name, config)
        config = self._filled(config)
        P, C = config.num_virtual_tokens, self.config.n_embd
        check_fits(f"PromptTuningConfig num_virtual_tokens={P}", [(P, C)], self.dtype)
        rng, wte = self._init_rng(seed), self.params["transformer.wte.weight"]
        init = "RANDOM" if config.inference_mode else config.prompt_tuning_init
        if init == "SAMPLE_VOCAB":
            prompt = twin.sample_vocab_init(rng, P, wte)
        elif init == "TEXT":
            prompt = wte[twin.text_init_ids(self._text_ids(config), P)].copy()
        else:
            prompt = twin.random_init(rng, P, C, self.dtype)
        self._register(adapter_name, config, prompts=prompt)

    def _filled(self, config: PromptTuningConfig) -> PromptTuningConfig:
        """A copy with the model's sizes filled in, as peft's get_peft_model does."""
        cfg, config = self.config, copy.deepcopy(config)
        if config.token_dim not in (None, cfg.n_embd):
            raise ConfigError(f"token_dim={config.token_dim} but this model's embeddings have "
                              f"n_embd={cfg.n_embd}; leave token_dim None.")
        if config.num_virtual_tokens >= cfg.n_positions:
            raise ConfigError(f"num_virtual_tokens={config.num_virtual_tokens} leaves no position for "
                              f"real tokens: this model has n_positions={cfg.n_positions}. Use fewer "
                              "virtual tokens.")
        config.token_dim = cfg.n_embd
        config.num_transformer_submodules = 1
        config.num_attention_heads = config.num_attention_heads or cfg.n_head
        config.num_layers = config.num_layers or cfg.n_layer
        config.task_type = "CAUSAL_LM"
        return config

    def _text_ids(self, config: PromptTuningConfig) -> list[int]:
        """The init text's token ids, with minipeft's tokenizer (peft uses AutoTokenizer)."""
        from ..tokenizer import load_tokenizer
        if config.tokenizer_kwargs:
            raise ConfigError("tokenizer_kwargs cannot be honoured: minipeft.load_tokenizer takes a "
                              "folder or a bundled name only; remove them.")
        ids = load_tokenizer(config.tokenizer_name_or_path).encode(config.prompt_tuning_init_text).ids
        if not ids:
            raise ConfigError("prompt_tuning_init_text gives no token; give a non-empty text.")
        if max(ids) >= self.config.vocab_size:
            raise ConfigError(f"the tokenizer {config.tokenizer_name_or_path!r} gives token id "
                              f"{max(ids)}, outside this model's vocabulary of {self.config.vocab_size}: "
                              "use the tokenizer the model was trained with.")
        return ids

    def _adapter_arrays(self, adapter_name: str) -> dict[str, np.ndarray]:
        return {KEY: self.prompts[adapter_name]}

    def _astype_adapters(self, dtype):
        self.prompts = {a: p.astype(dtype) for a, p in self.prompts.items()}

    @property
    def num_virtual_tokens(self) -> int:
        """P of the active adapter (0 while the adapter is disabled)."""
        return 0 if self._disabled else self.active_peft_config.num_virtual_tokens

    # ------------------------------------------------------------ forward / backward
    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False):
        """-> (logits of the real tokens (B, T, V), cache). See the module docstring."""
        logits, cache = self._forward_all(input_ids, attention_mask, position_ids,
                                          past_key_values, use_cache)
        P = cache["virtual_tokens"]
        return logits[:, P:], cache

    def _forward_all(self, input_ids, attention_mask=None, position_ids=None,
                     past_key_values=None, use_cache=False):
        """-> (logits of the virtual and real tokens (B, P + T, V), cache); with a KV cache,
        of the new tokens only."""
        if not self.peft_config:
            raise ConfigError("this PeftModel has no adapter left; add_adapter one.")
        P, cfg = self.num_virtual_tokens, self.config
        if P == 0:                                                      # disable_adapter: the base
            logits, cache = GPT2.forward(self, input_ids, attention_mask, position_ids,
                                         past_key_values, use_cache)
            return logits, {**cache, "virtual_tokens": 0}
        ids = check_input_ids(input_ids, cfg.vocab_size, cfg.n_positions)
        B, T = ids.shape
        past = check_past_key_values(past_key_values, ids.shape, cfg, self.dtype)
        if past and past < P:
            raise InputError(f"past_key_values hold {past} positions, fewer than the {P} virtual "
                             "tokens: pass the cache['present_key_values'] of this model's forward.")
        seen = past - P if past else 0                                  # real tokens in the cache
        if not past and P + T > cfg.n_positions:
            raise InputError(f"{P} virtual tokens + {T} tokens = {P + T} exceeds this model's "
                             f"n_positions={cfg.n_positions}; give at most {cfg.n_positions - P} "
                             "tokens, or use fewer virtual tokens.")
        mask = check_attention_mask(attention_mask, ids.shape, seen)    # (B, seen + T), real only
        if mask is not None:
            mask = np.concatenate([np.ones((B, P), dtype=bool), mask], axis=1)
        pos = check_position_ids(position_ids, ids.shape, cfg.n_positions)
        pos = np.arange(seen, seen + T)[None, :] if pos is None else pos  # (B|1, T), real tokens from 0
        if P + pos.max() >= cfg.n_positions:
            raise InputError(f"position_ids reach {pos.max()}: after the {P} virtual tokens that is "
                             f"position {P + pos.max()}, beyond n_positions={cfg.n_positions}.")
        if past:                                                        # the prompt is in the cache
            x, emb_cache = self._embed(ids, P + pos)                    # (B, T, C)
            logits, cache = self._forward_embedded(x, emb_cache, mask, past_key_values, use_cache)
            return logits, {**cache, "virtual_tokens": 0}
        ops = _kernels() if self.use_kernels else twin
        x, emb_cache = ops.prompt_embedding_forward(
            ids, self.prompts[self.active_adapter], self.params["transformer.wte.weight"],
            self.params["transformer.wpe.weight"], twin.prompt_positions(P, pos))  # (B, P + T, C)
        logits, cache = self._forward_embedded(x, emb_cache, mask, None, use_cache)
        return logits, {**cache, "virtual_tokens": P}

    def _embed_backward(self, dx, cache, dwte, grads):
        """x = concat(prompt, wte[ids]) + wpe[pos]: dprompt = Σ_b dx[b, :P]."""
        if isinstance(cache, EmbeddingCache):                           # the base's embedding
            return super()._embed_backward(dx, cache, dwte, grads)
        ops = _kernels() if self.use_kernels else twin
        grads[KEY] = ops.prompt_embedding_backward(dx, cache)           # (P, C)

    def backward(self, dlogits, cache) -> dict[str, np.ndarray]:
        """dlogits of the real tokens (B, T, V), as forward returns them -> {prompt_embeddings: (P, C)}."""
        P = cache.get("virtual_tokens", 0) if isinstance(cache, dict) else 0
        if P and "xf" in cache:
            B, PT, _ = cache["xf"].shape
            shape = (B, PT - P, self.config.vocab_size)
            if np.shape(dlogits) != shape:
                raise InputError(f"dlogits has shape {np.shape(dlogits)}, but forward gave logits "
                                 f"{shape} (the real tokens); pass the gradient of the loss with "
                                 "respect to those logits.")
            full = np.zeros((B, PT, shape[2]), dtype=self.dtype)
            full[:, P:] = dlogits                                       # virtual positions: no loss
            dlogits = full
        return super().backward(dlogits, cache)

    # ------------------------------------------------------------ loss
    def _labels(self, labels, ids, P):
        """labels (B, T) -> (B, P + T) with -100 for the virtual tokens, as peft pads them."""
        lab = _as_int_array(labels, "labels")
        if lab.shape != ids.shape:
            check_labels(lab, ids.shape, self.config.vocab_size)        # says what is wrong
        lab = np.concatenate([np.full((ids.shape[0], P), IGNORE_INDEX), lab], axis=1)
        return check_labels(lab, lab.shape, self.config.vocab_size)

    def loss_and_grads(self, input_ids, labels, attention_mask=None):
        """peft's loss: labels padded with -100 for the virtual tokens, shifted, mean; and
        its gradients {prompt_embeddings: (P, C)}."""
        logits, cache = self._forward_all(input_ids, attention_mask)    # (B, P + T, V)
        ids = check_input_ids(input_ids, self.config.vocab_size, self.config.n_positions)
        targets = shift_labels(self._labels(labels, ids, cache["virtual_tokens"]))
        loss, dlogits = self.ops.cross_entropy(logits, targets)         # (B, P + T, V); kernel: in place
        del logits
        return loss, super().backward(dlogits, cache)

    def loss(self, input_ids, labels, attention_mask=None) -> float:
        """The loss alone (no gradients)."""
        logits, cache = self._forward_all(input_ids, attention_mask)
        ids = check_input_ids(input_ids, self.config.vocab_size, self.config.n_positions)
        return cross_entropy_forward(logits, shift_labels(
            self._labels(labels, ids, cache["virtual_tokens"])))[0]

    def generate(self, input_ids, max_new_tokens, **kwargs) -> np.ndarray:
        """GPT2.generate with the prompt in front (it fills the KV cache in the first step)."""
        P, n = self.num_virtual_tokens, self.config.n_positions
        T = check_input_ids(input_ids, self.config.vocab_size, n).shape[1]
        if isinstance(max_new_tokens, numbers.Integral) and P + T + max_new_tokens > n:
            raise InputError(f"{P} virtual tokens + {T} prompt tokens + max_new_tokens="
                             f"{max_new_tokens} = {P + T + max_new_tokens} exceeds n_positions={n}; "
                             f"ask for at most {max(n - P - T, 0)} new tokens.")
        return super().generate(input_ids, max_new_tokens, **kwargs)

    # ------------------------------------------------------------ saving
    @classmethod
    def _read_state(cls, config, raw, model, path):
        from .io import check_state
        return check_state(raw, {KEY: (config.num_virtual_tokens, model.config.n_embd)}, path, model)

    def _load_weights(self, adapter_name, weights, config):
        self.peft_config[adapter_name].prompt_tuning_init = config.prompt_tuning_init
        self.prompts[adapter_name][...] = weights[KEY]

    @staticmethod
    def _as_loaded(config: PromptTuningConfig, is_trainable: bool) -> PromptTuningConfig:
        """No TEXT / SAMPLE_VOCAB init when loading (the saved prompt replaces it; no tokenizer
        needed); _load_weights puts the saved init back into the config."""
        config = PeftModel._as_loaded(config, is_trainable)
        config.prompt_tuning_init = "RANDOM"
        return config
