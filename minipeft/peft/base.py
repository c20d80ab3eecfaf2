"""PeftModel: what every PEFT method shares, whatever it changes inside GPT-2.

A PEFT method freezes the base model and adds a few trainable tensors at one of
GPT2's hooks (model/gpt2.py):

    _linear / _linear_backward            LoRA, DoRA (lora_model.py), IA3 (ia3_model.py)
    _residual / _residual_backward        bottleneck adapters (bottleneck_model.py)
    _prefix / _prefix_backward            prefix tuning (prefix_model.py): keys/values before the tokens
    _virtual_tokens, _embed / _embed_backward   prompt tuning (prompt_model.py)

Each method is a subclass of PeftModel that registers itself (mapping.register_peft_method)
and gives, as its contract:

    config_class                    its config dataclass (with ``peft_type``)
    _stores                         the dicts adapter name -> state it keeps; the first holds
                                    the adapter's tensors as a tree {module: {tensor: array}}
                                    (or {tensor: array}, or one array), whose paths joined by
                                    "." after ``_saved_prefix`` are peft's saved keys
    _init_state()                   create those dicts (empty)
    add_adapter(name, config, seed) make one adapter's tensors; ``_register`` keeps them
    its hooks                       forward and backward; each backward reads its cache only
    _saved_shapes(config, model)    {saved key: shape} a saved adapter must have

and overrides, where its file differs from its tensors, ``_adapter_state`` (what is
saved), ``_read_state`` / ``_load_weights`` (what is loaded) and ``_as_loaded``.
This class holds the rest, written once: the frozen base (shared with the model given to
get_peft_model, as peft injects in place), adapter names, train/eval, ``disable_adapter``,
counting, ``astype``, saving in peft's format (io.py) and ``from_pretrained``, which reads
``peft_type`` from the saved config and builds the registered subclass, as
``peft.PeftModel.from_pretrained`` does. ``MergeMixin`` holds peft's merging protocol for
the methods that fold into the weights (LoRA, IA3).

Names of trainable tensors are the keys of peft's saved state dict, so that
``trainable_parameters()``, ``loss_and_grads``'s grads and the saved file agree.

What every method needs once, for every way in, lives here too: ``check_adapter_name``
(an adapter name becomes a folder name when saved), ``check_fits`` (an adapter's size,
before anything is allocated), ``_check_new_adapter`` (peft's rule of one adapter with
bias; the config's values checked again) and ``_init_rng`` (an adapter added without a
seed draws its own random start).
"""
from __future__ import annotations

import contextlib
import copy
import numbers
import os
import unicodedata
import warnings

import numpy as np

from ..errors import ConfigError
from ..model.gpt2 import GPT2
from .config_base import check_values
from .io import check_state, read_adapter, save_adapters
from .mapping import model_class_for

PREFIX = "base_model.model."
NAME_MAX = 255                     # bytes in one folder name on Linux, macOS and Windows


def check_adapter_name(name, what: str = "adapter name") -> str:
    """The one check of an adapter name, wherever it comes from: it becomes the folder
    ``save_pretrained`` writes that adapter into (``folder/<name>``), so it must be one
    plain folder name. peft keeps adapters in torch ModuleDicts, whose keys cannot be
    empty or hold a dot; beyond that, no path separator (``/``, ``\\``), no drive (``:``),
    no control character (NUL included), at most 255 bytes. Dots out also rule out
    ``.``, ``..`` and hidden names."""
    if not isinstance(name, str):
        raise ConfigError(f"{what} must be a string such as 'default' or 'task_a', "
                          f"got {name!r} ({type(name).__name__}).")
    bad = [c for c in name if c in "./\\:" or unicodedata.category(c) == "Cc"]
    size = len(name.encode("utf-8", "surrogatepass"))
    if not name.strip():
        why = "is empty or blank"
    elif bad:
        why = f"contains {bad[0]!r}"
    elif size > NAME_MAX:
        why = f"is {size} bytes long (at most {NAME_MAX})"
    else:
        return name
    raise ConfigError(f"{what} {name!r} {why}: an adapter name is saved as a folder name "
                      "(save_pretrained writes folder/<name>), so it must be a plain name "
                      "without '.', '/', '\\', ':' or control characters, e.g. 'task_a'.")


def check_seed(seed, what: str = "seed"):
    """None, an integer >= 0, or a list of them (what numpy's generators take; the
    Trainer seeds dropout with [seed, step, micro-batch])."""
    def integer(x):
        return not isinstance(x, bool) and isinstance(x, numbers.Integral) and x >= 0
    if seed is not None and not (integer(seed) or isinstance(seed, (list, tuple)) and seed
                                 and all(integer(x) for x in seed)):
        raise ConfigError(f"{what} must be an integer >= 0 or None, got {seed!r}.")
    return seed


def _memory_bytes() -> int:
    """This machine's physical memory (1 TiB where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def check_fits(what: str, shapes, dtype) -> int:
    """Refuse, before allocating, an adapter whose tensors (``shapes``: an iterable of
    shapes) need more bytes than this machine has memory; -> the bytes it needs.

    The bound is the machine's *physical* memory, not what is free now: an adapter larger
    than all the memory can never be held (let alone trained, which needs ~4x: values,
    gradients and Adam's two moments), while one under it may fit once other things are
    freed, so the same call never succeeds or fails with the load of the moment."""
    n = sum(int(np.prod([int(d) for d in shape], dtype=object)) for shape in shapes)
    need, have = n * np.dtype(dtype).itemsize, _memory_bytes()
    if need > have:
        raise ConfigError(f"{what} would need {n:,} values = {_size(need)} for its tensors alone, "
                          f"more than this machine's memory ({_size(have)}); choose smaller sizes.")
    return need


def _size(n: int) -> str:
    """4,096 bytes (4.0 KiB): exact, then readable."""
    x = n
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if x < 1024 or unit == "EiB":
            return f"{n:,} bytes" + ("" if unit == "bytes" else f" ({x:,.1f} {unit})")
        x /= 1024


def _flatten(tree, key: str):
    """(saved key, array) for every array in a tree of dicts: the path joined by "." after ``key``."""
    if isinstance(tree, np.ndarray):
        yield key, tree
        return
    for name, sub in tree.items():
        yield from _flatten(sub, f"{key}{name}" if not key or key.endswith(".") else f"{key}.{name}")


def _tree_map(tree, fn):
    """The same tree of dicts with ``fn`` applied to every array (sets and lists copied)."""
    if isinstance(tree, np.ndarray):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _tree_map(v, fn) for k, v in tree.items()}
    return type(tree)(tree)


class PeftModel(GPT2):
    """A frozen GPT2 with one or more adapters of one PEFT method (see the subclasses)."""

    config_class: type = None          # the method's config class (LoraConfig, IA3Config, ...)
    _stores: tuple = ()                # the dicts adapter name -> state (made in _init_state); [0]: tensors
    _saved_prefix: str = PREFIX        # what the saved keys of the tensors start with

    def __init__(self, model: GPT2, config, adapter_name: str = "default", seed: int = 0):
        if not isinstance(model, GPT2) or isinstance(model, PeftModel):
            raise ConfigError("get_peft_model needs a minipeft GPT2 (e.g. GPT2.from_pretrained(...)), "
                              f"got {type(model).__name__}.")
        super().__init__(model.config, model.params, trainable=())
        self.take_ops_choice(model)                    # use_kernels = False survives wrapping
        check_adapter_name(adapter_name)
        check_seed(seed)
        self.base_model = model
        self.peft_config: dict = {}
        self.active_adapter = adapter_name
        self.training = False
        self._disabled = False
        self._rng = np.random.default_rng(seed)
        self._seeds = np.random.SeedSequence(seed)     # for adapters added without a seed
        self._init_state()
        self.add_adapter(adapter_name, config, seed=seed)

    def _init_state(self):
        """Create the method's containers, the dicts of ``_stores`` (before the first add_adapter)."""

    def _init_rng(self, seed) -> np.random.Generator:
        """The generator an adapter starts from: ``seed`` when given (repeatable), else a
        fresh stream of this model's own (spawned from get_peft_model's seed), so that two
        adapters added without a seed never start the same (peft draws from torch's
        global generator, which has moved on by the second adapter)."""
        if check_seed(seed) is not None:
            return np.random.default_rng(seed)
        return np.random.default_rng(self._seeds.spawn(1)[0])

    # ------------------------------------------------------------ adapters
    def _check_new_adapter(self, adapter_name: str, config):
        """Before a new adapter is made: its name, its config's class, no clash with the
        adapters already here (peft's _check_new_adapter_config: one adapter with bias)."""
        check_adapter_name(adapter_name)
        if self.config_class is not None and not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__}.add_adapter needs a {self.config_class.__name__}, "
                              f"got {type(config).__name__}; one model holds adapters of one method.")
        check_values(config)                      # again: a field may have been set since
        if adapter_name in self.peft_config:
            raise ConfigError(f"an adapter named {adapter_name!r} exists; delete_adapter it first "
                              "or choose another name.")
        if getattr(config, "bias", "none") != "none":
            other = [n for n, c in self.peft_config.items() if getattr(c, "bias", "none") != "none"]
            if other:
                raise ConfigError(
                    f"adapter {other[0]!r} already trains biases (bias={self.peft_config[other[0]].bias!r}) "
                    f"and {adapter_name!r} would too (bias={config.bias!r}): the biases are the base "
                    f"model's own arrays, shared by every adapter, so training one would change the "
                    f"other. {type(self).__name__} supports only 1 adapter with bias, as peft; set "
                    "bias='none' for all adapters but one.")

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
        """Remove an adapter; the next one becomes active. After the last, the model holds
        none: trainable_parameters() is empty and running it asks for add_adapter, as peft."""
        self._check_name(adapter_name)
        if adapter_name in getattr(self, "merged", ()):
            raise ConfigError(f"adapter {adapter_name!r} is merged; unmerge_adapter() first.")
        del self.peft_config[adapter_name]
        for store in self._stores:
            del getattr(self, store)[adapter_name]
        if adapter_name == self.active_adapter:
            if self.peft_config:
                self.set_adapter(next(iter(self.peft_config)))
            else:
                self.active_adapter, self.trainable = None, set()

    def _check_name(self, adapter_name):
        """An existing adapter's name (checked as a name first: it may come from a user)."""
        check_adapter_name(adapter_name)
        if adapter_name not in self.peft_config:
            raise ConfigError(f"no adapter named {adapter_name!r}; this model has "
                              f"{sorted(self.peft_config)}.")

    @property
    def active_peft_config(self):
        if self.active_adapter not in self.peft_config:
            raise ConfigError("this PeftModel has no adapter left (the last was deleted); "
                              "add_adapter or load_adapter one.")
        return self.peft_config[self.active_adapter]

    def _adapter_arrays(self, adapter_name: str) -> dict[str, np.ndarray]:
        """{saved key: live array} of one adapter's own tensors: the first store's tree, flattened."""
        return dict(_flatten(getattr(self, self._stores[0])[adapter_name], self._saved_prefix))

    # ------------------------------------------------------------ parameters
    def trainable_parameters(self) -> dict[str, np.ndarray]:
        """name -> array (the live arrays: an optimiser updates them in place), peft's names;
        empty when the adapter is loaded for inference, or when no adapter is left."""
        if not self.peft_config or self.active_peft_config.inference_mode:
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

    def _backward_trunk(self, dxf, dwte, cache) -> dict[str, np.ndarray]:
        grads = super()._backward_trunk(dxf, dwte, cache)
        return {} if cache.get("inference_mode") else grads

    # ------------------------------------------------------------ modes
    def train(self, mode: bool = True, seed: int | None = None):
        """Training mode turns the method's dropout on; ``seed`` restarts its random stream."""
        self.training = mode
        if check_seed(seed) is not None:
            self._rng = np.random.default_rng(seed)
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def disable_adapter(self):
        """``with model.disable_adapter():`` runs the base model. On a merged model the
        merge is taken out for the duration (as peft's layers unmerge) and put back after."""
        with self._unmerged():
            self._disabled = True
            try:
                yield self
            finally:
                self._disabled = False

    @contextlib.contextmanager
    def _unmerged(self):
        """Nothing to undo for methods that do not merge (see MergeMixin)."""
        yield

    def unload(self) -> GPT2:
        """The base model back, without merging (peft's ``unload``): the GPT2 given to
        get_peft_model, whose arrays this model shares. As in peft, it holds what the base
        holds now: merged adapters stay merged in it (``unmerge_adapter()`` first for the
        original weights), biases trained with ``bias="all"`` stay trained, and PiSSA/OLoRA
        leave their residual weights. It runs the ops this model runs (``use_kernels``)."""
        self.base_model.take_ops_choice(self)
        return self.base_model

    def _forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                 use_cache=False, head=True):
        if not self.peft_config:
            raise ConfigError("this PeftModel has no adapter left; add_adapter one.")
        logits, cache = super()._forward(input_ids, attention_mask, position_ids, past_key_values,
                                         use_cache, head)
        cache["inference_mode"] = self.active_peft_config.inference_mode   # backward gives no grads
        return logits, cache

    @property
    def _adapting(self) -> bool:
        """Does the active adapter run now (not disabled, one left)?"""
        return not self._disabled and bool(self.peft_config)

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
        """Give this copy its own stores, every adapter tensor a new array of ``dtype``."""
        for store in self._stores:
            setattr(self, store, _tree_map(getattr(self, store), lambda a: a.astype(dtype)))

    # ------------------------------------------------------------ saving
    def _adapter_state(self, adapter_name: str) -> tuple[dict, dict]:
        """-> (config as peft's adapter_config.json, {saved key: array}) of one adapter."""
        d = self.peft_config[adapter_name].to_dict()
        d["inference_mode"] = True                    # as peft writes it
        return d, self._adapter_arrays(adapter_name)

    @classmethod
    def _saved_shapes(cls, config, model: GPT2) -> dict[str, tuple]:
        """{saved key: shape} of the tensors an adapter of ``config`` on ``model`` saves (subclasses)."""
        raise NotImplementedError

    @classmethod
    def _read_state(cls, config, raw: dict, model: GPT2, path) -> dict:
        """Check the saved tensors ``raw`` against ``config`` and ``model``: -> the tensors
        to load, in the model's dtype, by saved key (io.check_state)."""
        return check_state(raw, cls._saved_shapes(config, model), path, model)

    def _load_weights(self, adapter_name: str, weights: dict, config):
        """Copy the tensors of ``_read_state`` into the new adapter's arrays."""
        for key, arr in self._adapter_arrays(adapter_name).items():
            arr[...] = weights[key]

    def save_pretrained(self, folder, selected_adapters=None):
        """peft's format: adapter_config.json + adapter_model.safetensors per adapter
        ("default" in ``folder``, others in ``folder/<name>``; every name is checked by
        check_adapter_name, so nothing is written outside ``folder``)."""
        if isinstance(selected_adapters, str):
            raise ConfigError(f"selected_adapters must be a list of adapter names, e.g. "
                              f"[{selected_adapters!r}], got the string {selected_adapters!r}.")
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        for name in names:
            self._check_name(name)
        if not names:
            raise ConfigError("this PeftModel has no adapter to save (the last was deleted, or "
                              "selected_adapters is empty); add_adapter one first.")
        return save_adapters(self, folder, selected_adapters)

    @classmethod
    def from_pretrained(cls, model: GPT2, folder, adapter_name: str = "default",
                        is_trainable: bool = False) -> "PeftModel":
        """Load an adapter saved by peft or minipeft onto ``model`` (for inference unless
        ``is_trainable``, as peft). ``PeftModel.from_pretrained`` picks the method from
        the saved config's ``peft_type``."""
        check_adapter_name(adapter_name)
        if not isinstance(is_trainable, bool):
            raise ConfigError(f"is_trainable must be True or False, got {is_trainable!r}.")
        config, raw, path = read_adapter(folder)
        model_cls = model_class_for(config)
        if not issubclass(model_cls, cls):
            raise ConfigError(f"{folder} holds a {config.peft_type} adapter; load it with "
                              f"PeftModel.from_pretrained or {model_cls.__name__}.from_pretrained.")
        weights = model_cls._read_state(config, raw, model, path)
        pm = model_cls(model, model_cls._as_loaded(config, is_trainable), adapter_name=adapter_name)
        pm._load_weights(adapter_name, weights, config)
        return pm

    def load_adapter(self, folder, adapter_name: str, is_trainable: bool = False):
        """Load another saved adapter (of this model's method) under ``adapter_name``."""
        check_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise ConfigError(f"an adapter named {adapter_name!r} exists; delete_adapter it first "
                              "or load this one under another name.")
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


class MergeMixin:
    """peft's merging, for the methods whose adapter folds into the base weights (LoRA,
    IA3): ``merge_adapter``, ``unmerge_adapter``, ``merge_and_unload`` with peft's
    ``adapter_names=`` and ``safe_merge=``, and ``disable_adapter`` on a merged model.

    A method gives two folds, each returning new arrays and changing nothing:
    ``_merged_params(name, params, base, keep)`` -> {param name: array with adapter
    ``name`` folded into ``params``} (``base``: the weights with nothing merged, which
    DoRA's norm is taken of, as in forward; ``keep``: what unmerging will need, keyed
    ``(name, …)``), and ``_unmerged_params(name, params, kept)`` -> the same with it taken
    back out; and ``_check_mergeable(name)``. ``self.merged`` lists the merged adapters in
    merge order, ``self._unmerge_data`` holds what their merges kept.

    As peft: merging adapters already merged only warns ("All adapters are already merged,
    nothing to do."), several adapters merge one after the other and unmerge in reverse,
    a merged model runs the base layers alone, and unmerging an unmerged model warns.
    """

    merged: list
    _unmerge_data: dict

    def _init_state(self):
        self.merged: list[str] = []                   # adapters merged into the base weights, in order
        self._unmerge_data: dict = {}                 # (adapter, module) -> what unmerging needs
        super()._init_state()

    def _astype_adapters(self, dtype):
        super()._astype_adapters(dtype)
        self.merged = list(self.merged)
        self._unmerge_data = {k: v.astype(dtype) for k, v in self._unmerge_data.items()}

    def _check_mergeable(self, adapter_name: str):
        """Refuse, in merge_adapter, an adapter that could not be unmerged (subclasses)."""

    def _to_merge(self, adapter_names) -> list[str]:
        """The adapters to fold in: ``adapter_names`` (None: the active one), those already
        merged left out with peft's warning."""
        if adapter_names is None:
            self.active_peft_config                   # refuses when no adapter is left
            names = [self.active_adapter]
        elif isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)):
            raise ConfigError(f"adapter_names must be a list of adapter names, e.g. "
                              f"[{adapter_names!r}], got {adapter_names!r}.")
        else:
            names = list(adapter_names)
        for name in names:
            self._check_name(name)
        if len(set(names)) != len(names):
            raise ConfigError(f"adapter_names {names} names an adapter twice; each is merged once.")
        if self.merged:
            todo = [n for n in names if n not in self.merged]
            if todo:
                warnings.warn(f"Already following adapters were merged {','.join(self.merged)}. "
                              f"You are now additionally merging {','.join(todo)}.", stacklevel=3)
            else:
                warnings.warn("All adapters are already merged, nothing to do.", stacklevel=3)
            names = todo
        return names

    def _fold_in(self, names, params, safe_merge: bool, keep: dict) -> dict[str, np.ndarray]:
        """{param name: new array} with adapters ``names`` folded into ``params`` one after
        the other (``params`` is not changed). ``safe_merge``: refuse non-finite results."""
        if not isinstance(safe_merge, bool):
            raise ConfigError(f"safe_merge must be True or False, got {safe_merge!r}.")
        base = dict(params)
        for name in reversed(self.merged):            # the weights with nothing merged
            base.update(self._unmerged_params(name, base, self._unmerge_data))
        view, new = dict(params), {}
        for name in names:
            step = self._merged_params(name, view, base, keep)
            if safe_merge:
                for key, arr in step.items():
                    bad = int(np.count_nonzero(~np.isfinite(arr)))
                    if bad:
                        raise ConfigError(
                            f"safe_merge: merging adapter {name!r} gives {bad:,} NaN or infinite "
                            f"values in {key}; the adapter seems broken (a diverged training run, "
                            "or a damaged file). Nothing was merged; check its weights for NaN/inf.")
            view.update(step)
            new.update(step)
        return new

    def merge_adapter(self, adapter_names=None, safe_merge: bool = False):
        """Fold adapters (``adapter_names``; None: the active one) into the base weights, as
        peft's merge_adapter; forward then runs the base layers alone. ``safe_merge=True``
        checks the merged weights for NaN/inf before changing anything (peft's option)."""
        names = self._to_merge(adapter_names)
        for name in names:
            self._check_mergeable(name)
        if not names:
            return
        keep = {}
        new = self._fold_in(names, self.params, safe_merge, keep)   # computed whole, then committed
        self.params.update(new)
        self._unmerge_data.update(keep)
        self.merged = self.merged + names

    def unmerge_adapter(self):
        """Take every merged adapter back out of the base weights, the last merged first.
        Nothing merged: peft's warning, nothing done."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged:
            name = self.merged[-1]
            self.params.update(self._unmerged_params(name, self.params, self._unmerge_data))
            self.merged = self.merged[:-1]
            self._unmerge_data = {k: v for k, v in self._unmerge_data.items() if k[0] != name}

    def merge_and_unload(self, safe_merge: bool = False, adapter_names=None) -> GPT2:
        """A plain GPT2 with the adapters merged in (``adapter_names``; None: the active one),
        as peft's merge_and_unload, in new arrays: unlike peft, this PeftModel stays as it is
        (peft's is unwrapped in place and unusable after)."""
        names = self._to_merge(adapter_names)
        params = dict(self.params)
        params.update(self._fold_in(names, params, safe_merge, {}))
        merged = GPT2(self.config, {k: v.copy() for k, v in params.items()})
        merged.take_ops_choice(self)
        return merged

    @contextlib.contextmanager
    def _unmerged(self):
        """For disable_adapter on a merged model: the merge is taken out for the duration and
        the merged arrays put back after, bit for bit (peft unmerges and leaves it so; the
        outputs are the same, minipeft keeps the state the user chose)."""
        if not self.merged:
            yield
            return
        merged, before, data = list(self.merged), dict(self.params), dict(self._unmerge_data)
        self.unmerge_adapter()
        changed = [k for k, v in before.items() if self.params.get(k) is not v]
        try:
            yield
        finally:
            if not self.merged:                       # nothing merged meanwhile: put it back
                self.params.update({k: before[k] for k in changed})
                self.merged, self._unmerge_data = merged, data
