"""The einsum-spec engine every format is built on.

A :class:`TensorNetwork` is a *format*: the structure of a stacked weight update
ΔW of shape ``(*stack, out_features, in_features)``, written as one einsum equation whose operands are
the factors. Arrays live outside the format, in a ``dict`` of factors, so one format serves numpy and
torch alike. Every verb (shapes, parameter count, init, dense reconstruction, factored apply, fit) is
derived from the equation; the built-in formats are subclasses that only choose the equation, the
initial scales and, where it pays, a specialized fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import opt_einsum

from . import _als
from ._backend import ops_for, ops_named
from ._contract import contract
from ._validate import check_positive_int, normalize_index

__all__ = ["TensorNetwork"]


def _parse_equation(equation: str) -> tuple[list[str], str]:
    if not isinstance(equation, str) or equation.count("->") != 1:
        raise ValueError(f"`equation` must be an explicit einsum string like 'or,lrs,is->loi', got {equation!r}.")
    lhs, out = equation.replace(" ", "").split("->")
    inputs = lhs.split(",")
    if any(not term for term in inputs):
        raise ValueError(f"`equation` has an empty operand: {equation!r}.")
    for term in [*inputs, out]:
        if len(set(term)) != len(term):
            raise ValueError(f"`equation` term {term!r} repeats an index; traces and diagonals are not formats.")
        if not all(ch.isalpha() for ch in term):
            raise ValueError(f"`equation` indices must be letters, got term {term!r}.")
    return inputs, out


class TensorNetwork:
    """A custom format: ΔW defined by an einsum equation over factors.

    Parameters
    ----------
    equation : str
        Explicit einsum equation, operands are the factors, e.g. ``"or,lrs,is->loi"``. The output lists
        the stack indices, then the output-feature indices, then the input-feature indices. Each factor
        appears once, so the network is linear in every factor (which is what makes :meth:`fit` work).
    sizes : dict[str, int]
        Size of every index letter.
    stack_indices, out_indices, in_indices : str
        Which output letters are stack modes, output-feature modes and input-feature modes (their
        concatenation must equal the output of ``equation``). Features split into several modes are
        flattened in row-major (C) order, as :func:`numpy.reshape` does.
    factor_names : sequence of str, optional
        Names of the factors, in operand order. Default ``"F0", "F1", ...``.
    zero_factor : str, optional
        The factor that :meth:`init` sets to zero so that ΔW == 0 at start (default: the last one).

    Attributes
    ----------
    shape : tuple of int
        ``(*stack, out_features, in_features)``.
    factor_shapes : dict[str, tuple of int]
        Shape of each factor.
    num_params : int
        Exact number of scalars in the factors.

    Raises
    ------
    ValueError
        If the equation is malformed, a letter has no positive size, or the stack/out/in split does not
        match the equation's output.

    Examples
    --------
    A Tucker-2 update shared over 4 layers, written by hand:

    >>> import numpy as np
    >>> from tensorpeft import decomp
    >>> f = decomp.TensorNetwork(
    ...     "or,lrs,is->loi", {"o": 6, "r": 2, "l": 4, "s": 3, "i": 5},
    ...     stack_indices="l", out_indices="o", in_indices="i",
    ...     factor_names=("A", "G", "B"), zero_factor="G")
    >>> f.shape, f.num_params
    ((4, 6, 5), 51)
    >>> fac = f.random(seed=0)
    >>> x = np.ones((7, 5))
    >>> bool(np.allclose(f.apply(fac, x, index=2), x @ f.to_dense(fac)[2].T))
    True
    """

    def __init__(
        self,
        equation: str,
        sizes: Mapping[str, int],
        *,
        stack_indices: str = "",
        out_indices: str,
        in_indices: str,
        factor_names=None,
        zero_factor: str | None = None,
    ):
        inputs, output = _parse_equation(equation)
        if not isinstance(sizes, Mapping):
            raise TypeError(f"`sizes` must be a mapping from index letter to size, got {type(sizes).__name__}.")
        letters = set("".join(inputs)) | set(output)
        missing = sorted(letters - set(sizes))
        if missing:
            raise ValueError(f"`sizes` has no size for indices {missing} of `equation`={equation!r}.")
        self.sizes = {k: check_positive_int(sizes[k], f"sizes[{k!r}]") for k in sorted(letters)}
        if stack_indices + out_indices + in_indices != output:
            raise ValueError(
                f"`stack_indices`+`out_indices`+`in_indices` = {stack_indices + out_indices + in_indices!r} "
                f"must equal the output of `equation`, {output!r}."
            )
        if not out_indices or not in_indices:
            raise ValueError("`out_indices` and `in_indices` must each name at least one output index.")
        orphans = sorted(set(output) - set("".join(inputs)))
        if orphans:
            raise ValueError(f"output indices {orphans} of `equation` appear in no factor.")
        if factor_names is None:
            factor_names = tuple(f"F{k}" for k in range(len(inputs)))
        factor_names = tuple(factor_names)
        if len(factor_names) != len(inputs) or len(set(factor_names)) != len(factor_names):
            raise ValueError(
                f"`factor_names` must be {len(inputs)} distinct names (one per operand), got {factor_names!r}."
            )
        if zero_factor is None:
            zero_factor = factor_names[-1]
        if zero_factor not in factor_names:
            raise ValueError(f"`zero_factor` must be one of {factor_names}, got {zero_factor!r}.")

        self.equation = f"{','.join(inputs)}->{output}"
        self.stack_indices, self.out_indices, self.in_indices = stack_indices, out_indices, in_indices
        self.factor_names = factor_names
        self.zero_factor = zero_factor
        self.factor_indices = dict(zip(factor_names, inputs, strict=True))
        self._inputs, self._output = inputs, output

    # ------------------------------------------------------------------ shapes and counts
    @property
    def stack(self) -> tuple[int, ...]:
        """Sizes of the stack modes."""
        return tuple(self.sizes[c] for c in self.stack_indices)

    @property
    def out_features(self) -> int:
        """Output features (product of the output-feature modes)."""
        return math.prod(self.sizes[c] for c in self.out_indices)

    @property
    def in_features(self) -> int:
        """Input features (product of the input-feature modes)."""
        return math.prod(self.sizes[c] for c in self.in_indices)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the dense update: ``(*stack, out_features, in_features)``."""
        return (*self.stack, self.out_features, self.in_features)

    @property
    def factor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each factor, by name."""
        return {n: tuple(self.sizes[c] for c in idx) for n, idx in self.factor_indices.items()}

    @property
    def num_params(self) -> int:
        """Exact number of scalars in the factors (a Python int)."""
        return sum(math.prod(s) for s in self.factor_shapes.values())

    @property
    def num_slices(self) -> int:
        """Number of matrices in the stack, ``prod(stack)``."""
        return math.prod(self.stack)

    # ------------------------------------------------------------------ identity
    def _args(self) -> dict:
        return {
            "equation": self.equation,
            "sizes": self.sizes,
            "stack_indices": self.stack_indices,
            "out_indices": self.out_indices,
            "in_indices": self.in_indices,
            "factor_names": self.factor_names,
            "zero_factor": self.zero_factor,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._args().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._args() == other._args()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self)))

    # ------------------------------------------------------------------ factors
    def init_std(self, name: str) -> float:
        """Standard deviation of factor ``name`` in :meth:`init` and :meth:`random`.

        The generic rule keeps every stage of the contraction at unit scale: a factor touching feature
        indices gets ``1/sqrt(product of those feature sizes)``; a pure core gets
        ``1/sqrt(sqrt(product of its bond sizes))``. Built-in formats override it where their paper says.
        """
        idx = self.factor_indices[name]
        features = [self.sizes[c] for c in idx if c in self.out_indices or c in self.in_indices]
        if features:
            return 1.0 / math.sqrt(math.prod(features))
        bonds = [self.sizes[c] for c in idx if c not in self.stack_indices]
        return 1.0 / math.sqrt(math.sqrt(math.prod(bonds))) if bonds else 1.0

    def random(self, seed: int = 0, backend: str = "numpy", dtype=None) -> dict:
        """Every factor random and non-zero (for tests, demos and fit initialization).

        Parameters
        ----------
        seed : int
            Seed of the generator (numpy ``default_rng`` or ``torch.Generator``).
        backend : {"numpy", "torch"}
            Array library of the returned factors.
        dtype : optional
            Default: float64 for numpy, ``torch.get_default_dtype()`` for torch.

        Returns
        -------
        dict[str, array]
        """
        ops = ops_named(backend)
        dtype = ops.resolve_dtype(dtype)
        gen = ops.generator(seed)
        return {n: ops.normal(gen, s, self.init_std(n), dtype) for n, s in self.factor_shapes.items()}

    def init(self, seed: int = 0, backend: str = "numpy", dtype=None) -> dict:
        """Training initialization: ΔW == 0 exactly (``zero_factor`` is zero), yet gradients flow.

        Same parameters as :meth:`random`.
        """
        factors = self.random(seed=seed, backend=backend, dtype=dtype)
        factors[self.zero_factor] = factors[self.zero_factor] * 0
        return factors

    def check_factors(self, factors, argument: str = "factors"):
        """Validate a factor dict (names, shapes, one array library, one floating dtype).

        Returns the backend operations of the factors.

        Raises
        ------
        TypeError, ValueError
            Naming the missing, unexpected or mis-shaped factor.
        """
        if not isinstance(factors, Mapping):
            raise TypeError(f"`{argument}` must be a dict of factors, got {type(factors).__name__}.")
        expected = self.factor_shapes
        missing = [n for n in expected if n not in factors]
        if missing:
            raise ValueError(f"`{argument}` is missing factor(s) {missing}; expected {list(expected)}.")
        extra = [n for n in factors if n not in expected]
        if extra:
            raise ValueError(f"`{argument}` has unexpected factor(s) {extra}; expected {list(expected)}.")
        ops = ops_for(*(factors[n] for n in expected), argument=argument)
        dtypes = set()
        for n, shape in expected.items():
            got = tuple(factors[n].shape)
            if got != shape:
                raise ValueError(f"`{argument}[{n!r}]` must have shape {shape}, got {got}.")
            if not ops.is_floating(factors[n]):
                raise TypeError(f"`{argument}[{n!r}]` must be floating point, got {factors[n].dtype}.")
            dtypes.add(str(factors[n].dtype))
        if len(dtypes) > 1:
            raise TypeError(f"`{argument}` mixes dtypes {sorted(dtypes)}; use one floating dtype.")
        return ops

    # ------------------------------------------------------------------ dense and apply
    def to_dense(self, factors):
        """Materialize ΔW, an array of :attr:`shape` in the factors' backend and dtype."""
        ops = self.check_factors(factors)
        dense = contract(self.equation, *(factors[n] for n in self.factor_names), ops=ops)
        return dense.reshape(self.shape)

    def _sliced(self, factors, index):
        """Factors with the stack modes fixed at ``index`` and their equation terms."""
        at = dict(zip(self.stack_indices, index, strict=True))
        terms, arrays = [], []
        for name in self.factor_names:
            term, array = self.factor_indices[name], factors[name]
            key = tuple(at[c] if c in at else slice(None) for c in term)
            if any(c in at for c in term):
                array = array[key]
                term = "".join(c for c in term if c not in at)
            terms.append(term)
            arrays.append(array)
        return terms, arrays

    def apply(self, factors, x, index=()):
        """Compute ``x @ ΔW[index].T`` without forming ΔW.

        Parameters
        ----------
        factors : dict
            Factors of this format.
        x : array (..., in_features)
            Input, same backend as the factors.
        index : tuple of int, int or None
            Which slice of the stack (a plain int for one stack mode). ``None`` applies every slice and
            returns ``(*stack, ..., out_features)``.

        Returns
        -------
        array (..., out_features)

        Raises
        ------
        ValueError
            If ``x`` has the wrong last dimension or ``index`` is out of range.
        """
        ops = self.check_factors(factors)
        x_ops = ops_for(x, argument="x")
        if x_ops.name != ops.name:
            raise TypeError(f"`x` is a {x_ops.name} array but the factors are {ops.name} arrays.")
        factor_dtype = ops.dtype_of(factors[self.factor_names[0]])
        if ops.name == "torch" and x.dtype != factor_dtype and not ops.autocast_enabled(x):
            # torch would fail deep inside einsum (outside autocast); numpy promotes, as numpy users expect
            raise TypeError(f"`x` has dtype {x.dtype} but the factors are {factor_dtype}; cast one of them.")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"`x` must have last dimension `in_features`={self.in_features}, got shape {tuple(x.shape)}."
            )
        lead = tuple(x.shape[:-1])
        x2 = x.reshape((math.prod(lead), *(self.sizes[c] for c in self.in_indices)))
        batch = opt_einsum.get_symbol(_first_free_symbol(self.sizes))
        if index is None:
            terms, arrays = list(self._inputs), [factors[n] for n in self.factor_names]
            out_terms = self.stack_indices + batch + self.out_indices
            out_shape = (*self.stack, *lead, self.out_features)
        else:
            terms, arrays = self._sliced(factors, normalize_index(index, self.stack))
            out_terms = batch + self.out_indices
            out_shape = (*lead, self.out_features)
        equation = f"{','.join([*terms, batch + self.in_indices])}->{out_terms}"
        y = contract(equation, *arrays, x2, ops=ops, activation=len(arrays))
        return y.reshape(out_shape)

    # ------------------------------------------------------------------ fit
    def check_dense(self, dense, argument: str = "dense"):
        """Validate a dense tensor of :attr:`shape`; return its backend operations."""
        ops = ops_for(dense, argument=argument)
        if tuple(dense.shape) != self.shape:
            raise ValueError(f"`{argument}` must have shape {self.shape}, got {tuple(dense.shape)}.")
        if not ops.is_floating(dense):
            raise TypeError(f"`{argument}` must be floating point, got {dense.dtype}.")
        if not ops.all_finite(dense):
            raise ValueError(f"`{argument}` contains NaN or infinite values.")
        return ops

    def fit(self, dense, *, init=None, n_iter_max: int = 200, tol: float = 1e-12, seed: int = 0):
        """Decompose a dense tensor of :attr:`shape` into this format.

        The generic route is alternating least squares: each factor appears once in the equation, so
        with the others fixed the best factor solves a linear least-squares problem, whose normal
        equations are formed by two contractions (never the full design matrix).

        Parameters
        ----------
        dense : array of :attr:`shape`
            Tensor to approximate (numpy or torch).
        init : dict, optional
            Starting factors; default :meth:`random` with ``seed``.
        n_iter_max : int
            Maximum number of sweeps.
        tol : float
            Stop when the relative error improves by less than ``tol`` in a sweep.
        seed : int
            Seed of the random start.

        Returns
        -------
        factors : dict
            In the backend and dtype of ``dense``.
        rel_err : float
            ``‖dense - to_dense(factors)‖ / ‖dense‖``.
        """
        ops = self.check_dense(dense)
        if init is None:
            init = self.random(seed=seed, backend=ops.name, dtype=ops.dtype_of(dense))
        else:
            self.check_factors(init, argument="init")
        return _als.fit_als(self, dense, init, n_iter_max=n_iter_max, tol=tol, ops=ops)

    def relative_error(self, dense, factors) -> float:
        """``‖dense - to_dense(factors)‖ / ‖dense‖`` (0 for a zero ``dense`` reconstructed exactly)."""
        ops = self.check_dense(dense)
        err = ops.norm(dense - self.to_dense(factors))
        ref = ops.norm(dense)
        return err / ref if ref > 0 else err


def _first_free_symbol(sizes) -> int:
    k = 0
    while opt_einsum.get_symbol(k) in sizes:
        k += 1
    return k


def fresh_letters(count: int, avoid: str) -> str:
    """``count`` einsum letters not in ``avoid`` (readable lower-case first)."""
    letters, k = [], 0
    while len(letters) < count:
        s = opt_einsum.get_symbol(k)
        k += 1
        if s not in avoid and s not in letters:
            letters.append(s)
    return "".join(letters)
