"""What every PEFT config shares: peft's adapter_config.json, read and written.

A config is a dataclass with peft's field names and defaults. ``peft_dict`` writes
it in the form peft 0.21 writes (peft's fields minipeft leaves unused at their
defaults, so ``peft.PeftConfig.from_pretrained`` reads it); ``from_peft_dict`` reads
any such file back, and refuses, by name, a field whose value minipeft cannot honour
rather than silently ignore it.
"""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError

PEFT_VERSION = "0.21.2"            # the peft whose format minipeft writes and is tested against
AUTO_MAPPING = {"base_model_class": "GPT2LMHeadModel",
                "parent_library": "transformers.models.gpt2.modeling_gpt2"}
# peft fields that carry no meaning for minipeft's math (bookkeeping, or about devices)
IGNORED_PEFT_FIELDS = {
    "auto_mapping", "base_model_name_or_path", "revision", "inference_mode", "peft_version",
    "megatron_core", "qalora_group_size", "ensure_weight_tying", "runtime_config", "peft_type",
}


def peft_dict(config, unused: dict, **extra) -> dict:
    """``config``'s fields (those in ``config.SAVED_FIELDS`` if it has them, else all),
    plus peft's unused fields at their defaults and ``extra``, sorted as peft sorts them."""
    d = dataclasses.asdict(config)
    keep = getattr(config, "SAVED_FIELDS", None)
    if keep is not None:
        d = {k: v for k, v in d.items() if k in keep}
    d.update(unused)
    d.update(peft_type=config.peft_type, peft_version=PEFT_VERSION, revision=None)
    d.update(extra)
    return dict(sorted(d.items()))


def from_peft_dict(cls, d: dict, source: str, unused: dict, ignored=(),
                   hint: str = "Remove them, or set them to peft's defaults.") -> dict:
    """The keyword arguments of ``cls`` in peft's config dict ``d``. Fields of peft that
    minipeft does not implement (``unused``: name -> default) are accepted at a value
    meaning "off"; anything else is refused by name. ``ignored``: more fields to skip."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source} must be a JSON object, got {type(d).__name__}.")
    want = cls.__dataclass_fields__["peft_type"].default
    if d.get("peft_type", want) != want:
        raise ConfigError(f"{source} is a {d.get('peft_type')} adapter, not {want}; load it with "
                          "PeftModel.from_pretrained, which picks the method from peft_type.")
    own = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs, refused = {}, []
    for k, v in d.items():
        if k in own:
            kwargs[k] = v
        elif k in IGNORED_PEFT_FIELDS or k in ignored:
            continue
        elif v in (None, False, {}, [], ()) or (k in unused and v == unused[k]):
            continue
        else:
            refused.append(f"{k}={v!r}" + ("" if k in unused else " (unknown to minipeft)"))
    if refused:
        raise ConfigError(f"{source} uses {want} options minipeft cannot honour: "
                          f"{', '.join(refused)}. {hint}")
    return kwargs
