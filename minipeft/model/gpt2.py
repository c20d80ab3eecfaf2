"""GPT-2 (Radford et al. 2019) in NumPy: forward, and backward by hand.

One forward pass, top to bottom:

    x = wte[ids] + wpe[pos]                                 (B, T, C) embedding
    for each block h.0 .. h.{L-1}:
        x = x + c_proj(attention(c_attn(ln_1(x))))          causal self-attention
        x = x + mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))         feed-forward, width 4C
    logits = ln_f(x) @ wte.T                                (B, T, V) lm_head tied to wte

For generation, `forward` also takes a KV cache (`past_key_values`): the keys and
values of the tokens already seen, so that each new token runs alone (generate.py).

`backward` walks the same lines bottom to top. PEFT methods change the model only
through hooks, each with its backward, and every method runs this one forward:

    _linear / _linear_backward          every linear layer, by checkpoint name (LoRA, IA3)
    _residual / _residual_backward      the two residual additions of a block (bottleneck)
    _embed / _embed_backward            the embedding; virtual tokens first (prompt tuning)
    _prefix / _prefix_backward          keys/values before the tokens in every layer (prefix)
    _extra_length, _check_past, _positions   how many entries a method puts before the
                                        tokens, and where the real tokens then sit

The only state shared between forward and backward is the returned cache: each hook's
backward reads what its forward kept there, never the model's state at backward time.
Weight gradients are computed only for `trainable` names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import ops as twins
from ..config import GPT2Config
from ..errors import ConfigError, InputError
from ..io.checkpoint import check_params, load_folder, resolve_model_folder, save_folder
from ..kernels import ops as kernels
from ..ops import (
    IGNORE_INDEX,
    attention_mask_allowed,
    embedding_backward,
    embedding_forward,
    residual_backward,
    residual_forward,
    shift_labels,
)
from .generate import generate as _generate
from .inputs import (
    _as_int_array,
    check_attention_mask,
    check_input_ids,
    check_labels,
    check_past_key_values,
    check_position_ids,
)

DTYPES = (np.float32, np.float64)



NO_PAST_BACKWARD = ("backward through a KV cache is not supported: run forward on the whole "
                    "sequence (no past_key_values) before backward.")


class GPT2:
    """GPT2LMHeadModel in NumPy. ``params`` uses its state-dict names, Conv1D [in, out]."""

    def __init__(self, config: GPT2Config, params: dict[str, np.ndarray], trainable=None):
        if not isinstance(config, GPT2Config):
            raise ConfigError(f"GPT2 needs a GPT2Config, got {type(config).__name__}; build one with "
                              "GPT2Config(...) or GPT2Config.from_dict(d).")
        if not isinstance(params, dict) or not all(isinstance(v, np.ndarray) for v in params.values()):
            raise ConfigError("GPT2 params must be a dict from state-dict names to NumPy arrays "
                              "(init_params(config) or GPT2.from_pretrained(...) makes one).")
        check_params(params, config, "GPT2(params)")
        dtypes = {p.dtype for p in params.values()}
        if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPES:
            raise ConfigError(f"GPT2 params must all be float32 or all float64, got {dtypes}; "
                              "cast them, e.g. {k: v.astype(np.float32) for k, v in params.items()}.")
        self.config = config
        self.params = params
        self.use_kernels = True     # attention, layernorm, cross-entropy: Numba kernels; False: twins
        self._ops = None            # a table set through ``ops`` (a profiler's), else use_kernels picks
        self.trainable = set(params) if trainable is None else set(trainable)
        unknown = sorted(self.trainable - set(params))
        if unknown:
            raise ConfigError(f"trainable names no parameter: {unknown[:5]}; names are the "
                              "keys of model.params (e.g. transformer.h.0.attn.c_attn.weight).")

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path_or_name: str | Path, dtype=np.float32) -> "GPT2":
        """A converted folder, a Hugging Face GPT-2 folder (converted in memory),
        a bundled name, or a hub name (downloads when the network allows)."""
        config, params = load_folder(resolve_model_folder(path_or_name), dtype=dtype)
        return cls(config, params)

    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write a converted folder (config.json + model.safetensors, float32)."""
        return save_folder(folder, self.config, self.params, overwrite=overwrite)

    def astype(self, dtype) -> "GPT2":
        """A copy in float32 or float64 (float64 for gradient checks)."""
        dtype = np.dtype(dtype)
        if dtype not in DTYPES:
            raise ConfigError(f"minipeft runs in float32 or float64, not {dtype}.")
        new = type(self)(self.config, {k: v.astype(dtype) for k, v in self.params.items()},
                         self.trainable)
        new.take_ops_choice(self)
        return new

    @property
    def ops(self):
        """The table of ops the model calls (layernorm, attention, GELU, cross-entropy, the
        linear products, the head split/merge): kernels/ops.py (Numba), or with
        ``use_kernels = False`` their plain NumPy twins in ops/. Setting it installs another
        table with the same functions (bench/profile.py sets a timed one); None goes back."""
        if self._ops is not None:
            return self._ops
        return kernels if self.use_kernels else twins

    @ops.setter
    def ops(self, table):
        self._ops = table

    def take_ops_choice(self, other: "GPT2") -> None:
        """Run the ops ``other`` runs (its use_kernels and any table set through ``ops``):
        a model made from another (astype, a PEFT wrapper, a merge, an unload) keeps its choice."""
        self.use_kernels, self._ops = other.use_kernels, other._ops

    @property
    def dtype(self) -> np.dtype:
        return self.params["transformer.wte.weight"].dtype

    def num_parameters(self) -> int:
        return sum(p.size for p in self.params.values())

    # ---------------------------------------------------------------- forward
    def __call__(self, input_ids, attention_mask=None) -> np.ndarray:
        """-> logits (B, T, V)."""
        return self.forward(input_ids, attention_mask)[0]

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=False):
        """-> (logits (B, T, V), cache). The cache also keeps `hidden_states`:
        the embedding output and every block's output, for comparisons.

        KV cache (for generation, see model/generate.py): ``past_key_values`` is a list,
        per layer, of the (k, v) arrays (B, NH, T_past, hs) of the tokens already seen;
        the T new tokens attend to those keys and their own, and take positions
        T_past .. T_past + T - 1 unless ``position_ids`` (B|1, T) says otherwise.
        ``attention_mask`` then covers past + new tokens, (B, T_past + T). With
        ``use_cache`` the cache returns ``present_key_values``: past + new, (B, NH, T_past + T, hs).
        ``backward`` needs a forward without ``past_key_values``.

        A PEFT method may put P entries before the tokens, through the hooks below: virtual
        tokens (prompt tuning, ``_embed``) or keys/values (prefix tuning, ``_prefix``). They
        count in the KV cache, not in ``attention_mask`` or the logits, which cover the real
        tokens only.
        """
        logits, cache = self._forward(input_ids, attention_mask, position_ids, past_key_values, use_cache)
        P = cache["virtual_tokens"]
        return (logits[:, P:] if P else logits), cache                  # (B, T, V) the real tokens

    def _forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                 use_cache=False, head=True):
        """forward, with the logits of any virtual tokens too: (B, P + T, V). ``head=False``
        (training: loss_and_grads): no lm_head, no hidden_states; the first value is then
        the lm_head's input xf (B, P + T, C), for lm_head_loss."""
        cfg = self.config
        ids = check_input_ids(input_ids, cfg.vocab_size, cfg.n_positions)
        B, T = ids.shape
        seen = self._check_past(past_key_values, ids.shape)            # real tokens in the KV cache
        mask = check_attention_mask(attention_mask, ids.shape, seen)    # (B, seen + T) or None
        P = self._extra_length()                                        # a method's entries first
        if mask is not None and P:
            mask = np.concatenate([np.ones((B, P), dtype=bool), mask], axis=1)  # (B, P + seen + T)
        pos = self._positions(position_ids, ids.shape, seen)            # (B|1, T) rows of wpe
        x, emb_cache = self._embed(ids, pos, first=past_key_values is None)  # (B, [P +] T, C)
        prefix_cache = None
        if past_key_values is None:
            past_key_values, prefix_cache = self._prefix(B)             # prefix tuning: (k, v) per layer
        logits, cache = self._forward_embedded(x, emb_cache, mask, past_key_values, use_cache, head)
        cache["virtual_tokens"] = x.shape[1] - T                        # P virtual tokens in x, or 0
        cache["prefix"] = prefix_cache                                  # what _prefix_backward needs
        return logits, cache

    def _forward_embedded(self, x, emb_cache, mask, past_key_values=None, use_cache=False, head=True):
        """The blocks, ln_f and the lm_head on embedded inputs x (B, T, C): -> (logits, cache);
        ``head=False``: -> (xf, cache), no lm_head and no hidden_states (kept for comparisons,
        they would only raise a training step's peak memory)."""
        cfg, P = self.config, self.params
        T = x.shape[1]
        past = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        allowed = attention_mask_allowed(T, past + T, mask)             # (B|1, 1, T, T_past + T)
        hidden_states, layer_caches = [x] if head else None, []
        for i in range(cfg.n_layer):
            layer_past = past_key_values[i] if past else None          # (k, v) or None
            x, layer_cache = self._block_forward(i, x, allowed, layer_past)
            if head:
                hidden_states.append(x)
            layer_caches.append(layer_cache)
        xf, lnf_cache = self.ops.layernorm_forward(x, P["transformer.ln_f.weight"],
                                                   P["transformer.ln_f.bias"], cfg.layer_norm_epsilon)
        B, C = xf.shape[0], xf.shape[-1]
        # (B, T, V): lm_head is tied to wte
        logits = (xf.reshape(-1, C) @ P["transformer.wte.weight"].T).reshape(B, T, -1) if head else xf
        cache = {
            "embedding": emb_cache,      # ids (B, T), positions (B, T)
            "layers": layer_caches,      # one dict per block, see _block_forward
            "ln_f": lnf_cache,           # xhat (B, T, C), rstd (B, T, 1)
            "xf": xf,                    # (B, T, C) input of the lm_head
            "hidden_states": hidden_states,  # L + 1 arrays (B, T, C); None with head=False
            "past_length": past,         # T_past: backward needs 0 (or a method's prefix)
        }
        if use_cache:                    # L pairs (B, NH, T_past + T, hs)
            cache["present_key_values"] = [c["present"] for c in layer_caches]
        return logits, cache

    def _embed(self, ids, pos, first=True):
        """Token + position embedding: -> (x (B, T, C), cache). Prompt tuning puts its virtual
        tokens first when ``first`` (no KV cache yet): x (B, P + T, C)."""
        return embedding_forward(ids, self.params["transformer.wte.weight"],
                                 self.params["transformer.wpe.weight"], pos)

    def _block_forward(self, i: int, x, allowed, layer_past=None):
        """One transformer block: (B, T, C) -> (B, T, C), cache.
        ``layer_past``: this layer's cached (k, v), each (B, NH, T_past, hs)."""
        cfg, P, h = self.config, self.params, f"transformer.h.{i}"
        eps = cfg.layer_norm_epsilon
        ops = self.ops
        ln1, ln1_c = ops.layernorm_forward(x, P[f"{h}.ln_1.weight"], P[f"{h}.ln_1.bias"], eps)
        qkv, c_attn_c = self._linear(f"{h}.attn.c_attn", ln1)          # (B, T, 3C)
        q, k, v = ops.split_heads(qkv, cfg.n_head)                      # (B, NH, T, hs) each
        if layer_past is not None:                                      # KV cache: prepend the past
            k = np.concatenate([layer_past[0], k], axis=2)              # (B, NH, T_past + T, hs)
            v = np.concatenate([layer_past[1], v], axis=2)              # (B, NH, T_past + T, hs)
        y, attn_c = self._attention(i, q, k, v, allowed)                # (B, NH, T, hs)
        a, c_proj_c = self._linear(f"{h}.attn.c_proj", ops.merge_heads(y))  # (B, T, C)
        x2, res1_c = self._residual(f"{h}.attn", x, a)                  # x + a
        ln2, ln2_c = ops.layernorm_forward(x2, P[f"{h}.ln_2.weight"], P[f"{h}.ln_2.bias"], eps)
        f, c_fc_c = self._linear(f"{h}.mlp.c_fc", ln2)                  # (B, T, 4C)
        g, gelu_c = ops.gelu_forward(f)                                 # (B, T, 4C)
        m, mlp_proj_c = self._linear(f"{h}.mlp.c_proj", g)              # (B, T, C)
        x3, res2_c = self._residual(f"{h}.mlp", x2, m)                  # x2 + m
        cache = {"ln_1": ln1_c, "attn.c_attn": c_attn_c, "attn": attn_c,
                 "attn.c_proj": c_proj_c, "attn.residual": res1_c, "ln_2": ln2_c,
                 "mlp.c_fc": c_fc_c, "gelu": gelu_c, "mlp.c_proj": mlp_proj_c,
                 "mlp.residual": res2_c,
                 "past_length": 0 if layer_past is None else layer_past[0].shape[2],
                 "present": (k, v)}                                     # the KV cache, past + new
        return x3, cache

    def generate(self, input_ids, max_new_tokens, do_sample=False, temperature=1.0, top_k=None,
                 top_p=None, seed=None, attention_mask=None, eos_token_id="auto",
                 pad_token_id=None) -> np.ndarray:
        """-> (B, T + new) int64 token ids, greedy or sampled, with a KV cache
        (see model/generate.py)."""
        return _generate(self, input_ids, max_new_tokens, do_sample=do_sample,
                         temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                         attention_mask=attention_mask, eos_token_id=eos_token_id,
                         pad_token_id=pad_token_id)

    # Hooks: the places where PEFT methods change the model, each with its backward.
    def _linear(self, name: str, x):
        """The Conv1D called ``name`` (LoRA, IA3 override this): -> (out, cache). A frozen
        weight keeps no input for backward, which needs it only for the weight's gradient."""
        out, x = self.ops.linear_forward(x, self.params[f"{name}.weight"], self.params[f"{name}.bias"])
        return out, (x if f"{name}.weight" in self.trainable else None)  # dw needs x; dx does not

    def _attention(self, i: int, q, k, v, allowed):
        """Layer ``i``'s attention over its keys (past or prefix first): -> (y, cache)."""
        return self.ops.attention_forward(q, k, v, allowed)

    def _attention_backward(self, i: int, dy, cache):
        """-> dq, dk, dv (dk, dv over past + new keys)."""
        return self.ops.attention_backward(dy, cache)

    def _residual(self, name: str, x, fx):
        """The residual after ``name`` (transformer.h.0.attn or .mlp): x + f(x) (bottleneck
        adapters override this): -> (out, cache)."""
        return residual_forward(x, fx)

    def _residual_backward(self, name: str, dout, cache, grads):
        """-> (dx, dfx)."""
        return residual_backward(dout, cache)

    def _extra_length(self) -> int:
        """P: the entries a method puts before the tokens in every layer's keys (prefix or
        prompt tuning); 0 for GPT-2. The attention mask gets P ones in front."""
        return 0

    def _check_past(self, past_key_values, shape) -> int:
        """The KV cache checked for input_ids of ``shape``: -> the real tokens it holds."""
        return check_past_key_values(past_key_values, shape, self.config, self.dtype)

    def _positions(self, position_ids, shape, seen: int):
        """The real tokens' rows of wpe (B|1, T): given, or seen .. seen + T - 1."""
        pos = check_position_ids(position_ids, shape, self.config.n_positions)
        return np.arange(seen, seen + shape[1])[None, :] if pos is None else pos

    def _prefix(self, batch_size: int):
        """Keys/values a method puts before the tokens when no KV cache is given (prefix
        tuning): -> (per layer (k, v) (B, NH, P, hs), cache for _prefix_backward), or (None, None)."""
        return None, None

    def _prefix_backward(self, dpast, cache, grads):
        """Backward of ``_prefix``: ``dpast`` per layer (dk, dv) (B, NH, P, hs)."""
        raise InputError(NO_PAST_BACKWARD)

    def _embed_backward(self, dx, cache, dwte, grads):
        """Backward of ``_embed``: the wte / wpe gradients into ``grads``."""
        dwte, dwpe = embedding_backward(dx, cache, dwte, need_wte=dwte is not None,
                                        need_wpe="transformer.wpe.weight" in self.trainable)
        self._put(grads, "transformer.wte.weight", dwte)
        self._put(grads, "transformer.wpe.weight", dwpe)

    # ---------------------------------------------------------------- backward
    def backward(self, dlogits, cache) -> dict[str, np.ndarray]:
        """dlogits (B, T, V) -> gradient of every trainable parameter, by name."""
        cfg = self.config
        if not isinstance(cache, dict) or "xf" not in cache:
            raise InputError("backward needs the cache of forward: logits, cache = model.forward(ids); "
                             "grads = model.backward(dlogits, cache).")
        dlogits, V = np.asarray(dlogits, dtype=self.dtype), cfg.vocab_size
        B, PT, _ = cache["xf"].shape
        Pv = cache.get("virtual_tokens", 0)                             # no loss on virtual tokens
        if dlogits.shape != (B, PT - Pv, V):
            raise InputError(f"dlogits has shape {dlogits.shape}, but the forward that made this "
                             f"cache gave logits {(B, PT - Pv, V)}; pass the gradient "
                             "of the loss with respect to those logits.")
        if Pv:
            dlogits = np.concatenate([np.zeros((B, Pv, V), self.dtype), dlogits], axis=1)
        return self._backward(dlogits, cache)

    def _backward(self, dlogits, cache) -> dict[str, np.ndarray]:
        """backward from the logits of every position, virtual tokens included (B, P + T, V)."""
        cfg, V = self.config, self.config.vocab_size
        wte = self.params["transformer.wte.weight"]
        # logits = xf @ wte.T
        dxf = (dlogits.reshape(-1, V) @ wte).reshape(cache["xf"].shape)  # (B, T, C)
        dwte = None
        if "transformer.wte.weight" in self.trainable:
            dwte = dlogits.reshape(-1, V).T @ cache["xf"].reshape(-1, cfg.n_embd)  # (V, C)
        return self._backward_trunk(dxf, dwte, cache)

    def _backward_trunk(self, dxf, dwte, cache) -> dict[str, np.ndarray]:
        """backward from the lm_head's input: dxf (B, P + T, C), and wte's gradient from the
        lm_head (None when wte is frozen) for the embedding's backward to add to."""
        if cache.get("past_length", 0) and cache.get("prefix") is None:
            raise InputError(NO_PAST_BACKWARD)
        grads: dict[str, np.ndarray] = {}
        dx = self._blocks_backward(dxf, cache, grads)
        # x = wte[ids] + wpe[pos]
        self._embed_backward(dx, cache["embedding"], dwte, grads)
        return grads

    def _blocks_backward(self, dxf, cache, grads, dpresent=None):
        """ln_f and the blocks in reverse, then any prefix: dxf (B, T, C) -> dx (B, T, C), the
        gradient of the first block's input. ``dpresent``: per layer, a gradient (dk, dv) of
        the layer's keys and values from tokens that attend to them in another pass (prompt
        tuning's shared virtual tokens), added to the one of its own attention."""
        cfg = self.config
        # xf = ln_f(x)
        dx, dg, db = self.ops.layernorm_backward(dxf, cache["ln_f"], self._needs("transformer.ln_f"))
        self._put(grads, "transformer.ln_f.weight", dg)
        self._put(grads, "transformer.ln_f.bias", db)
        dpast = [None] * cfg.n_layer
        for i in reversed(range(cfg.n_layer)):
            dx, dpast[i] = self._block_backward(i, dx, cache["layers"][i], grads,
                                                None if dpresent is None else dpresent[i])
        if cache.get("prefix") is not None:                             # the keys/values of _prefix
            self._prefix_backward(dpast, cache["prefix"], grads)
        return dx

    def _block_backward(self, i: int, dout, c, grads, dpresent=None):
        """The block's lines in reverse: dout (B, T, C) -> dx (B, T, C), and (dk, dv) of the
        past keys/values (B, NH, T_past, hs) when there are (a prefix), else None.
        ``dpresent``: (dk, dv) of c["present"] from elsewhere, added to the attention's."""
        cfg, h = self.config, f"transformer.h.{i}"
        # x3 = x2 + m
        dx2, dm = self._residual_backward(f"{h}.mlp", dout, c["mlp.residual"], grads)
        # m = mlp.c_proj(g); g = gelu(f); f = mlp.c_fc(ln2)
        dg = self._linear_backward(f"{h}.mlp.c_proj", dm, c["mlp.c_proj"], grads)
        ops = self.ops
        df = ops.gelu_backward(dg, c["gelu"])
        dln2 = self._linear_backward(f"{h}.mlp.c_fc", df, c["mlp.c_fc"], grads)
        # ln2 = ln_2(x2)
        dx2_ln, dgam, dbeta = ops.layernorm_backward(dln2, c["ln_2"], self._needs(f"{h}.ln_2"))
        self._put(grads, f"{h}.ln_2.weight", dgam)
        self._put(grads, f"{h}.ln_2.bias", dbeta)
        dx2 = dx2 + dx2_ln
        # x2 = x + a
        dx, da = self._residual_backward(f"{h}.attn", dx2, c["attn.residual"], grads)
        # a = c_proj(merge_heads(y)); y = attention(q, k, v); q, k, v = split_heads(c_attn(ln1))
        dy = self._linear_backward(f"{h}.attn.c_proj", da, c["attn.c_proj"], grads)   # (B, T, C)
        dq, dk, dv = self._attention_backward(i, ops.merge_heads_backward(dy, cfg.n_head), c["attn"])
        if dpresent is not None:                                        # keys/values read elsewhere too
            dk, dv = dk + dpresent[0], dv + dpresent[1]
        past, dpast = c["past_length"], None
        if past:                                                        # a prefix: its own gradients
            dpast = (dk[:, :, :past], dv[:, :, :past])
            dk, dv = dk[:, :, past:], dv[:, :, past:]
        dln1 = self._linear_backward(f"{h}.attn.c_attn", ops.split_heads_backward(dq, dk, dv),
                                     c["attn.c_attn"], grads)
        # ln1 = ln_1(x)
        dx_ln, dgam, dbeta = ops.layernorm_backward(dln1, c["ln_1"], self._needs(f"{h}.ln_1"))
        self._put(grads, f"{h}.ln_1.weight", dgam)
        self._put(grads, f"{h}.ln_1.bias", dbeta)
        return dx + dx_ln, dpast

    def _linear_backward(self, name: str, dout, cache, grads):
        """Backward of ``_linear``: -> dx; weight gradients go into ``grads``."""
        dx, dw, db = self.ops.linear_backward(dout, cache, self.params[f"{name}.weight"],
                                              need_params=self._needs(name))
        self._put(grads, f"{name}.weight", dw)
        self._put(grads, f"{name}.bias", db)
        return dx

    def _needs(self, module: str) -> bool:
        """Does the module ``module`` (e.g. transformer.h.0.ln_1) have a trainable weight or bias?"""
        return f"{module}.weight" in self.trainable or f"{module}.bias" in self.trainable

    def _put(self, grads, name, value):
        if value is not None and name in self.trainable:
            grads[name] = value

    # ---------------------------------------------------------------- loss
    def loss_and_grads(self, input_ids, labels, attention_mask=None):
        """Next-token loss (labels shifted inside, -100 ignored, mean) and its gradients.
        Virtual tokens (prompt tuning) get label -100, as peft pads them: the last one is
        scored on the first real token.

        The lm_head and the loss run together (``ops.lm_head_loss``) on the positions that
        count: a position labelled -100 (a prompt token with completion-only labels,
        padding, a virtual token, the last position) costs no logits row and no share of
        the lm_head's backward, and the (B, T, V) logits are never whole in memory. The loss
        and the gradients are those of ``backward`` from the full logits."""
        xf, cache = self._forward(input_ids, attention_mask, head=False)    # (B, P + T, C)
        labels = self._labels(labels, xf.shape[:2], cache["virtual_tokens"])
        loss, dxf, dwte = self.ops.lm_head_loss(xf, self.params["transformer.wte.weight"],
                                                shift_labels(labels),
                                                need_dwte="transformer.wte.weight" in self.trainable)
        return loss, self._backward_trunk(dxf, dwte, cache)

    def loss(self, input_ids, labels, attention_mask=None) -> float:
        """The loss alone (no gradients; the lm_head on the counted positions only)."""
        xf, cache = self._forward(input_ids, attention_mask, head=False)
        labels = self._labels(labels, xf.shape[:2], cache["virtual_tokens"])
        return self.ops.lm_head_loss(xf, self.params["transformer.wte.weight"], shift_labels(labels),
                                     grads=False)[0]

    def _labels(self, labels, shape, P: int):
        """labels (B, T), checked -> (B, P + T) with -100 for the P virtual tokens."""
        V, (B, PT) = self.config.vocab_size, shape
        if not P:
            return check_labels(labels, shape, V)
        lab = _as_int_array(labels, "labels")
        if lab.shape != (B, PT - P):
            check_labels(lab, (B, PT - P), V)                           # says what is wrong
        lab = np.concatenate([np.full((B, P), IGNORE_INDEX), lab], axis=1)
        return check_labels(lab, lab.shape, V)
