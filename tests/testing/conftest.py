"""Fixtures of the tensorpeft.testing tests."""

import contextlib

import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_linear_algebra():
    """Run BLAS/LAPACK (numpy's OpenBLAS and torch) on one thread in these tests.

    The matrices here are tiny, and on two shared cores the thread pools cost far more than they
    save: measured, ``torch.linalg.qr`` of a 4x3 matrix took 11 ms with two threads and 8 µs with
    one, and ``numpy.linalg.svd`` of a 96x1536 matrix 2.1 s against 13 ms.
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
