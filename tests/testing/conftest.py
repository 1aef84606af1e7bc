"""Fixtures of the tensorpeft.testing tests."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_threaded(single_threaded_linear_algebra):
    """Tiny matrices throughout: one BLAS thread (see ``tests/conftest.py``)."""
    yield
