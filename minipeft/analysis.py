"""What the adapters learned, measured as the papers measure it.

Every analysis returns NumPy arrays (so a test, or a student, can check the numbers)
and has a ``plot_*`` twin that returns a matplotlib ``Figure``, drawn on its own Agg
canvas: nothing here touches pyplot or changes a notebook's backend. Weights are in
GPT-2's Conv1D layout, ``W (in, out)``, as everywhere in minipeft.

LoRA (Hu et al. 2021, arXiv:2106.09685), §7 "Understanding the low-rank updates":

    ΔW = s · (B A)ᵀ                                   (in, out), s = α/r (rsLoRA α/√r)
    σ(ΔW), effective rank = exp(H(σ/Σσ))              H: Shannon entropy (Roy & Vetterli 2007)
    φ(A1, A2, i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F / min(i, j)   U: right-singular vectors of A (r, in)
    amplification  = ‖ΔW‖_F / ‖Uᵀ W V‖_F               U, V: top-r left/right singular vectors of ΔW

    φ is 1 when one subspace contains the other and 0 when they are orthogonal (§7.2,
    Fig. 3). The amplification (§7.3, Table 7) asks how strongly ΔW magnifies the
    directions of W it touches: ‖UᵀWV‖_F is small when ΔW points where W is weak.

DoRA (Liu et al. 2024, arXiv:2402.09353), §3 "Pattern analysis of LoRA and FT", eq. 5-6,
with W = m · V / ‖V‖_c decomposed per output column (the norm over ``in``, as the
paper's code and peft do; k = number of outputs):

    ΔM_t = Σ_n |m_t,n − m_0,n| / k                    m_n = ‖W[:, n]‖
    ΔD_t = Σ_n (1 − cos(W_t[:, n], W_0[:, n])) / k

    Fig. 2 plots ΔD (x) against ΔM (y) per layer at several training steps: full
    fine-tuning and DoRA show a negative slope, LoRA a positive one.

Prefix tuning (Li & Liang 2021, arXiv:2101.00190): the share of attention each layer
and head gives to the P prefix positions, Σ_{j<P} p[b, h, t, j], averaged over the
real tokens t of a batch (p: the softmax probabilities over prefix + causal keys).

IA3 (Liu et al. 2022, arXiv:2205.05638): the learned vectors l that rescale
activations (l = 1 is the base model), per module and layer.
"""
from __future__ import annotations

import math
import re

import numpy as np
from matplotlib.colors import TwoSlopeNorm

from .errors import ConfigError, InputError
from .peft import lora as twin
from .train.plots import new_figure

MODULES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
PARTS = ("q", "k", "v")
_LAYER = re.compile(r"transformer\.h\.(\d+)\.(.+)$")


# ====================================================================== helpers
def _new_figure(width: float, height: float):
    """The project's Figure on its own Agg canvas (train.plots.new_figure: savefig works,
    pyplot and the backend are untouched), laid out by matplotlib's constrained layout."""
    fig = new_figure(width, height)
    fig.set_layout_engine("constrained")
    return fig


def _matrix(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.size == 0 or not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{name} must be a non-empty 2-D numeric array, got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name} holds NaN or inf; analyse a model whose training did not diverge.")
    return a.astype(np.float64)


def _columns(key: str, part: str | None, n_embd: int) -> slice:
    """The output columns of ``part`` ("q", "k", "v" of c_attn) or all of them."""
    if part is None:
        return slice(None)
    if part not in PARTS or not key.endswith("attn.c_attn"):
        raise ConfigError(f"part={part!r}: a part is 'q', 'k' or 'v' of attn.c_attn (or None for "
                          f"the whole layer); module {key!r}.")
    j = PARTS.index(part)
    return slice(j * n_embd, (j + 1) * n_embd)


def _layer_of(key: str) -> int:
    m = _LAYER.match(key)
    return int(m.group(1)) if m else -1


def _lora_adapter(model, adapter_name):
    if not hasattr(model, "lora"):
        raise ConfigError(f"this analysis needs a LoRA/DoRA model (get_peft_model with a LoraConfig), "
                          f"got {type(model).__name__}.")
    name = adapter_name or model.active_adapter
    if name not in model.lora:
        raise ConfigError(f"no adapter named {name!r}; this model has {sorted(model.lora)}.")
    return name


# ====================================================================== LoRA §7.2: subspaces
def right_singular_vectors(A) -> np.ndarray:
    """A (r, in) -> U (in, r'): the right-singular vectors of A, by decreasing singular value
    (r' = min(r, in)). They span the rows of A, the input directions LoRA reads."""
    A = _matrix(A, "A")
    _, _, vt = np.linalg.svd(A, full_matrices=False)
    return vt.T


def subspace_similarity(A1, A2, i: int, j: int) -> float:
    """φ(A1, A2, i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F / min(i, j), in [0, 1] (LoRA paper eq. 4).

    A1 (r1, in), A2 (r2, in): two LoRA ``lora_A.weight`` matrices of the same layer, e.g.
    r = 8 and r = 64 trained on the same task. U: their right-singular vectors. 1 means the
    top-i and top-j directions overlap fully (one contains the other), 0 none. Symmetric:
    φ(A1, A2, i, j) = φ(A2, A1, j, i)."""
    U1, U2 = right_singular_vectors(A1), right_singular_vectors(A2)
    if U1.shape[0] != U2.shape[0]:
        raise InputError(f"A1 and A2 must read the same input size: A1 is (r1, {U1.shape[0]}), "
                         f"A2 is (r2, {U2.shape[0]}).")
    for name, k, U in (("i", i, U1), ("j", j, U2)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= U.shape[1]:
            raise InputError(f"{name}={k!r} must be an integer in 1..{U.shape[1]} (the rank of "
                             f"A{1 if name == 'i' else 2}).")
    M = U1[:, :i].T @ U2[:, :j]                       # (i, j) cosines between the two bases
    return float(np.sum(M * M) / min(i, j))


def subspace_similarity_grid(A1, A2, max_i: int | None = None, max_j: int | None = None) -> np.ndarray:
    """grid[i-1, j-1] = φ(A1, A2, i, j) for i = 1..max_i, j = 1..max_j (the paper's Fig. 3)."""
    U1, U2 = right_singular_vectors(A1), right_singular_vectors(A2)
    max_i = U1.shape[1] if max_i is None else max_i
    max_j = U2.shape[1] if max_j is None else max_j
    subspace_similarity(A1, A2, max_i, max_j)         # checks shapes and bounds
    M2 = (U1[:, :max_i].T @ U2[:, :max_j]) ** 2       # (max_i, max_j)
    cum = M2.cumsum(axis=0).cumsum(axis=1)            # cum[i-1, j-1] = ‖U1ᵢᵀ U2ⱼ‖²_F
    i = np.arange(1, max_i + 1)[:, None]
    j = np.arange(1, max_j + 1)[None, :]
    return cum / np.minimum(i, j)


def plot_subspace_similarity(A1, A2, max_i=None, max_j=None, labels=("A1", "A2"), title=None):
    """Heat map of ``subspace_similarity_grid``: i down, j across, as the paper draws it."""
    grid = subspace_similarity_grid(A1, A2, max_i, max_j)
    fig = _new_figure(1.2 + 0.35 * min(grid.shape[1], 16), 1.0 + 0.35 * min(grid.shape[0], 16))
    ax = fig.add_subplot()
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto",
                   extent=(0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5))
    ax.set_xlabel(f"j (top-j of {labels[1]})")
    ax.set_ylabel(f"i (top-i of {labels[0]})")
    ax.set_title(title or f"φ({labels[0]}, {labels[1]}, i, j)")
    fig.colorbar(im, ax=ax)
    return fig


# ====================================================================== LoRA §7: ΔW and its spectrum
def lora_delta_weights(model, adapter_name: str | None = None, part: str | None = None) -> dict:
    """{module: ΔW (in, out)} of a LoRA adapter: s · (BA)ᵀ on each LoRA'd block of columns,
    or for DoRA the merged weight minus W0 (m ⊙ (W0 + s(BA)ᵀ) / ‖·‖_c − W0). ``part``:
    only the q, k or v columns of c_attn (the paper studies W_q and W_v)."""
    name = _lora_adapter(model, adapter_name)
    cfg, C = model.peft_config[name], model.config.n_embd
    if model.merged:
        raise ConfigError("the adapter is merged into the weights; unmerge_adapter() first, so "
                          "that W0 and ΔW are apart.")
    out = {}
    for key, t in model.lora[name].items():
        W0 = model.params[f"{key}.weight"]
        dW = np.zeros(W0.shape, dtype=np.float64)
        for prefix, cols in _lora_parts(t, C):
            A, B = t[f"{prefix}lora_A.weight"], t[f"{prefix}lora_B.weight"]
            merged, _ = twin.merge_weight(W0[:, cols].astype(np.float64), A.astype(np.float64),
                                          B.astype(np.float64), cfg.scaling,
                                          t.get("lora_magnitude_vector"))
            dW[:, cols] = merged - W0[:, cols]
        if part is not None:
            if not key.endswith("attn.c_attn"):
                continue
            dW = dW[:, _columns(key, part, C)]
        out[key] = dW
    if not out:
        raise ConfigError(f"part={part!r} needs LoRA on attn.c_attn; this adapter targets "
                          f"{sorted(model.lora[name])}.")
    return out


def _lora_parts(tensors: dict, C: int):
    """(name prefix, output columns) of each LoRA of one module, read from its tensors'
    names: "lora_A.weight" covers the whole layer, "q.lora_A.weight" (enable_lora) the q
    columns of c_attn, and so on."""
    parts = []
    for prefix in ("", *(f"{p}." for p in PARTS)):
        if f"{prefix}lora_A.weight" in tensors:
            parts.append((prefix, slice(None) if not prefix else _columns("attn.c_attn", prefix[0], C)))
    return parts


def weight_deltas(model, base, modules=MODULES, part: str | None = None) -> dict:
    """{module: W − W0} between a fully fine-tuned GPT2 (``model``) and its base, for the
    Conv1D layers named in ``modules`` (e.g. "attn.c_attn"); ``part`` as lora_delta_weights."""
    out = {}
    for i in range(model.config.n_layer):
        for m in modules:
            key = f"transformer.h.{i}.{m}"
            if f"{key}.weight" not in model.params:
                raise ConfigError(f"module {m!r} is not a Conv1D of GPT-2; choose from {MODULES}.")
            if part is not None and m != "attn.c_attn":
                continue
            cols = _columns(key, part, model.config.n_embd)
            out[key] = (model.params[f"{key}.weight"].astype(np.float64)
                        - base.params[f"{key}.weight"].astype(np.float64))[:, cols]
    return out


def effective_rank(s, eps: float = 0.0) -> float:
    """exp(H(p)), p = σ / Σσ (Roy & Vetterli 2007): 1 for one non-zero singular value,
    n for n equal ones, in between otherwise. Singular values ≤ eps are left out."""
    s = np.asarray(s, dtype=np.float64)
    s = s[s > eps]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(math.exp(-np.sum(p * np.log(p))))


def delta_w_spectrum(deltas: dict, rtol: float = 1e-6) -> dict:
    """The singular values of every ΔW of ``deltas`` ({module: ΔW}, e.g. lora_delta_weights).

    -> {"modules": [names], "layer": (M,) ints, "singular_values": (M, k) descending
    (rows padded with NaN where a ΔW is smaller), "effective_rank": (M,), "rank": (M,)
    the count of σ > rtol · σ_max (a LoRA of rank r has rank ≤ r)}."""
    if not deltas:
        raise InputError("delta_w_spectrum needs at least one ΔW ({module: array}).")
    names = list(deltas)
    svs = [np.linalg.svd(_matrix(deltas[k], k), compute_uv=False) for k in names]
    k = max(len(s) for s in svs)
    table = np.full((len(names), k), np.nan)
    for row, s in zip(table, svs):
        row[:len(s)] = s
    tol = [rtol * s[0] if s.size and s[0] > 0 else 0.0 for s in svs]
    return {"modules": names, "layer": np.array([_layer_of(n) for n in names]),
            "singular_values": table,
            "effective_rank": np.array([effective_rank(s, eps=t) for s, t in zip(svs, tol)]),
            "rank": np.array([int(np.sum(s > t)) for s, t in zip(svs, tol)])}


def plot_delta_w_spectrum(spectrum: dict, top: int | None = 32, title: str = "Singular values of ΔW"):
    """The singular values of each ΔW (log scale), one line per module, effective rank in the legend."""
    fig = _new_figure(6.5, 3.8)
    ax = fig.add_subplot()
    S = spectrum["singular_values"]
    n = S.shape[1] if top is None else min(top, S.shape[1])
    for name, s, er in zip(spectrum["modules"], S, spectrum["effective_rank"]):
        s = s[:n]
        ax.plot(np.arange(1, len(s) + 1), np.where(s > 0, s, np.nan), "o-", ms=3,
                label=f"{name.removeprefix('transformer.')} (eff. rank {er:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("index of the singular value")
    ax.set_ylabel("σ")
    ax.set_title(title)
    ax.legend(fontsize=6, ncol=1 + len(spectrum["modules"]) // 8)
    return fig


# ====================================================================== LoRA §7.3: amplification
def amplification(W, dW, r: int | None = None, seed: int = 0) -> dict:
    """How much ΔW amplifies the directions of W it shares (LoRA paper Table 7).

    U, V: the top-r left/right singular vectors of ΔW (r: its rank by default). Returns
    {"norm_W": ‖W‖_F, "norm_dW": ‖ΔW‖_F, "proj_dW": ‖UᵀWV‖_F, "proj_W": the same with the
    top-r singular vectors of W, "proj_random": with random orthonormal U, V, "factor":
    ‖ΔW‖_F / ‖UᵀWV‖_F}. The paper finds proj_dW far below proj_W (ΔW does not repeat W's
    top directions) but above proj_random, and a factor of ~20 for r = 4."""
    W, dW = _matrix(W, "W"), _matrix(dW, "dW")
    if W.shape != dW.shape:
        raise InputError(f"W {W.shape} and ΔW {dW.shape} must have the same shape.")
    Ud, sd, Vdt = np.linalg.svd(dW, full_matrices=False)
    if r is None:
        r = max(1, int(np.sum(sd > 1e-6 * sd[0]))) if sd[0] > 0 else 1
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 1 <= r <= len(sd):
        raise InputError(f"r={r!r} must be an integer in 1..{len(sd)}.")
    Uw, _, Vwt = np.linalg.svd(W, full_matrices=False)
    rng = np.random.default_rng(seed)
    Ur = np.linalg.qr(rng.standard_normal((W.shape[0], r)))[0]
    Vr = np.linalg.qr(rng.standard_normal((W.shape[1], r)))[0]

    def proj(U, V):
        return float(np.linalg.norm(U.T @ W @ V))      # ‖Uᵀ W V‖_F, (r, r)
    p = proj(Ud[:, :r], Vdt[:r].T)
    return {"r": r, "norm_W": float(np.linalg.norm(W)), "norm_dW": float(np.linalg.norm(dW)),
            "proj_dW": p, "proj_W": proj(Uw[:, :r], Vwt[:r].T), "proj_random": proj(Ur, Vr),
            "factor": float(np.linalg.norm(dW)) / p if p > 0 else float("inf")}


def amplification_table(model, base=None, module: str = "attn.c_attn", part: str | None = "q",
                        r: int | None = None, seed: int = 0) -> dict:
    """``amplification`` for ``module`` (``part``) in every layer: LoRA/DoRA models use their
    ΔW, a fully fine-tuned GPT2 needs ``base`` (ΔW = W − W0). -> {"layer": (L,), and each
    key of ``amplification`` as an (L,) array}."""
    if base is None:
        deltas = {k: v for k, v in lora_delta_weights(model, part=part).items() if k.endswith(module)}
        params = model.params
    else:
        deltas = weight_deltas(model, base, modules=(module,), part=part)
        params = base.params
    if not deltas:
        raise ConfigError(f"no ΔW for module {module!r}; this adapter does not target it.")
    rows = []
    for key, dW in deltas.items():
        W = params[f"{key}.weight"][:, _columns(key, part, model.config.n_embd)]
        rows.append(amplification(W, dW, r=r, seed=seed))
    out = {"layer": np.array([_layer_of(k) for k in deltas])}
    for k in rows[0]:
        out[k] = np.array([row[k] for row in rows])
    return out


def plot_amplification(table: dict, title: str = "How ΔW amplifies W (LoRA paper Table 7)"):
    """Per layer: ‖UᵀWV‖_F for the top directions of ΔW, of W and random ones, and ‖ΔW‖_F."""
    fig = _new_figure(6.5, 3.5)
    ax = fig.add_subplot()
    x = np.arange(len(table["layer"]))
    w = 0.2
    for k, (key, label) in enumerate((("proj_dW", "‖UᵀWV‖, U,V of ΔW"), ("proj_W", "‖UᵀWV‖, U,V of W"),
                                      ("proj_random", "‖UᵀWV‖, random U,V"), ("norm_dW", "‖ΔW‖"))):
        ax.bar(x + (k - 1.5) * w, table[key], w, label=label)
    for xi, f in zip(x, table["factor"]):
        ax.annotate(f"×{f:.1f}", (xi, 0), xytext=(0, -22), textcoords="offset points",
                    ha="center", fontsize=7)
    ax.set_xticks(x, [f"layer {i}" for i in table["layer"]])
    ax.set_ylabel("Frobenius norm")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


# ====================================================================== DoRA Fig. 2
def magnitude_direction_change(W0, W) -> tuple[float, float]:
    """(ΔM, ΔD) of W against W0, both (in, out), per output column (DoRA eq. 5-6):
    ΔM = mean_n |‖W[:, n]‖ − ‖W0[:, n]‖|, ΔD = mean_n (1 − cos(W[:, n], W0[:, n]))."""
    W0, W = _matrix(W0, "W0"), _matrix(W, "W")
    if W0.shape != W.shape:
        raise InputError(f"W0 {W0.shape} and W {W.shape} must have the same shape.")
    m0, m = np.linalg.norm(W0, axis=0), np.linalg.norm(W, axis=0)          # (out,)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.sum(W0 * W, axis=0) / (m0 * m)
    cos = np.where((m0 == 0) | (m == 0), 1.0, cos)
    return float(np.mean(np.abs(m - m0))), float(np.mean(1.0 - cos))


def effective_weights(model, module: str = "attn.c_attn", part: str | None = "q") -> dict:
    """{layer key: the weight the model computes with} for ``module`` (``part``) of every
    layer: W for a GPT2 (full fine-tuning), W0 + s(BA)ᵀ for LoRA, DoRA's merged weight."""
    C = model.config.n_embd
    deltas = {}
    if hasattr(model, "lora"):
        deltas = lora_delta_weights(model, part=None)
    out = {}
    for i in range(model.config.n_layer):
        key = f"transformer.h.{i}.{module}"
        if f"{key}.weight" not in model.params:
            raise ConfigError(f"module {module!r} is not a Conv1D of GPT-2; choose from {MODULES}.")
        W = model.params[f"{key}.weight"].astype(np.float64)
        if key in deltas:
            W = W + deltas[key]
        out[key] = W[:, _columns(key, part, C)]
    return out


def track_magnitude_direction(trainer, steps, module: str = "attn.c_attn", part: str | None = "q") -> dict:
    """Train with ``trainer`` (a minipeft Trainer, at step 0) and record DoRA's ΔM and ΔD per
    layer at each step of ``steps``, against the weights at step 0 (W0).

    -> {"steps": (S,), "layer": (L,), "dM": (S, L), "dD": (S, L)}. The trainer is left at
    the last step; the model stays in training mode's counterpart (eval) afterwards."""
    steps = sorted(set(int(s) for s in steps))
    if not steps or steps[0] < 1:
        raise InputError(f"steps must be positive step numbers, got {steps!r}.")
    if trainer.step != 0:
        raise InputError(f"the trainer is at step {trainer.step}; give a fresh one (step 0), "
                         "whose weights are W0.")
    W0 = effective_weights(trainer.model, module, part)
    dM, dD = np.zeros((len(steps), len(W0))), np.zeros((len(steps), len(W0)))
    try:
        for s_i, target in enumerate(steps):
            while trainer.step < target:
                trainer.training_step()
            Wt = effective_weights(trainer.model, module, part)
            for l_i, key in enumerate(W0):
                dM[s_i, l_i], dD[s_i, l_i] = magnitude_direction_change(W0[key], Wt[key])
    finally:
        if hasattr(trainer.model, "eval"):
            trainer.model.eval()
    return {"steps": np.array(steps), "layer": np.array([_layer_of(k) for k in W0]),
            "dM": dM, "dD": dD}


def plot_magnitude_direction(tracks: dict, title: str = "Magnitude vs direction change (DoRA Fig. 2)"):
    """One panel per method ({label: track_magnitude_direction(...)}): ΔD across, ΔM up, a
    marker per layer, a colour per step; the dashed line is each method's least-squares fit."""
    fig = _new_figure(3.2 * len(tracks), 3.3)
    axes = fig.subplots(1, len(tracks), squeeze=False)[0]
    markers = "o^sDvP*Xh<>"
    for ax, (label, t) in zip(axes, tracks.items()):
        S, L = t["dM"].shape
        colours = [f"C{k % 10}" for k in range(S)]
        for s in range(S):
            for l_i in range(L):
                ax.scatter(t["dD"][s, l_i], t["dM"][s, l_i], color=colours[s],
                           marker=markers[l_i % len(markers)], s=18,
                           label=f"step {t['steps'][s]}" if l_i == 0 else None)
        x, y = t["dD"].ravel(), t["dM"].ravel()
        if x.size > 1 and np.ptp(x) > 0:
            a, b = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 10)
            ax.plot(xs, a * xs + b, "k--", lw=0.8)
            ax.set_title(f"{label} (slope {a:+.2g})", fontsize=9)
        else:
            ax.set_title(label, fontsize=9)
        ax.set_xlabel("ΔD (direction)")
        ax.set_ylabel("ΔM (magnitude)")
        ax.ticklabel_format(style="sci", scilimits=(-3, 3))
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return fig


# ====================================================================== prefix tuning
def prefix_attention_share(model, input_ids, attention_mask=None) -> np.ndarray:
    """(L, NH): the share of attention each layer and head gives to the prefix, mean over the
    real tokens of ``input_ids`` (B, T): Σ_{j<P} p[b, h, t, j] with p the attention
    probabilities over the P prefix keys and the causal keys, read from the forward cache."""
    if not hasattr(model, "prefix_output"):
        raise ConfigError(f"prefix_attention_share needs a prefix-tuning model (PrefixTuningConfig), "
                          f"got {type(model).__name__}.")
    P = model.active_peft_config.num_virtual_tokens
    _, cache = model.forward(input_ids, attention_mask)
    ids = np.asarray(input_ids)
    B, T = ids.shape
    real = np.ones((B, T)) if attention_mask is None else np.asarray(attention_mask, dtype=np.float64)
    if real.sum() == 0:
        raise InputError("the attention_mask has no real token to average over.")
    out = np.zeros((model.config.n_layer, model.config.n_head))
    for i, layer in enumerate(cache["layers"]):
        p = layer["attn"][3]                                  # (B, NH, T, P + T)
        share = p[..., :P].sum(axis=-1)                       # (B, NH, T)
        out[i] = np.einsum("bht,bt->h", share, real) / real.sum()
    return out


def plot_prefix_attention_share(share, title: str = "Attention given to the prefix"):
    """Heat map of ``prefix_attention_share``: layers down, heads across, the share in each cell."""
    share = np.asarray(share)
    fig = _new_figure(1.6 + 0.55 * share.shape[1], 1.2 + 0.45 * share.shape[0])
    ax = fig.add_subplot()
    im = ax.imshow(share, vmin=0, vmax=1, cmap="magma", aspect="auto")
    for (i, h), v in np.ndenumerate(share):
        ax.text(h, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="white" if v < 0.6 else "black")
    ax.set_xticks(range(share.shape[1]))
    ax.set_yticks(range(share.shape[0]))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="share of attention")
    return fig


# ====================================================================== IA3
def ia3_vectors(model, adapter_name: str | None = None) -> dict:
    """{label: l (n,)} of an IA3 adapter, label = module (+ ".q"/".k"/".v" for a slice of
    c_attn) and whether it scales the module's "output" or its "input" (feed-forward)."""
    if not hasattr(model, "ia3"):
        raise ConfigError(f"ia3_vectors needs an IA3 model (IA3Config), got {type(model).__name__}.")
    name = adapter_name or model.active_adapter
    if name not in model.ia3:
        raise ConfigError(f"no adapter named {name!r}; this model has {sorted(model.ia3)}.")
    out = {}
    for key, t in model.ia3[name].items():
        kind = "input" if key in model.feedforward[name] else "output"
        for tname, arr in t.items():
            part = tname[:-len("ia3_l")].rstrip(".")
            out[f"{key}{'.' + part if part else ''} ({kind})"] = np.asarray(arr, np.float64).reshape(-1)
    return out


def ia3_summary(model, adapter_name: str | None = None) -> dict:
    """Per vector of ``ia3_vectors``: -> {"labels", "layer", "mean", "std", "min", "max",
    "mean_abs_change" (mean |l − 1|)}, each an array over the vectors."""
    vecs = ia3_vectors(model, adapter_name)
    v = list(vecs.values())
    return {"labels": list(vecs), "layer": np.array([_layer_of(k.split(" ")[0]) for k in vecs]),
            "mean": np.array([x.mean() for x in v]), "std": np.array([x.std() for x in v]),
            "min": np.array([x.min() for x in v]), "max": np.array([x.max() for x in v]),
            "mean_abs_change": np.array([np.abs(x - 1).mean() for x in v])}


def plot_ia3_vectors(model, adapter_name: str | None = None, title: str = "IA3 scaling vectors"):
    """A heat map per kind of vector (layers down, channels across; 1 is white), and a
    histogram of all values per kind."""
    vecs = ia3_vectors(model, adapter_name)
    kinds: dict[str, list] = {}
    for label, v in vecs.items():
        key = label.split(" ")[0]
        kind = _LAYER.match(key).group(2) + " " + label.split(" ")[1]
        kinds.setdefault(kind, []).append((_layer_of(key), v))
    fig = _new_figure(3.3 * (len(kinds) + 1), 3.2)
    axes = fig.subplots(1, len(kinds) + 1, squeeze=False)[0]
    lo = min(v.min() for v in vecs.values())
    hi = max(v.max() for v in vecs.values())
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 1 - 1e-6), vmax=max(hi, 1 + 1e-6))
    im = None
    for ax, (kind, rows) in zip(axes, kinds.items()):
        rows.sort(key=lambda x: x[0])
        im = ax.imshow(np.stack([v for _, v in rows]), aspect="auto", cmap="RdBu_r", norm=norm,
                       interpolation="nearest")
        ax.set_yticks(range(len(rows)), [f"h.{i}" for i, _ in rows])
        ax.set_xlabel("channel")
        ax.set_title(kind, fontsize=9)
        axes[-1].hist(np.concatenate([v for _, v in rows]), bins=40, alpha=0.6, label=kind)
    axes[-1].axvline(1.0, color="k", lw=0.8, ls="--")
    axes[-1].set_xlabel("l")
    axes[-1].set_ylabel("channels")
    axes[-1].legend(fontsize=7)
    axes[-1].set_title("all values", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=list(axes[:-1]), label="l (1 = unchanged)")
    fig.suptitle(title, fontsize=10)
    return fig
