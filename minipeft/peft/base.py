"""PeftModel: what every PEFT method shares, whatever it changes inside GPT-2.

A PEFT method freezes the base model and adds a few trainable tensors at one of
GPT2's hooks (model/gpt2.py):

    _linear / _linear_backward            LoRA, DoRA (lora_model.py), IA3 (ia3_model.py)
    _residual / _residual_backward        bottleneck adapters (bottleneck_model.py)
    _past_backward (+ past_key_values)    prefix tuning (prefix_model.py)
    _embed / _embed_backward              prompt tuning (prompt_model.py)

Each method is a subclass of PeftModel that overrides its hooks and says how its
tensors are made, named, saved and loaded. This class holds the rest: the frozen
base (shared with the model given to get_peft_model, as peft injects in place),
adapter names, train/eval, ``disable_adapter``, counting, and saving in peft's
format. ``PeftModel.from_pretrained`` reads ``peft_type`` from the saved config and
builds the matching subclass, as ``peft.PeftModel.from_pretrained`` does.

Names of trainable tensors are the keys of peft's saved state dict, so that
``trainable_parameters()``, ``loss_and_grads``'s grads and the saved file agree.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np

from ..errors import ConfigError
from ..model.gpt2 import GPT2

PREFIX = "base_model.model."


class PeftModel(GPT2):
    """A frozen GPT2 with one or more adapters of one PEFT method (see the subclasses)."""

    config_class: type = None          # the method's config class (LoraConfig, IA3Config, ...)
    _stores: tuple = ()                # the dicts adapter name -> tensors (made in _init_state)

    def __init__(self, model: GPT2, config, adapter_name: str = "default", seed: int = 0):
        if not isinstance(model, GPT2) or isinstance(model, PeftModel):
            raise ConfigError("get_peft_model needs a minipeft GPT2 (e.g. GPT2.from_pretrained(...)), "
                              f"got {type(model).__name__}.")
        super().__init__(model.config, model.params, trainable=())
        self.base_model = model
        self.peft_config: dict = {}
        self.active_adapter = adapter_name
        self.training = False
        self._disabled = False
        self._rng = np.random.default_rng(seed)
        self._init_state()
        self.add_adapter(adapter_name, config, seed=seed)

    def _init_state(self):
        """Create the method's containers, the dicts of ``_stores`` (before the first add_adapter)."""

    # ------------------------------------------------------------ adapters
    def _check_new_adapter(self, adapter_name: str, config):
        if self.config_class is not None and not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__}.add_adapter needs a {self.config_class.__name__}, "
                              f"got {type(config).__name__}; one model holds adapters of one method.")
        if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
            raise ConfigError(f"adapter name must be a non-empty string without dots, got {adapter_name!r}.")
        if adapter_name in self.peft_config:
            raise ConfigError(f"an adapter named {adapter_name!r} exists; delete_adapter it first "
                              "or choose another name.")

    def _register(self, adapter_name: str, config, **tensors):
        """Keep a new adapter's config and tensors (``store=value`` for each of ``_stores``);
        the first adapter becomes the active one."""
        self.peft_config[adapter_name] = config
        for store, value in tensors.items():
            getattr(self, store)[adapter_name] = value
        if len(self.peft_config) == 1:
            self.set_adapter(adapter_name)

    def set_adapter(self, adapter_name: str):
        """Make ``adapter_name`` the active (and trainable) adapter; the base stays frozen."""
        self._check_name(adapter_name)
        if getattr(self, "merged", None):
            raise ConfigError("unmerge_adapter() before switching adapters.")
        self.active_adapter = adapter_name
        self.trainable = set()

    def delete_adapter(self, adapter_name: str):
        self._check_name(adapter_name)
        if adapter_name in getattr(self, "merged", ()):
            raise ConfigError(f"adapter {adapter_name!r} is merged; unmerge_adapter() first.")
        del self.peft_config[adapter_name]
        for store in self._stores:
            del getattr(self, store)[adapter_name]
        if adapter_name == self.active_adapter and self.peft_config:
            self.set_adapter(next(iter(self.peft_config)))

    def _check_name(self, adapter_name):
        if adapter_name not in self.peft_config:
            raise ConfigError(f"no adapter named {adapter_name!r}; this model has "
                              f"{sorted(self.peft_config)}.")

    @property
    def active_peft_config(self):
        return self.peft_config[self.active_adapter]

    def _adapter_arrays(self, adapter_name: str) -> dict[str, np.ndarray]:
        """{peft key: array} of one adapter's own tensors (subclasses)."""
        raise NotImplementedError

    # ------------------------------------------------------------ parameters
    def trainable_parameters(self) -> dict[str, np.ndarray]:
        """name -> array (the live arrays: an optimiser updates them in place), peft's names."""
        if self.active_peft_config.inference_mode:
            return {}
        return dict(self._adapter_arrays(self.active_adapter))

    def num_parameters(self) -> int:
        """The base model's parameters plus every adapter's."""
        return super().num_parameters() + sum(a.size for name in self.peft_config
                                              for a in self._adapter_arrays(name).values())

    def print_trainable_parameters(self):
        """peft's line: trainable params: N || all params: M || trainable%: P."""
        trainable = sum(a.size for a in self.trainable_parameters().values())
        total = self.num_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    def backward(self, dlogits, cache) -> dict[str, np.ndarray]:
        grads = super().backward(dlogits, cache)
        return {} if self.active_peft_config.inference_mode else grads

    # ------------------------------------------------------------ modes
    def train(self, mode: bool = True, seed: int | None = None):
        """Training mode turns the method's dropout on; ``seed`` restarts its random stream."""
        self.training = mode
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def disable_adapter(self):
        """``with model.disable_adapter():`` runs the base model."""
        if getattr(self, "merged", None):
            raise ConfigError("the adapter is merged into the weights; unmerge_adapter() before "
                              "disable_adapter().")
        self._disabled = True
        try:
            yield self
        finally:
            self._disabled = False

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False):
        if not self.peft_config:
            raise ConfigError("this PeftModel has no adapter left; add_adapter one.")
        return super().forward(input_ids, attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, use_cache=use_cache)

    def astype(self, dtype) -> "PeftModel":
        """A copy in float32 or float64, base and adapters alike (float64 for checks)."""
        base = self.base_model.astype(dtype)
        new = copy.copy(self)
        new.base_model, new.params = base, base.params
        new.peft_config = copy.deepcopy(self.peft_config)
        new.trainable = set(self.trainable)
        new._astype_adapters(np.dtype(dtype))
        return new

    def _astype_adapters(self, dtype):
        """Replace this copy's adapter tensors by new arrays of ``dtype`` (subclasses)."""
        raise NotImplementedError

    # ------------------------------------------------------------ saving
    def _adapter_state(self, adapter_name: str) -> tuple[dict, dict]:
        """-> (config as peft's adapter_config.json, {saved key: array}) of one adapter."""
        d = self.peft_config[adapter_name].to_dict()
        d["inference_mode"] = True                    # as peft writes it
        return d, self._adapter_arrays(adapter_name)

    @classmethod
    def _read_state(cls, config, raw: dict, model: GPT2, path) -> dict:
        """Check the saved tensors ``raw`` against ``config`` and ``model``: -> the tensors
        to load, in the model's dtype (subclasses; see io.check_state)."""
        raise NotImplementedError

    def _load_weights(self, adapter_name: str, weights: dict, config):
        """Copy the tensors of ``_read_state`` into the new adapter (subclasses)."""
        raise NotImplementedError

    def save_pretrained(self, folder, selected_adapters=None):
        """peft's format: adapter_config.json + adapter_model.safetensors per adapter
        ("default" in ``folder``, others in ``folder/<name>``)."""
        from .io import save_adapters
        return save_adapters(self, folder, selected_adapters)

    @classmethod
    def from_pretrained(cls, model: GPT2, folder, adapter_name: str = "default",
                        is_trainable: bool = False) -> "PeftModel":
        """Load an adapter saved by peft or minipeft onto ``model`` (for inference unless
        ``is_trainable``, as peft). ``PeftModel.from_pretrained`` picks the method from
        the saved config's ``peft_type``."""
        from .io import read_adapter
        from .mapping import MODEL_FOR_CONFIG
        config, raw, path = read_adapter(folder)
        model_cls = MODEL_FOR_CONFIG[type(config)]
        if not issubclass(model_cls, cls):
            raise ConfigError(f"{folder} holds a {config.peft_type} adapter; load it with "
                              f"PeftModel.from_pretrained or {model_cls.__name__}.from_pretrained.")
        weights = model_cls._read_state(config, raw, model, path)
        pm = model_cls(model, model_cls._as_loaded(config, is_trainable), adapter_name=adapter_name)
        pm._load_weights(adapter_name, weights, config)
        return pm

    def load_adapter(self, folder, adapter_name: str, is_trainable: bool = False):
        """Load another saved adapter (of this model's method) under ``adapter_name``."""
        from .io import read_adapter
        config, raw, path = read_adapter(folder)
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{folder} holds a {config.peft_type} adapter, but this model holds "
                              f"{self.config_class.__name__} adapters; load it on its own with "
                              "PeftModel.from_pretrained.")
        weights = type(self)._read_state(config, raw, self.base_model, path)
        self.add_adapter(adapter_name, self._as_loaded(config, is_trainable))
        self._load_weights(adapter_name, weights, config)

    @staticmethod
    def _as_loaded(config, is_trainable: bool):
        """The config to create a loaded adapter with."""
        config = copy.deepcopy(config)
        config.inference_mode = not is_trainable
        return config

    def __repr__(self):
        return (f"{type(self).__name__}(adapters={sorted(self.peft_config)}, "
                f"active={self.active_adapter!r}, n_layer={self.config.n_layer}, "
                f"n_embd={self.config.n_embd})")
