"""How peft starts a LoRA adapter, and how it combines trained ones — in NumPy.

The initialisations (peft 0.21.2, ``LoraLayer.update_layer``), for W (in, out) in
Conv1D layout, A (r, in) = lora_A.weight, B (out, r) = lora_B.weight, s = α/r (α/√r
with rsLoRA), and the layer's update s·(B A)ᵀ:

    True        LoRA (Hu et al. 2021, arXiv:2106.09685): A ~ U(±1/√in) (nn.Linear's own
                kaiming_uniform(a=√5)), B = 0, so training starts at the base model.
    False       nothing is reset: A and B both keep nn.Linear's default, A ~ U(±1/√in),
                B ~ U(±1/√r). The update is NOT zero (peft: for tests and debugging).
    "gaussian"  A ~ N(0, (1/r)²) (std 1/r, not 1/√r), B = 0.
    "pissa"     PiSSA (Meng et al. 2024, arXiv:2404.02948): the top-r singular triplets
                of W go into the adapter, s·B A = V_r S_r U_rᵀ, and W keeps the residual.
    "pissa_niter_K"  the same with a randomised SVD (Halko et al. 2009), K power steps.
    "olora"     OLoRA (Büyükakyüz 2024, arXiv:2406.01775): Wᵀ = Q R; B = Q_r, A = R_r
                (orthonormal B), and W keeps W − s·(B A)ᵀ.

PiSSA and OLoRA move part of W into the adapter, so they return the new base weight;
the model's output at step 0 is unchanged. peft runs both in float32 (it refuses
float64); here they run in the dtype of W. On GPT-2's Conv1D, peft's OLoRA forgets
``fan_in_fan_out`` and builds A (r, out), B (in, r), which cannot run; here OLoRA
factors Wᵀ, as peft does for nn.Linear (the tests check against that).

``combine_lora`` is the per-layer math of ``LoraModel.add_weighted_adapter``: the new
adapter gets r = lora_alpha = new rank, i.e. scaling 1, and carries each source's
weight w_i and scaling s_i inside A (or B A).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import ConfigError
from .lora import lora_scaling
from .lora_config import INITS as SUPPORTED_INITS  # the one list, LoraConfig's

SUPPORTED_COMBINATIONS = ("linear", "cat", "svd")
# peft's other merges prune by magnitude (ties, magnitude_prune) or by random masks
# (dare_*), a different code path; minipeft does not implement them.
_PEFT_ONLY_COMBINATIONS = ("ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
                           "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd")


def kaiming_uniform(rng, shape, dtype):
    """nn.Linear's weight init, kaiming_uniform(a=√5): gain √(2/(1+a²)) = √(1/3),
    bound = gain·√(3/fan_in) = 1/√fan_in, with fan_in = shape[1]."""
    bound = 1.0 / math.sqrt(shape[1])
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def lora_init(init_lora_weights, weight, r, lora_alpha, use_rslora=False, rng=None):
    """(A (r, in), B (out, r), new_weight (in, out) or None) as peft's update_layer leaves them.

    weight: the Conv1D base weight W (in, out), float32 or float64; outputs keep its dtype.
    new_weight is None unless the init moves part of W into the adapter (PiSSA, OLoRA).
    """
    if not (isinstance(r, (int, np.integer)) and r > 0):
        raise ConfigError(f"LoRA rank r must be a positive integer, got {r!r}")
    weight = np.asarray(weight)
    n_in, n_out = weight.shape
    dtype = weight.dtype
    s = lora_scaling(lora_alpha, r, use_rslora)
    rng = np.random.default_rng() if rng is None else rng
    init = init_lora_weights

    if isinstance(init, str) and init.startswith("pissa"):       # peft tests these first
        return _pissa_init(init, weight, r, s, rng)
    if isinstance(init, str) and init.lower() == "olora":
        return _olora_init(weight, r, s)
    if init is False:                  # update_layer skips reset_lora_parameters entirely
        return (kaiming_uniform(rng, (r, n_in), dtype),           # (r, in)
                kaiming_uniform(rng, (n_out, r), dtype), None)    # (out, r), fan_in = r
    if init is True:
        return kaiming_uniform(rng, (r, n_in), dtype), np.zeros((n_out, r), dtype), None
    if isinstance(init, str) and init.lower() == "gaussian":
        A = (rng.standard_normal((r, n_in)) / r).astype(dtype)   # (r, in), std 1/r
        return A, np.zeros((n_out, r), dtype), None
    raise ConfigError(
        f"init_lora_weights={init!r} is not supported by minipeft; use one of "
        f"{', '.join(map(repr, SUPPORTED_INITS))} (K a whole number). peft's data- or "
        f"quantisation-driven inits (loftq, eva, corda, lora_ga, orthogonal, mica) are not "
        f"implemented.")


def _check_rank_fits(weight, r, what):
    if r > min(weight.shape):
        raise ConfigError(f"{what} needs r <= min(in, out) = {min(weight.shape)}, got r={r}: "
                          f"W {weight.shape} has only that many singular directions")


def _pissa_init(init, weight, r, s, rng):
    """PiSSA: the adapter holds the principal part of W, the base keeps the rest.

    peft works in nn.Linear layout, Wᵀ = V S Uᵀ (out, in); it divides S_r by s so that
    s·B A is exactly the rank-r truncation V_r S_r U_rᵀ, and splits √S_r between A and B.
    """
    _check_rank_fits(weight, r, "PiSSA")
    W = weight.T                                             # (out, in) nn.Linear layout
    if init == "pissa":
        V, S, Uh = np.linalg.svd(W, full_matrices=False)     # (out, k) (k,) (k, in)
        Vr, Sr, Uhr = V[:, :r], S[:r] / s, Uh[:r]
    else:
        head, _, niter = init.partition("_niter_")
        if head != "pissa" or not (niter.isascii() and niter.isdigit()):
            raise ConfigError(f"init_lora_weights should be 'pissa' or 'pissa_niter_K' with K a "
                              f"whole number of power iterations, got {init!r}")
        Vr, Sr, Ur = _svd_lowrank(W, r, int(niter), rng)     # (out, r) (r,) (in, r)
        Sr, Uhr = Sr / s, Ur.T
    A = np.sqrt(Sr)[:, None] * Uhr                           # (r, in)  = diag(√S_r) U_rᵀ
    B = Vr * np.sqrt(Sr)                                     # (out, r) = V_r diag(√S_r)
    new_weight = (W - s * (B @ A)).T                         # (in, out) residual
    return A, B, new_weight


def _svd_lowrank(M, q, niter, rng):
    """torch.svd_lowrank with numpy's rng: M (m, n) ≈ U diag(S) Vᵀ, U (m, q), V (n, q).

    Halko et al. 2009: a Gaussian sketch finds the range (Alg. 4.4, `niter` power steps
    re-orthonormalised by QR), then the small projected matrix gets an exact SVD (Alg. 5.1).
    """
    tall = M.shape[0] >= M.shape[1]
    X = M if tall else M.T                                   # (m, n) with m >= n
    Q = np.linalg.qr(X @ rng.standard_normal((X.shape[1], q)).astype(M.dtype))[0]  # (m, q)
    for _ in range(niter):
        Q = np.linalg.qr(X.T @ Q)[0]                         # (n, q)
        Q = np.linalg.qr(X @ Q)[0]                           # (m, q)
    U, S, Vh = np.linalg.svd(Q.T @ X, full_matrices=False)   # (q, q) (q,) (q, n)
    U, V = Q @ U, Vh.T
    return (U, S, V) if tall else (V, S, U)


def _olora_init(weight, r, s):
    """OLoRA: Wᵀ = Q R (out, in); B = Q_r has orthonormal columns, A = R_r is upper
    triangular, and the base keeps W − s·(B A)ᵀ so the output starts unchanged."""
    _check_rank_fits(weight, r, "OLoRA")
    W = weight.T                                             # (out, in) nn.Linear layout
    Q, R = np.linalg.qr(W)                                   # (out, k) (k, in), reduced
    B, A = Q[:, :r], R[:r]                                   # (out, r) (r, in)
    return A, B, (W - s * (B @ A)).T                         # new base (in, out)


def check_combination(adapters, weights, svd_rank=None, svd_clamp=None) -> None:
    """add_weighted_adapter's arguments, before anything is combined: lists of adapter
    names and of finite weights, one per adapter; svd_rank > 0 or None; svd_clamp in [0, 1]."""
    if isinstance(adapters, str) or not isinstance(adapters, (list, tuple)) or not adapters \
            or not isinstance(weights, (list, tuple)):
        raise ConfigError(f"add_weighted_adapter takes lists: adapters=['a', 'b'], weights=[0.5, "
                          f"0.5]; got adapters={adapters!r}, weights={weights!r}.")
    if svd_rank is not None and (isinstance(svd_rank, bool) or not isinstance(
            svd_rank, numbers.Integral) or svd_rank <= 0):
        raise ConfigError(f"add_weighted_adapter svd_rank must be a positive integer or None "
                          f"(None: the largest r of the adapters), got {svd_rank!r}.")
    if svd_clamp is not None and (isinstance(svd_clamp, bool) or not isinstance(
            svd_clamp, numbers.Real) or not 0 <= svd_clamp <= 1):
        raise ConfigError(f"add_weighted_adapter svd_clamp is a quantile in [0, 1] or None, "
                          f"got {svd_clamp!r}.")
    if len(weights) != len(adapters):
        raise ConfigError(f"add_weighted_adapter got {len(adapters)} adapters but "
                          f"{len(weights)} weights.")
    bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, numbers.Real)
           or not math.isfinite(w)]
    if bad:
        raise ConfigError(f"add_weighted_adapter weights must be finite numbers, got {bad[0]!r}.")


def combine_lora(adapters, weights, combination_type="svd", svd_rank=None, svd_clamp=None,
                 svd_full_matrices=True, fan_in_fan_out=True):
    """One layer of peft's add_weighted_adapter -> (A (r', in), B (out, r'), r', lora_alpha').

    adapters: [(A (r_i, in), B (out, r_i), scaling s_i, r_i, lora_alpha_i)], weights: [w_i]
    (lora_alpha_i only matters through s_i).
      linear  A' = Σ sign(w_i s_i) √|w_i s_i| A_i,  B' = Σ √|w_i s_i| B_i   (equal r_i; not
              Σ w_i s_i B_i A_i: the cross terms B_i A_j remain)
      cat     A' = [w_i s_i A_i] stacked, B' = [B_i] side by side: B'A' = Σ w_i s_i B_i A_i
      svd     Σ w_i s_i B_i A_i = U S Vᵀ, truncated to r' = svd_rank or max r_i:
              B' = U S, A' = Vᵀ
    The new adapter has r' = lora_alpha' = its rank, so scaling 1 (peft copies the first
    adapter's config: with use_rslora the scaling becomes r'/√r' = √r').
    fan_in_fan_out only undoes the transpose of peft's get_delta_weight; it does not
    change the result for A, B in peft's layout.
    """
    if not adapters or len(adapters) != len(weights):
        raise ConfigError(f"combine_lora needs one weight per adapter, got {len(adapters)} "
                          f"adapter(s) and {len(weights)} weight(s)")
    if len(adapters) == 1:                          # peft: one adapter can only be scaled
        combination_type = "linear"
    ranks = [int(a[3]) for a in adapters]
    if combination_type == "linear":
        if len(set(ranks)) != 1:
            raise ConfigError(f"combination_type='linear' adds the A's and the B's, so all "
                              f"adapters must have the same r; got r={ranks}. Use 'cat' or 'svd'.")
        new_rank = ranks[0]
    elif combination_type == "cat":
        new_rank = sum(ranks)
    elif combination_type == "svd":
        new_rank = svd_rank or max(ranks)
    elif combination_type in _PEFT_ONLY_COMBINATIONS:
        raise ConfigError(f"combination_type={combination_type!r} (pruning merges) is not "
                          f"implemented in minipeft; use one of {SUPPORTED_COMBINATIONS}")
    else:
        raise ConfigError(f"invalid combination_type={combination_type!r}; "
                          f"use one of {SUPPORTED_COMBINATIONS}")

    As = [np.asarray(a[0]) for a in adapters]       # (r_i, in)
    Bs = [np.asarray(a[1]) for a in adapters]       # (out, r_i)
    ss = [float(a[2]) for a in adapters]
    if combination_type == "cat":                   # weight and scaling go into A
        A = np.concatenate([A_i * w * s for A_i, w, s in zip(As, weights, ss)], axis=0)
        B = np.concatenate(Bs, axis=1)              # (r', in) (out, r')
        return A, B, new_rank, new_rank

    # peft holds these coefficients in torch.tensor(list of floats): float32, even for
    # float64 adapters. Round the same way so that float64 results agree to round-off.
    if combination_type == "linear":
        ws = [w * s for w, s in zip(weights, ss)]
        cA = np.asarray([math.sqrt(abs(x)) * (1 if x >= 0 else -1) for x in ws], np.float32)
        cB = np.asarray([math.sqrt(abs(x)) for x in ws], np.float32)
        A = np.sum(np.stack(As) * cA[:, None, None], axis=0)                   # (r, in)
        B = np.sum(np.stack(Bs) * cB[:, None, None], axis=0)                   # (out, r)
        return A, B, new_rank, new_rank

    deltas = np.stack([(B_i @ A_i) * s for A_i, B_i, s in zip(As, Bs, ss)])  # (n, out, in)
    delta = np.sum(deltas * np.asarray(weights, np.float32)[:, None, None], axis=0)
    _check_rank_fits(delta, new_rank, "combination_type='svd'")
    U, S, Vh = np.linalg.svd(delta, full_matrices=svd_full_matrices)  # (out, ·) (k,) (·, in)
    B = U[:, :new_rank] * S[:new_rank]              # (out, r') = U_r' diag(S_r')
    A = Vh[:new_rank]                               # (r', in)
    if svd_clamp is not None:
        A, B = _clamp_factors(A, B, svd_clamp)
    return A, B, new_rank, new_rank


def combine_adapters(loras, configs, weights, combination_type="svd", **svd):
    """add_weighted_adapter over whole adapters: ``loras`` [{module: {tensor: array}}] with
    their ``configs`` -> ({module: {"lora_A.weight", "lora_B.weight"}}, r', lora_alpha'),
    combine_lora on every module any of them adapts."""
    if any(c.use_dora or c.enable_lora is not None for c in configs):
        raise ConfigError("add_weighted_adapter combines plain LoRA adapters (no DoRA, no q/k/v slices).")
    combined, ranks = {}, []
    for key in sorted({k for lora in loras for k in lora}):
        parts = [(lora[key]["lora_A.weight"], lora[key]["lora_B.weight"], c.scaling, c.r, c.lora_alpha)
                 for lora, c in zip(loras, configs) if key in lora]
        w = [wt for lora, wt in zip(loras, weights) if key in lora]
        A, B, r_new, alpha_new = combine_lora(parts, w, combination_type, **svd)
        combined[key] = {"lora_A.weight": A, "lora_B.weight": B}
        ranks.append(r_new)
    if len(set(ranks)) > 1:
        raise ConfigError("add_weighted_adapter: these adapters target different modules, so the "
                          "combined rank would differ between layers; combine adapters with the "
                          "same target_modules.")
    return combined, r_new, alpha_new


def _clamp_factors(A, B, quantile):
    """peft's svd_clamp: clip A and B to ±(the quantile of all their entries). The cut
    depends on the signs the SVD gave the singular vectors, not only on B A."""
    hi = np.quantile(np.concatenate([B.ravel(), A.ravel()]), quantile)
    return np.clip(A, -hi, hi), np.clip(B, -hi, hi)
