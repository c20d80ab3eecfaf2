"""PromptTuningConfig: peft's prompt-tuning settings, checked when made (how it runs:
prompt_model.py; where peft differs: docs/compatibility.md)."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from ..config import refuse_unknown_fields
from ..errors import ConfigError
from .config_base import checked_config, from_peft_dict, peft_dict

INITS = ("RANDOM", "TEXT", "SAMPLE_VOCAB")
_UNUSED_PEFT_FIELDS = {"modules_to_save": None}


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
