"""minipeft.analysis: the papers' measures on constructed cases and tiny models (no torch).

Tolerances: 1e-12 where the quantity is computed in float64 from exact constructions
(orthonormal bases, float64 models); the ΔW comparison holds two float64 routes to the
same matrix (s·(BA)ᵀ against merge_and_unload − W0), which differ by round-off of W0 + ΔW
(|W0| ~ 1, so ~1e-15 absolute, 1e-10 relative to σ is generous).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from minipeft import GPT2, GPT2Config, IA3Config, LoraConfig, PrefixTuningConfig, analysis, get_peft_model
from minipeft.errors import ConfigError, InputError
from minipeft.io.checkpoint import expected_shapes

CFG = GPT2Config(n_layer=2, n_head=3, n_embd=12, n_positions=16, vocab_size=23)


def tiny_model(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = {k: (0.3 * rng.standard_normal(s) + (1.0 if ".ln_" in k and k.endswith("weight") else 0))
              .astype(dtype) for k, s in expected_shapes(CFG).items()}
    return GPT2(CFG, params)


def peft(config, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(tiny_model(seed), config, seed=seed)


def randomize(pm, seed=1, scale=0.5, offset=None):
    rng = np.random.default_rng(seed)
    for name, a in pm.trainable_parameters().items():
        a[...] = scale * rng.standard_normal(a.shape) + (offset(name) if offset else 0.0)
    return pm


def rows_with_basis(Q, coefficients):
    """A (r, in) whose rows span exactly the columns of Q (in, k) given by ``coefficients``
    (r, k), full rank: its right-singular vectors span the same subspace."""
    return coefficients @ Q.T


# ------------------------------------------------------------------ subspace similarity
def test_subspace_similarity_identical_orthogonal_and_partial():
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.standard_normal((20, 6)))[0]             # 6 orthonormal directions in R^20
    A = rows_with_basis(Q[:, :3], rng.standard_normal((3, 3)))   # span{q0, q1, q2}
    same = rows_with_basis(Q[:, :3], rng.standard_normal((3, 3)))  # another basis of that span
    orth = rows_with_basis(Q[:, 3:6], rng.standard_normal((3, 3)))
    assert analysis.subspace_similarity(A, same, 3, 3) == pytest.approx(1.0, abs=1e-12)
    assert analysis.subspace_similarity(A, orth, 3, 3) == pytest.approx(0.0, abs=1e-12)
    # partial: span{q0, q1} against span{q1, q3} share one of two directions: φ = 1/2
    U1 = rows_with_basis(Q[:, [0, 1]], np.diag([3.0, 2.0]))
    U2 = rows_with_basis(Q[:, [1, 3]], np.diag([3.0, 2.0]))
    assert analysis.subspace_similarity(U1, U2, 2, 2) == pytest.approx(0.5, abs=1e-12)
    # by the singular values, the top-1 of U1 is q0 and of U2 is q1: orthogonal
    assert analysis.subspace_similarity(U1, U2, 1, 1) == pytest.approx(0.0, abs=1e-12)
    # top-1 of U2 (q1) lies in the top-2 of U1: min(i, j) = 1, overlap 1
    assert analysis.subspace_similarity(U1, U2, 2, 1) == pytest.approx(1.0, abs=1e-12)
    # a direction at 60° to the subspace: cos² 60° = 1/4
    tilted = np.cos(np.pi / 3) * Q[:, 0] + np.sin(np.pi / 3) * Q[:, 5]
    assert analysis.subspace_similarity(tilted[None], Q[:, :2].T, 1, 2) == pytest.approx(0.25, abs=1e-12)
    # the formula itself, on random matrices
    A1, A2 = rng.standard_normal((4, 20)), rng.standard_normal((8, 20))
    V1 = np.linalg.svd(A1)[2][:4].T
    V2 = np.linalg.svd(A2)[2][:8].T
    want = np.linalg.norm(V1[:, :3].T @ V2[:, :5]) ** 2 / 3
    assert analysis.subspace_similarity(A1, A2, 3, 5) == pytest.approx(want, abs=1e-12)


def test_subspace_similarity_is_symmetric_and_the_grid_agrees():
    rng = np.random.default_rng(1)
    A1, A2 = rng.standard_normal((4, 16)), rng.standard_normal((7, 16))
    grid = analysis.subspace_similarity_grid(A1, A2)
    assert grid.shape == (4, 7)
    for i in range(1, 5):
        for j in range(1, 8):
            phi = analysis.subspace_similarity(A1, A2, i, j)
            assert phi == pytest.approx(analysis.subspace_similarity(A2, A1, j, i), abs=1e-12)
            assert grid[i - 1, j - 1] == pytest.approx(phi, abs=1e-12)
            assert -1e-12 <= phi <= 1 + 1e-12
    np.testing.assert_allclose(analysis.subspace_similarity_grid(A2, A1), grid.T, atol=1e-12)
    with pytest.raises(InputError, match="i=5"):
        analysis.subspace_similarity(A1, A2, 5, 1)
    with pytest.raises(InputError, match="same input size"):
        analysis.subspace_similarity(A1, rng.standard_normal((3, 9)), 1, 1)
    fig = analysis.plot_subspace_similarity(A1, A2, labels=("r=4", "r=7"))
    assert fig.axes and fig.axes[0].images


# ------------------------------------------------------------------ ΔW spectrum
@pytest.mark.parametrize("extra", [{}, {"use_rslora": True}, {"enable_lora": [True, False, True]}])
def test_delta_w_spectrum_has_rank_r_and_equals_the_merged_difference(extra):
    r = 2
    pm = randomize(peft(LoraConfig(r=r, lora_alpha=3, target_modules="all-linear", **extra)))
    deltas = analysis.lora_delta_weights(pm)
    merged = pm.merge_and_unload()
    spec = analysis.delta_w_spectrum(deltas)
    rank_cap = r * (2 if extra.get("enable_lora") else 1)          # q and v slices: r each, side by side
    for row, key in enumerate(spec["modules"]):
        diff = merged.params[f"{key}.weight"] - pm.params[f"{key}.weight"]
        np.testing.assert_allclose(deltas[key], diff, rtol=0, atol=1e-12)
        s_merged = np.linalg.svd(diff, compute_uv=False)
        s = spec["singular_values"][row]
        s = s[~np.isnan(s)]
        np.testing.assert_allclose(s, s_merged, rtol=0, atol=1e-10 * s_merged[0])
        cap = rank_cap if "c_attn" in key else r                 # slices only on c_attn
        assert np.sum(s > 1e-8 * s[0]) <= cap
        assert spec["rank"][row] == cap                          # random A, B: exactly the cap
        assert 1.0 <= spec["effective_rank"][row] <= cap + 1e-12
    assert analysis.plot_delta_w_spectrum(spec).axes


def test_dora_delta_is_the_merged_difference_and_effective_rank():
    pm = randomize(peft(LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], use_dora=True)),
                   offset=lambda name: 1.0 if "magnitude" in name else 0.0)
    merged = pm.merge_and_unload()
    for key, dW in analysis.lora_delta_weights(pm).items():
        np.testing.assert_allclose(dW, merged.params[f"{key}.weight"] - pm.params[f"{key}.weight"],
                                   rtol=0, atol=1e-12)
    q = analysis.lora_delta_weights(pm, part="q")
    assert all(v.shape == (12, 12) for v in q.values())
    assert analysis.effective_rank([1.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert analysis.effective_rank([2.0, 2.0, 2.0]) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="LoRA"):
        analysis.lora_delta_weights(tiny_model())


def test_amplification_matches_its_definition():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((12, 10))
    dW = rng.standard_normal((12, 2)) @ rng.standard_normal((2, 10))
    out = analysis.amplification(W, dW)
    assert out["r"] == 2
    U, s, Vt = np.linalg.svd(dW)
    assert out["proj_dW"] == pytest.approx(np.linalg.norm(U[:, :2].T @ W @ Vt[:2].T), abs=1e-12)
    assert out["factor"] == pytest.approx(np.linalg.norm(dW) / out["proj_dW"], abs=1e-12)
    Uw, sw, Vwt = np.linalg.svd(W)
    assert out["proj_W"] == pytest.approx(np.sqrt(sw[0] ** 2 + sw[1] ** 2), abs=1e-10)
    assert out["proj_random"] <= out["proj_W"] + 1e-12             # W's own top-r is the largest
    # ΔW along W's top directions: nothing to amplify beyond W itself
    aligned = analysis.amplification(W, Uw[:, :2] @ np.diag(sw[:2]) @ Vwt[:2])
    assert aligned["factor"] == pytest.approx(1.0, abs=1e-10)
    pm = randomize(peft(LoraConfig(r=2, lora_alpha=2, target_modules=["c_attn"])))
    table = analysis.amplification_table(pm, part="q")
    assert table["layer"].tolist() == [0, 1] and np.all(table["factor"] > 0)
    assert analysis.plot_amplification(table).axes


# ------------------------------------------------------------------ DoRA's ΔM, ΔD
def test_magnitude_direction_change():
    rng = np.random.default_rng(4)
    W0 = rng.standard_normal((6, 5))
    dM, dD = analysis.magnitude_direction_change(W0, 3.0 * W0)    # same directions, 3× longer
    assert dD == pytest.approx(0.0, abs=1e-12)
    assert dM == pytest.approx(np.mean(2.0 * np.linalg.norm(W0, axis=0)), abs=1e-12)
    R = np.linalg.qr(rng.standard_normal((6, 6)))[0]               # a rotation keeps every norm
    dM, dD = analysis.magnitude_direction_change(W0, R @ W0)
    assert dM == pytest.approx(0.0, abs=1e-12)
    cos = np.sum(W0 * (R @ W0), axis=0) / np.linalg.norm(W0, axis=0) ** 2
    assert dD == pytest.approx(np.mean(1 - cos), abs=1e-12)


def test_track_magnitude_direction_on_lora_dora_and_full():
    from minipeft.train.trainer import Trainer, TrainingArguments
    rng = np.random.default_rng(5)
    ids = rng.integers(0, CFG.vocab_size, (2, 8))
    tracks = {}
    for label, make in (("FT", lambda: tiny_model()),
                        ("LoRA", lambda: peft(LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"]))),
                        ("DoRA", lambda: peft(LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"],
                                                         use_dora=True)))):
        model = make()
        trainer = Trainer(model, TrainingArguments(learning_rate=1e-2, max_steps=6),
                          lambda step: [(ids, ids, None)], progress=False)
        t = analysis.track_magnitude_direction(trainer, [2, 4, 6], part="q")
        assert t["dM"].shape == t["dD"].shape == (3, 2) and trainer.step == 6
        assert np.all(t["dD"] > 0) and np.all(t["dM"] >= 0)
        tracks[label] = t
    assert len(analysis.plot_magnitude_direction(tracks).axes) == 3


# ------------------------------------------------------------------ prefix attention share
def direct_prefix_share(pm, ids, mask):
    """The share recomputed from the layer inputs: ln_1, c_attn, the prefix keys laid out as
    peft's view(P, 2L, NH, hs), softmax over [prefix; causal] keys, Σ over the prefix."""
    cfg, P = pm.config, pm.active_peft_config.num_virtual_tokens
    NH, C = cfg.n_head, cfg.n_embd
    hs = C // NH
    _, cache = pm.forward(ids, mask)
    prefix = pm.prefix_output()[0].reshape(P, 2 * cfg.n_layer, NH, hs)
    B, T = ids.shape
    out = np.zeros((cfg.n_layer, NH))
    for i in range(cfg.n_layer):
        x = cache["hidden_states"][i]                                # the block's input (B, T, C)
        h = f"transformer.h.{i}"
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        ln = (x - mu) / np.sqrt(var + cfg.layer_norm_epsilon) * pm.params[f"{h}.ln_1.weight"] \
            + pm.params[f"{h}.ln_1.bias"]
        qkv = ln @ pm.params[f"{h}.attn.c_attn.weight"] + pm.params[f"{h}.attn.c_attn.bias"]
        for b in range(B):
            for head in range(NH):
                q = qkv[b, :, head * hs:(head + 1) * hs]                          # (T, hs)
                k = qkv[b, :, C + head * hs:C + (head + 1) * hs]                  # (T, hs)
                keys = np.concatenate([prefix[:, 2 * i, head], k])               # (P + T, hs)
                for t in range(T):
                    if not mask[b, t]:
                        continue
                    visible = [j for j in range(P + T) if j < P or (j - P <= t and mask[b, j - P])]
                    s = keys[visible] @ q[t] / np.sqrt(hs)
                    p = np.exp(s - s.max())
                    p /= p.sum()
                    out[i, head] += p[:P].sum()
        out[i] /= mask.sum()
    return out


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_attention_share_equals_a_direct_computation(projection):
    pm = randomize(peft(PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=projection)),
                   seed=2, scale=1.0)
    rng = np.random.default_rng(6)
    ids = rng.integers(0, CFG.vocab_size, (2, 7))
    mask = np.ones((2, 7), dtype=np.int64)
    mask[1, 5:] = 0                                                   # a right-padded row
    for use_kernels in (True, False):
        pm.use_kernels = use_kernels
        share = analysis.prefix_attention_share(pm, ids, mask)
        assert share.shape == (CFG.n_layer, CFG.n_head)
        np.testing.assert_allclose(share, direct_prefix_share(pm, ids, mask), rtol=0, atol=1e-12)
    assert np.all((share > 0) & (share < 1))
    assert analysis.plot_prefix_attention_share(share).axes
    with pytest.raises(ConfigError, match="prefix-tuning"):
        analysis.prefix_attention_share(tiny_model(), ids)


# ------------------------------------------------------------------ IA3
def test_ia3_vectors_and_summary():
    pm = randomize(peft(IA3Config()), offset=lambda name: 1.0, scale=0.1)
    vecs = analysis.ia3_vectors(pm)
    assert set(vecs) == {f"transformer.h.{i}.{m}" for i in range(2) for m in
                         ("attn.c_attn (output)", "mlp.c_proj (input)")}
    assert vecs["transformer.h.0.attn.c_attn (output)"].shape == (3 * CFG.n_embd,)
    assert vecs["transformer.h.1.mlp.c_proj (input)"].shape == (4 * CFG.n_embd,)
    live = pm.trainable_parameters()["base_model.model.transformer.h.1.mlp.c_proj.ia3_l"]
    np.testing.assert_array_equal(vecs["transformer.h.1.mlp.c_proj (input)"], live.reshape(-1))
    summary = analysis.ia3_summary(pm)
    k = summary["labels"].index("transformer.h.1.mlp.c_proj (input)")
    assert summary["mean"][k] == pytest.approx(live.mean())
    assert summary["mean_abs_change"][k] == pytest.approx(np.abs(live - 1).mean())
    paper = analysis.ia3_vectors(peft(IA3Config.paper()))
    assert "transformer.h.0.attn.c_attn.k (output)" in paper
    assert all(np.all(v == 1) for v in paper.values())                # fresh IA3 is the base model
    fig = analysis.plot_ia3_vectors(pm)
    assert len(fig.axes) >= 3


def test_plots_do_not_touch_pyplot():
    import sys

    import matplotlib
    backend = matplotlib.get_backend() if "matplotlib.pyplot" in sys.modules else None
    fig = analysis.plot_prefix_attention_share(np.full((2, 3), 0.5))
    fig.savefig(__import__("io").BytesIO(), format="png")
    if backend is None:
        assert "matplotlib.pyplot" not in sys.modules
    else:
        assert matplotlib.get_backend() == backend


def test_readme_analysis_example_runs(tmp_path):
    """The README's analysis example (two LoRA ranks trained 60 steps each) runs as printed."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                if "analysis.subspace_similarity(A2, A8" in b)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 0 <= float(lines[0]) <= 1 and lines[1] == "(2, 8)"
    assert lines[2].startswith("[8 8 8 8]")                         # random-ish A, B: full rank 8
    assert (tmp_path / "phi.png").is_file()
