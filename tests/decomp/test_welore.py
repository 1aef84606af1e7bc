"""welore_ranks: exact-rank matrices classed right, the reduction reached by the smallest τ, edge cases."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensorpeft import decomp


def with_spectrum(rng, d_out, d_in, sigma):
    """A d_out × d_in matrix with the given singular values (padded with zeros)."""
    n = min(d_out, d_in)
    u, _ = np.linalg.qr(rng.standard_normal((d_out, n)))
    v, _ = np.linalg.qr(rng.standard_normal((d_in, n)))
    s = np.zeros(n)
    s[: len(sigma)] = sigma
    return (u * s) @ v.T


def brute_force(spectra, shapes, target, min_ratio):
    """Reference: try every candidate τ in increasing order, with the rule written out directly."""
    normalized = []
    for s in spectra:
        s = np.sort(np.asarray(s, dtype=np.float64))
        normalized.append(np.ones_like(s) if s[-1] == s[0] else (s - s[0]) / (s[-1] - s[0]))
    before = sum(a * b for a, b in shapes)
    candidates = sorted({0.0} | {float(x) for s in normalized for x in s})
    for tau in candidates:
        after = 0
        for s, (a, b) in zip(normalized, shapes, strict=True):
            p = int((s < tau).sum())
            n = len(s)
            after += (n - p) * (a + b) if Fraction(p, n) > Fraction(min_ratio) else a * b
        if Fraction(before - after, before) >= Fraction(target):
            return tau, after
    return None, None


# --------------------------------------------------------------------------- the rule


@given(
    st.lists(
        st.tuples(
            st.integers(1, 7),
            st.integers(1, 7),
            st.lists(st.integers(0, 6), min_size=7, max_size=7),
        ),
        min_size=1,
        max_size=4,
    ),
    st.floats(0, 0.95),
    st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7]),
)
def test_smallest_tau_matches_brute_force(entries, target, min_ratio):
    # integer singular values: many ties within and across matrices; low min_ratio: non-monotone reduction
    matrices, spectra, shapes = {}, [], []
    for k, (a, b, values) in enumerate(entries):
        sigma = values[: min(a, b)]
        matrices[f"m{k}"] = decomp.Spectrum(sigma, (a, b))
        spectra.append(sigma)
        shapes.append((a, b))
    tau, after = brute_force(spectra, shapes, target, min_ratio)
    if tau is None:
        with pytest.raises(ValueError, match=r"`reduction`=.* is not reachable: the largest reduction"):
            decomp.welore_ranks(matrices, reduction=target, min_ratio=min_ratio)
        return
    res = decomp.welore_ranks(matrices, reduction=target, min_ratio=min_ratio)
    assert res.tau == tau
    assert res.params_after == after
    assert res.reduction >= target
    assert res.max_reduction >= res.reduction
    before = sum(a * b for a, b in shapes)
    assert res.params_before == before
    assert res.reduction == (before - after) / before
    for m in res.matrices.values():
        assert m.rank + m.pruned == m.n == min(m.shape)
        assert m.rank >= 1  # τ <= 1 never prunes σ̂ = 1
        assert m.is_low_rank == (Fraction(m.pruned, m.n) > Fraction(min_ratio))
        assert m.params_after == (m.rank * sum(m.shape) if m.is_low_rank else m.params_before)


@given(
    st.lists(st.tuples(st.integers(8, 20), st.integers(8, 20), st.integers(1, 3)), min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(4, 20), st.integers(4, 20)), min_size=1, max_size=3),
    st.integers(0, 2**31),
)
def test_exact_rank_matrices_are_classed_right(low_specs, full_specs, seed):
    rng = np.random.default_rng(seed)
    matrices, expected_after = {}, 0
    for k, (a, b, r) in enumerate(low_specs):
        matrices[f"low{k}"] = with_spectrum(rng, a, b, [3.0, 2.0, 1.0][:r])  # exact rank r < n / 2
        expected_after += r * (a + b)
    for k, (a, b) in enumerate(full_specs):
        n = min(a, b)
        matrices[f"full{k}"] = with_spectrum(rng, a, b, np.linspace(2.0, 1.0, n))  # well-spread, full rank
        expected_after += a * b
    before = sum(m.shape[0] * m.shape[1] for m in matrices.values())
    # what dropping every null space saves (half a parameter less: the float must not round above it)
    target = (before - expected_after - 0.5) / before
    res = decomp.welore_ranks(matrices, reduction=target)
    for k, (a, b, r) in enumerate(low_specs):
        rec = res.matrices[f"low{k}"]
        assert (rec.rank, rec.is_low_rank, rec.params_after) == (r, True, r * (a + b))
    for k, (a, b) in enumerate(full_specs):
        rec = res.matrices[f"full{k}"]
        # σ̂_min = 0: any τ > 0 prunes the smallest value of every non-constant matrix, no more here
        assert (rec.rank, rec.is_low_rank) == (min(a, b) - 1, False)
    assert res.params_after == expected_after
    assert res.reduction >= target
    assert res.low_rank == tuple(f"low{k}" for k in range(len(low_specs)))
    assert 0 < res.tau <= min(1 / (min(a, b) - 1) for a, b in full_specs) + 1e-12


def test_documented_spectrum_example():
    res = decomp.welore_ranks({"w": decomp.Spectrum([4, 3, 2, 1, 0], (5, 100))}, reduction=0.35)
    rec = res.matrices["w"]
    assert res.tau == 0.75  # σ̂ = 0, .25, .5, .75, 1: the value equal to τ is kept
    assert (rec.pruned, rec.rank, rec.is_low_rank, rec.params_after) == (3, 2, True, 210)
    assert res.reduction == 0.58
    assert res.max_reduction == 0.79


# --------------------------------------------------------------------------- τ edge cases


def test_zero_reduction_gives_tau_zero_and_prunes_nothing():
    rng = np.random.default_rng(0)
    res = decomp.welore_ranks({"a": rng.standard_normal((6, 4)), "b": rng.standard_normal((3, 9))}, reduction=0)
    assert res.tau == 0.0
    assert res.reduction == 0.0
    assert all(m.pruned == 0 and not m.is_low_rank for m in res.matrices.values())


def test_constant_spectra_are_never_pruned_and_never_nan():
    matrices = {
        "zero": np.zeros((4, 4)),
        "ortho": 3 * np.eye(5),
        "row": np.arange(1.0, 8.0).reshape(1, 7),  # n = 1
        "flat": decomp.Spectrum([2.0, 2.0, 2.0], (3, 8)),
    }
    with pytest.raises(ValueError, match=r"largest reduction any threshold gives is 0 \(tau=0.0\)"):
        decomp.welore_ranks(matrices, reduction=0.1)
    res = decomp.welore_ranks(matrices, reduction=0.0)
    assert res.tau == 0.0 and res.max_reduction == 0.0
    assert all(m.rank == m.n for m in res.matrices.values())


def test_constant_matrix_beside_a_prunable_one_keeps_full_rank():
    res = decomp.welore_ranks(
        {"flat": decomp.Spectrum([1.0] * 6, (6, 6)), "w": decomp.Spectrum([0, 0, 0, 0, 0, 0, 0, 1], (8, 8))},
        reduction=0.1,
    )
    assert res.tau == 1.0
    assert res.ranks == {"flat": 6, "w": 1}
    assert not math.isnan(res.reduction)


def test_any_positive_tau_prunes_every_minimum():
    # σ̂: a = (0, 1), b = (0, 0.8, 1). The first positive candidate, 0.8, prunes both minima at once
    # (b's 0.8 itself is kept: strict <); a becomes an LRC (1/2 > 0.4), b does not (1/3).
    spectra = {"a": decomp.Spectrum([1, 5], (2, 50)), "b": decomp.Spectrum([5, 9, 10], (3, 3))}
    assert decomp.welore_ranks(spectra, reduction=0.0, min_ratio=0.4).tau == 0.0
    res = decomp.welore_ranks(spectra, reduction=1e-9, min_ratio=0.4)
    assert res.tau == 0.8
    assert res.ranks == {"a": 1, "b": 2}
    assert res.low_rank == ("a",)


def test_n_equal_two_is_low_rank_at_the_first_positive_tau_only_with_low_min_ratio():
    w = {"w": decomp.Spectrum([1.0, 5.0], (2, 50))}
    assert decomp.welore_ranks(w, reduction=0.4, min_ratio=0.49).ranks == {"w": 1}
    with pytest.raises(ValueError, match="not reachable"):
        decomp.welore_ranks(w, reduction=0.4, min_ratio=0.5)  # p / n = 1/2 is not > 1/2


def test_reduction_is_reached_exactly_at_the_boundary():
    # 4 × 4 with σ̂ = 0, 1/3, 2/3, 1: pruning 3 saves 16 − 8 = 8 of 16 = exactly 0.5
    w = {"w": decomp.Spectrum([0, 1, 2, 3], (4, 4))}
    res = decomp.welore_ranks(w, reduction=0.5)
    assert (res.reduction, res.ranks["w"], res.tau) == (0.5, 1, 1.0)
    with pytest.raises(ValueError, match=r"`reduction`=0.5000001 is not reachable.*0.5 \(tau=1.0\)"):
        decomp.welore_ranks(w, reduction=0.5000001)


# --------------------------------------------------------------------------- inputs


def test_torch_and_numpy_agree():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    mats = {"a": with_spectrum(rng, 12, 9, [4, 3, 2]), "b": rng.standard_normal((10, 10))}
    ref = decomp.welore_ranks(mats, reduction=0.3)
    got = decomp.welore_ranks({k: torch.from_numpy(v) for k, v in mats.items()}, reduction=0.3)
    assert got.ranks == ref.ranks and got.tau == pytest.approx(ref.tau)
    got32 = decomp.welore_ranks({k: torch.from_numpy(v).float().requires_grad_() for k, v in mats.items()}, 0.3)
    assert got32.ranks == ref.ranks


def test_spectrum_accepts_torch_and_any_order():
    torch = pytest.importorskip("torch")
    a = decomp.welore_ranks({"w": decomp.Spectrum(torch.tensor([3.0, 0.0, 1.0, 2.0]), (4, 6))}, 0.3)
    b = decomp.welore_ranks({"w": decomp.Spectrum(np.array([0, 1, 2, 3]), (4, 6))}, 0.3)
    assert a == b


def test_integer_arrays_are_accepted():
    res = decomp.welore_ranks({"w": np.diag([5, 1, 1, 1, 0, 0])}, reduction=0.3)
    assert res.ranks == {"w": 1}


def test_result_str_lists_every_matrix():
    res = decomp.welore_ranks({"q": decomp.Spectrum([0, 1, 2, 3], (4, 4)), "v": np.eye(3)}, reduction=0.2)
    text = str(res)
    assert text.startswith("WeLore tau=1:")
    assert "q  LRC    k=1/4" in text and "v  dense  k=3/3" in text


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_reduction_outside_unit_interval(bad):
    with pytest.raises(ValueError, match=r"`reduction` must be in \[0, 1\)"):
        decomp.welore_ranks({"w": np.eye(3)}, reduction=bad)


@pytest.mark.parametrize("bad", ["0.5", True, None])
def test_reduction_of_wrong_type(bad):
    with pytest.raises(TypeError, match="`reduction` must be a real number"):
        decomp.welore_ranks({"w": np.eye(3)}, reduction=bad)


@pytest.mark.parametrize("bad", [-1, 1, 2.0])
def test_min_ratio_outside_unit_interval(bad):
    with pytest.raises(ValueError, match=r"`min_ratio` must be in \[0, 1\)"):
        decomp.welore_ranks({"w": np.eye(3)}, min_ratio=bad)


def test_empty_and_non_mapping_inputs():
    with pytest.raises(ValueError, match="`matrices` is empty"):
        decomp.welore_ranks({})
    with pytest.raises(TypeError, match="`matrices` must be a mapping"):
        decomp.welore_ranks([np.eye(3)])


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (np.ones((2, 3, 4)), ValueError, r"`matrices\['w'\]` must be a 2-D matrix .* got shape \(2, 3, 4\)"),
        (np.ones(5), ValueError, r"`matrices\['w'\]` must be a 2-D matrix"),
        (np.ones((0, 4)), ValueError, r"`matrices\['w'\]` must not be empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), ValueError, r"`matrices\['w'\]` contains NaN or infinite"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), ValueError, r"`matrices\['w'\]` contains NaN or infinite"),
        ([[1.0, 0.0], [0.0, 1.0]], TypeError, r"`matrices\['w'\]` must be a 2-D numpy array"),
        (np.eye(2, dtype=complex), TypeError, r"`matrices\['w'\]` must be a real array"),
        (decomp.Spectrum([1.0, 2.0], (3, 4)), ValueError, r"singular_values` must be 1-D of length min\(3, 4\)=3"),
        (decomp.Spectrum([1.0, -2.0], (2, 4)), ValueError, r"singular_values` must be finite and non-negative"),
        (decomp.Spectrum([1.0, np.nan], (2, 4)), ValueError, r"singular_values` must be finite and non-negative"),
        (decomp.Spectrum([1.0], (1, 2, 3)), ValueError, r"`matrices\['w'\].shape` must be \(d_out, d_in\)"),
        (decomp.Spectrum([1.0], (0, 2)), ValueError, r"`matrices\['w'\].shape\[0\]` must be a positive integer"),
        (decomp.Spectrum(["a"], (1, 2)), TypeError, r"singular_values` must be an array of real numbers"),
    ],
)
def test_bad_matrices_name_the_entry(value, error, match):
    with pytest.raises(error, match=match):
        decomp.welore_ranks({"w": value})


def test_torch_non_finite_is_rejected():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"`matrices\['t'\]` contains NaN"):
        decomp.welore_ranks({"t": torch.tensor([[1.0, float("nan")], [0.0, 1.0]])})
    with pytest.raises(ValueError, match=r"`matrices\['t'\]` must be a 2-D matrix"):
        decomp.welore_ranks({"t": torch.ones(3)})
