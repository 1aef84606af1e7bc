"""Fixtures shared by every test package."""

import contextlib

import pytest


@pytest.fixture(scope="module")
def single_threaded_linear_algebra():
    """Run BLAS/LAPACK (numpy's OpenBLAS and torch) on one thread for a module's tests.

    Test packages with tiny matrices turn it on for all their modules through an autouse fixture in
    their ``conftest.py``. On two shared cores the thread pools cost far more than they save there:
    measured, ``torch.linalg.qr`` of a 4x3 matrix took 11 ms with two threads and 8 µs with one, and
    ``numpy.linalg.svd`` of a 96x1536 matrix 2.1 s against 13 ms.
    """
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional: only speed is at stake
            pass
        else:
            stack.enter_context(threadpool_limits(limits=1))
        try:
            import torch
        except ImportError:
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        stack.callback(torch.set_num_threads, threads)
        yield
