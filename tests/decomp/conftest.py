"""Fixtures of the decomp tests."""

import types

import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_threaded(single_threaded_linear_algebra):
    """Tiny matrices throughout: one BLAS thread (see ``tests/conftest.py``)."""
    yield


# Hand-written custom formats (TensorNetwork keyword arguments), shared by several test modules.
CUSTOM_NETWORKS = {
    "tucker2-by-hand": dict(
        equation="or,lrq,iq->loi",
        sizes={"o": 5, "r": 2, "l": 3, "q": 3, "i": 4},
        stack_indices="l",
        out_indices="o",
        in_indices="i",
        factor_names=("A", "G", "B"),
        zero_factor="G",
    ),
    "fact-tk": dict(  # FacT-TK: ΔW_l = U · (C ×₃ P[l]) · Vᵀ
        equation="or,rst,lt,is->loi",
        sizes={"o": 5, "r": 2, "s": 2, "t": 2, "l": 4, "i": 4},
        stack_indices="l",
        out_indices="o",
        in_indices="i",
        factor_names=("U", "C", "P", "V"),
        zero_factor="C",
    ),
    "two-stack-modes": dict(  # layers x matrix type, shared outer factors and a core per (l, m)
        equation="or,lmrq,qi->lmoi",
        sizes={"o": 4, "r": 2, "l": 3, "m": 2, "q": 2, "i": 5},
        stack_indices="lm",
        out_indices="o",
        in_indices="i",
        zero_factor="F1",
    ),
    "lora-by-hand": dict(  # the stack index on both factors (a partial overlap for the ALS solve)
        equation="lri,lor->loi",
        sizes={"l": 3, "r": 2, "i": 4, "o": 5},
        stack_indices="l",
        out_indices="o",
        in_indices="i",
        factor_names=("A", "B"),
    ),
    "tt-by-hand": dict(  # a two-core train with its size-1 end bonds written out (dangling indices)
        equation="aob,bic->oi",
        sizes={"a": 1, "o": 4, "b": 2, "i": 6, "c": 1},
        out_indices="o",
        in_indices="i",
    ),
    "split-features": dict(  # out features split in two modes, stack on two factors
        equation="lar,lbr,ri->labi",
        sizes={"l": 2, "a": 2, "b": 3, "r": 2, "i": 4},
        stack_indices="l",
        out_indices="ab",
        in_indices="i",
    ),
}


# Networks in which ALS is plain CP-ALS: it may crawl through swamps, so recovery is only to ~1e-4.
CP_LIKE = {"split-features"}


@pytest.fixture(params=sorted(CUSTOM_NETWORKS))
def custom_network(request):
    """One hand-written network: ``.name``, ``.kwargs`` (for :class:`TensorNetwork`), ``.cp_like``."""
    return types.SimpleNamespace(
        name=request.param, kwargs=CUSTOM_NETWORKS[request.param], cp_like=request.param in CP_LIKE
    )
