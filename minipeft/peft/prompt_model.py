"""PromptTuningModel: prompt tuning on GPT2, as peft's PROMPT_TUNING (the equations:
prompt.py; the config: prompt_config.py).

The prompt fills GPT2's hooks for entries before the tokens: ``_embed`` puts the P
virtual tokens first (positions 0 .. P - 1, the real tokens P .. P + T - 1) when no KV
cache is given, ``_extra_length`` puts P ones in front of the attention mask (which
covers the real tokens), and ``_embed_backward`` sums their gradient over the batch.

The virtual tokens come first and attend only to each other, so they compute the same
keys and values in every row of a batch: the first P - 1 run once, at batch 1, through
the ``_prefix`` hook (as prefix tuning's keys and values enter the blocks), and the last
one runs with the tokens, since the loss scores its output on each row's first token.
Their gradients come back through ``_prefix_backward``, summed over the batch. The
values are those of running all P in every row (tests/test_prompt_tuning.py); the cost
of P virtual tokens no longer grows with the batch.

GPT2's forward returns the logits of the real tokens, (B, T, V); its ``loss_and_grads``
pads the labels with -100 for the virtual tokens, as peft: the last virtual position is
scored on the first real token. With a KV cache (generation) the prompt is in the
cache already, and the new tokens take positions after it (``_check_past``).
``position_ids`` count the real tokens from 0, as for the base model; ``_embed`` adds P.

Saved as peft saves it: ``prompt_embeddings`` (P, C). Where peft differs (its logits,
its position_ids): docs/compatibility.md.
"""
from __future__ import annotations

import copy
import numbers

import numpy as np

from ..errors import ConfigError, InputError
from ..kernels import prompt as kernels
from ..model.inputs import check_input_ids
from ..ops import EmbeddingCache
from ..tokenizer import load_tokenizer
from . import prompt as twin
from .base import PeftModel, check_fits
from .mapping import register_peft_method
from .prompt_config import PromptTuningConfig

KEY = "prompt_embeddings"                  # the saved (and trainable) tensor's name, as peft's



class PromptTuningModel(PeftModel):
    """A frozen GPT2 that reads P trainable virtual tokens before its input: peft's
    PeftModelForCausalLM with PROMPT_TUNING, in NumPy."""

    config_class = PromptTuningConfig
    _stores = ("prompts",)
    _saved_prefix = KEY                  # its one tensor, saved under peft's name

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

    @property
    def num_virtual_tokens(self) -> int:
        """P of the active adapter (0 while the adapter is disabled)."""
        return 0 if self._disabled else self.active_peft_config.num_virtual_tokens

    # ------------------------------------------------------------ the hooks
    def _extra_length(self) -> int:
        return self.num_virtual_tokens

    def _check_past(self, past_key_values, shape) -> int:
        """A cache of this model starts with the P virtual tokens: -> the real tokens after them."""
        past = super()._check_past(past_key_values, shape)
        P, n = self.num_virtual_tokens, self.config.n_positions
        if not P:
            return past
        if past and past < P:
            raise InputError(f"past_key_values hold {past} positions, fewer than the {P} virtual "
                             "tokens: pass the cache['present_key_values'] of this model's forward.")
        if not past and P + shape[1] > n:
            raise InputError(f"{P} virtual tokens + {shape[1]} tokens = {P + shape[1]} exceeds this "
                             f"model's n_positions={n}; give at most {n - P} tokens, or use fewer "
                             "virtual tokens.")
        return past - P if past else 0

    def _positions(self, position_ids, shape, seen):
        """The real tokens' positions counted from 0, as for the base model (_embed adds P)."""
        pos, P = super()._positions(position_ids, shape, seen), self.num_virtual_tokens
        if P and P + pos.max() >= self.config.n_positions:
            raise InputError(f"position_ids reach {pos.max()}: after the {P} virtual tokens that is "
                             f"position {P + pos.max()}, beyond n_positions={self.config.n_positions}.")
        return pos

    def _embed(self, ids, pos, first=True):
        """x = concat(prompt, wte[ids]) + wpe[0..P-1, P + pos] (B, P + T, C); with a KV cache the
        prompt is in it already, and the new tokens take P + pos. With P >= 2 the first P - 1
        virtual tokens run once for the batch (``_prefix``): x holds the last one only,
        (B, 1 + T, C)."""
        P = self.num_virtual_tokens
        if not P or not first:
            return super()._embed(ids, P + pos, first)                  # (B, T, C)
        ops = kernels if self.use_kernels else twin
        prompt, shared = self.prompts[self.active_adapter], self._shared(P)
        positions = twin.prompt_positions(P, pos)[:, shared:]           # (B|1, P - shared + T)
        return ops.prompt_embedding_forward(
            ids, prompt[shared:], self.params["transformer.wte.weight"],
            self.params["transformer.wpe.weight"], positions)            # (B, P - shared + T, C)

    @staticmethod
    def _shared(P: int) -> int:
        """How many virtual tokens run once for the whole batch: all but the last. They attend
        only to each other (they come first, and causally), so their keys and values are the
        same in every row; the last one stays with the tokens because the loss scores its
        output on each row's first token."""
        return P - 1 if P >= 2 else 0

    def _prefix(self, batch_size: int):
        """The first P - 1 virtual tokens through every block once, at batch 1: -> per layer
        their keys and values broadcast over the batch (B, NH, P - 1, hs), the real tokens'
        past, and that pass's cache for ``_prefix_backward``. A peft model runs them B times."""
        P = self.num_virtual_tokens
        n = self._shared(P)
        if not n:
            return None, None
        prompt, wpe = self.prompts[self.active_adapter], self.params["transformer.wpe.weight"]
        xv = (prompt[:n] + wpe[:n])[None]                               # (1, P - 1, C)
        _, cache = self._forward_embedded(xv, None, None, use_cache=True, head=False)
        past = [tuple(np.broadcast_to(a, (batch_size,) + a.shape[1:]) for a in kv)
                for kv in cache["present_key_values"]]                  # (B, NH, P - 1, hs), views
        return past, cache

    def _prefix_backward(self, dpast, cache, grads):
        """dpast per layer (dk, dv) (B, NH, P - 1, hs): summed over the batch, then back through
        the virtual tokens' own pass, entering each layer at its keys and values ->
        dprompt[:P - 1] (``_embed_backward`` adds the last row). A base tensor made trainable
        by hand gets this pass's gradient added to the tokens' pass's (the base is frozen
        otherwise, and ``base`` stays empty)."""
        dpresent = [(dk.sum(axis=0, keepdims=True), dv.sum(axis=0, keepdims=True)) for dk, dv in dpast]
        base: dict[str, np.ndarray] = {}
        dxv = self._blocks_backward(np.zeros_like(cache["xf"]), cache, base, dpresent)
        grads[KEY] = dxv[0]                                             # xv = prompt[:P - 1] + wpe[:P - 1]
        for name, g in base.items():
            grads[name] = grads[name] + g if name in grads else g

    def _embed_backward(self, dx, cache, dwte, grads):
        """x = concat(prompt, wte[ids]) + wpe[pos]: dprompt = Σ_b dx[b, :P] (the last row only
        when _prefix ran the others, whose rows _prefix_backward put in first)."""
        if isinstance(cache, EmbeddingCache):                           # the base's embedding
            return super()._embed_backward(dx, cache, dwte, grads)
        ops = kernels if self.use_kernels else twin
        d = ops.prompt_embedding_backward(dx, cache)                    # (P or 1, C)
        grads[KEY] = np.concatenate([grads[KEY], d]) if KEY in grads else d

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
    def _saved_shapes(cls, config, model):
        return {KEY: (config.num_virtual_tokens, model.config.n_embd)}

    def _load_weights(self, adapter_name, weights, config):
        super()._load_weights(adapter_name, weights, config)
        self.peft_config[adapter_name].prompt_tuning_init = config.prompt_tuning_init

    @staticmethod
    def _as_loaded(config: PromptTuningConfig, is_trainable: bool) -> PromptTuningConfig:
        """No TEXT / SAMPLE_VOCAB init when loading (the saved prompt replaces it; no tokenizer
        needed); _load_weights puts the saved init back into the config."""
        config = PeftModel._as_loaded(config, is_trainable)
        config.prompt_tuning_init = "RANDOM"
        return config


register_peft_method(peft_type="PROMPT_TUNING", config_cls=PromptTuningConfig,
                     model_cls=PromptTuningModel)
