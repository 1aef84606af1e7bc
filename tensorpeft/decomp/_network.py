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
from collections.abc import Iterable, Mapping
from itertools import islice
from typing import ClassVar

import numpy as np
import opt_einsum

from . import _als
from ._backend import ops_for, ops_named
from ._contract import contract
from .validate import (
    EINSUM_LETTERS,
    MAX_RANK,
    MAX_SIZE,
    check_allocation,
    check_index_letters,
    check_n_iter_max,
    check_seed,
    check_size,
    check_tol,
    normalize_index,
)

_ASCII_LETTERS = "".join(opt_einsum.get_symbol(k) for k in range(EINSUM_LETTERS))  # a-z, A-Z

__all__ = ["TensorNetwork"]


def _parse_equation(equation: str) -> tuple[list[str], str]:
    if isinstance(equation, str) and "+" in equation:
        raise ValueError(
            f"`equation` must be one einsum product of factors, got {equation!r} with a '+': a sum of networks "
            "is not one einsum equation; write each term as its own format and add them with decomp.Sum(f1, f2)."
        )
    if not isinstance(equation, str) or equation.count("->") != 1:
        raise ValueError(f"`equation` must be an explicit einsum string like 'or,lrs,is->loi', got {equation!r}.")
    lhs, out = equation.replace(" ", "").split("->")
    inputs = lhs.split(",")
    if any(not term for term in inputs):
        raise ValueError(f"`equation` has an empty operand: {equation!r}.")
    for term in [*inputs, out]:
        if "..." in term:
            raise ValueError(
                f"`equation` term {term!r} has an ellipsis ('...'); a format names every index with a letter "
                "(no broadcast dimensions): write the stack modes as letters and list them in `stack_indices`."
            )
        if len(set(term)) != len(term):
            raise ValueError(f"`equation` term {term!r} repeats an index; traces and diagonals are not formats.")
        if not all(ch in _ASCII_LETTERS for ch in term):
            raise ValueError(f"`equation` indices must be letters, got term {term!r}; a-z and A-Z only, as in einsum.")
    return inputs, out


def _check_index_string(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str of index letters, got {value!r} ({type(value).__name__}).")
    return value


_NAMES_EXPECTED = (
    "`factor_names` must be {count} distinct names (one per operand), or repeat a name on operands of one shape "
    "to tie them"
)


def _check_factor_names(factor_names, count: int) -> tuple[str, ...]:
    """``count`` str names, one per operand (default ``F0, F1, ...``); at most ``count + 1`` items are read.

    A name may repeat (a tied factor); :func:`_check_ties` checks that its operands have one shape.
    """
    if factor_names is None:
        return tuple(f"F{k}" for k in range(count))
    expected = _NAMES_EXPECTED.format(count=count)
    if isinstance(factor_names, str | bytes) or not isinstance(factor_names, Iterable):
        raise TypeError(f"{expected}, got {factor_names!r}.")
    try:
        names = tuple(islice(factor_names, count + 1))
    except TypeError:  # iterable in type only (a 0-d array)
        raise TypeError(f"{expected}, got {factor_names!r}.") from None
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"{expected} of type str, got {names!r}.")
    if len(names) != count:
        raise ValueError(f"{expected}, got {names!r}.")
    return names


def _check_ties(names: tuple[str, ...], inputs: list[str], sizes: dict[str, int]) -> None:
    """A name repeated in ``names`` must name operands of one shape (one array serves them all)."""
    first: dict[str, int] = {}
    for k, (name, term) in enumerate(zip(names, inputs, strict=True)):
        shape = tuple(sizes[c] for c in term)
        if name not in first:
            first[name] = k
            continue
        j = first[name]
        shape_j = tuple(sizes[c] for c in inputs[j])
        if shape != shape_j:
            raise ValueError(
                f"{_NAMES_EXPECTED.format(count=len(names))}: {name!r} names operand {j} {inputs[j]!r} of shape "
                f"{shape_j} and operand {k} {term!r} of shape {shape}, got {names!r}."
            )


_FROZEN_EXPECTED = "`frozen` must be a tuple of distinct factor names (a tied factor once)"


def check_frozen_values(frozen_values, frozen_names: tuple[str, ...]) -> None:
    """TypeError unless ``frozen_values`` is a mapping; ValueError if it names a factor not in ``frozen_names``."""
    if not isinstance(frozen_values, Mapping):
        raise TypeError(
            f"`frozen_values` must be None or a dict {{frozen factor name: array}}, got {type(frozen_values).__name__}."
        )
    unknown = [n for n in frozen_values if n not in frozen_names]
    if unknown:
        raise ValueError(
            f"`frozen_values` names {unknown}, which are not frozen factors; expected some of {frozen_names}."
        )


def _check_frozen(frozen, names: tuple[str, ...]) -> tuple[str, ...]:
    """The frozen factor names, in the order of ``names``: known, each once, and not every factor."""
    if isinstance(frozen, str | bytes) or not isinstance(frozen, Iterable):
        raise TypeError(f"{_FROZEN_EXPECTED}, got {frozen!r} ({type(frozen).__name__}).")
    try:
        given = tuple(islice(frozen, len(names) + 1))
    except TypeError:  # iterable in type only (a 0-d array)
        raise TypeError(f"{_FROZEN_EXPECTED}, got {frozen!r}.") from None
    if not all(isinstance(n, str) for n in given):
        raise TypeError(f"{_FROZEN_EXPECTED} of type str, got {given!r}.")
    unknown = [n for n in given if n not in names]
    if unknown:
        raise ValueError(f"{_FROZEN_EXPECTED}: {unknown} name no factor; the factors are {names}, got {given!r}.")
    repeated = sorted({n for n in given if given.count(n) > 1})
    if repeated:
        raise ValueError(
            f"{_FROZEN_EXPECTED}: {repeated} listed more than once (a tied factor is one array, frozen once), "
            f"got {given!r}."
        )
    if len(given) == len(names):
        raise ValueError(
            f"{_FROZEN_EXPECTED}, not every factor: `frozen`={given!r} freezes all of {names}, which leaves "
            "nothing to train."
        )
    return tuple(n for n in names if n in given)


def _check_summed_indices(inputs: list[str], output: str, sizes: dict[str, int], equation: str) -> None:
    """Refuse an index of size > 1 that only one operand carries and the output lacks."""
    for k, term in enumerate(inputs):
        for c in term:
            if c in output or sizes[c] == 1 or any(c in other for j, other in enumerate(inputs) if j != k):
                continue
            raise ValueError(
                f"index {c!r} of `equation`={equation!r} appears only in operand {k} ({term!r}) and not in the "
                f"output: it is summed inside one factor, whose {sizes[c]} entries along it only add up "
                "(redundant parameters, and a singular fit). Drop the index from that operand, or give it "
                "size 1 in `sizes`."
            )


class TensorNetwork:
    """A custom format: ΔW defined by an einsum equation over factors.

    Parameters
    ----------
    equation : str
        Explicit einsum equation, operands are the factors, e.g. ``"or,lrs,is->loi"``. The output lists
        the stack indices, then the output-feature indices, then the input-feature indices. One product
        of factors: a ``+`` (a sum of networks) and an ellipsis are refused, and so is an index of size
        > 1 that only one operand carries and the output lacks (summed inside one factor, it would only
        add redundant parameters); size-1 indices, such as the end bonds of a tensor train, may dangle.
    sizes : dict[str, int]
        Size of every index letter of ``equation``, and of no other.
    stack_indices, out_indices, in_indices : str
        Which output letters are stack modes, output-feature modes and input-feature modes (their
        concatenation must equal the output of ``equation``). Features split into several modes are
        flattened in row-major (C) order, as :func:`numpy.reshape` does.
    factor_names : sequence of str, optional
        Names of the operands, in order. Default ``"F0", "F1", ...``. A name given to several operands
        *ties* them: one array (counted once in :attr:`num_params`) serves every operand it names, so
        their index strings must give one shape, and its gradient is the sum over its uses. ΔW
        ``U Σ_l Uᵀ`` is ``"oa,lab,ib->loi"`` with names ``("U", "S", "U")``.
    zero_factor : str, optional
        The factor that :meth:`init` sets to zero so that ΔW == 0 at start (default: the last untied
        trainable one). It must be untied: ΔW is quadratic (or more) in a tied factor, whose gradient at
        zero is zero; and trainable (not in ``frozen``).
    frozen : tuple of str, optional
        Names of *frozen* factors: constants, not trained (VeRA's shared random projections, or a basis
        taken from the pretrained weights). They are counted apart (:attr:`num_frozen`, not in
        :attr:`num_params`), drawn from the seed by :meth:`random` and :meth:`init` like the others (or
        given there, ``frozen_values=``), never zeroed, held fixed by :meth:`fit`, and buffers, not
        parameters, in ``tensorpeft.nn``. Every other verb takes them as it takes any factor. Default
        ``()``: no frozen factor, as in every built-in format.

    Attributes
    ----------
    shape : tuple of int
        ``(*stack, out_features, in_features)``.
    factor_names : tuple of str
        The distinct factors, in order of first use (a tied factor once).
    operand_names, operand_indices : tuple of str
        The factor and the index string of each operand of ``equation``, in order.
    tied_factors : dict[str, int]
        Number of operands of each tied factor (empty when none is tied).
    factor_shapes : dict[str, tuple of int]
        Shape of each factor.
    num_params : int
        Exact number of trainable scalars in the factors (a tied factor counted once, frozen ones not).
    frozen_names : tuple of str
        The frozen factors (``()`` if none).
    num_frozen : int
        Exact number of scalars in the frozen factors.

    Raises
    ------
    ValueError
        If the equation is malformed (a ``+``, an ellipsis, a repeated index in a term, an index summed
        inside one operand), a letter has no positive size, ``sizes`` names a letter the equation does
        not use, a tied name covers operands of different shapes, ``zero_factor`` is tied or frozen (or
        no untied trainable factor is left), ``frozen`` names an unknown factor, one twice, or every
        factor, or the stack/out/in split does not match the equation's output. Sizes are bounded
        up front: a stack index and each feature size (the product of its letters) at most ``2**31``,
        any other index (a rank) at most ``2**63 - 1``; the equation may use at most 51 of einsum's 52
        letters ``a-z``, ``A-Z`` (:meth:`apply` adds one for the batch). Built-in formats check the
        same bounds on their own arguments.
    TypeError
        If ``sizes`` is not a mapping, the index strings are not str, or ``factor_names`` or ``frozen``
        is not a collection of str.

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

    #: The name of the format in tables (the ``compare`` and ``budget`` commands); formats set their own.
    label: ClassVar[str] = "custom tensor network"

    #: The argument named when the factors of :meth:`random`/:meth:`init` would not fit in memory.
    _size_argument = "sizes"

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
        frozen=(),
    ):
        inputs, output = _parse_equation(equation)
        if not isinstance(sizes, Mapping):
            raise TypeError(f"`sizes` must be a mapping from index letter to size, got {type(sizes).__name__}.")
        for name, value in (("stack_indices", stack_indices), ("out_indices", out_indices), ("in_indices", in_indices)):
            _check_index_string(value, name)
        operand_names = _check_factor_names(factor_names, len(inputs))
        names = tuple(dict.fromkeys(operand_names))
        if zero_factor is not None and (not isinstance(zero_factor, str) or zero_factor not in names):
            raise ValueError(f"`zero_factor` must be one of {names}, got {zero_factor!r}.")
        letters = set("".join(inputs)) | set(output)
        check_index_letters(len(letters), "equation")
        missing = sorted(c for c in letters if c not in sizes)
        if missing:
            raise ValueError(f"`sizes` has no size for indices {missing} of `equation`={equation!r}.")
        unused = [k for k in sizes if k not in letters]
        if unused:
            raise ValueError(
                f"`sizes` gives a size to indices {unused} that `equation`={equation!r} never uses "
                "(a typo?); give sizes to the equation's indices only."
            )
        # stack and feature letters are sizes of the dense update (<= 2**31), the others ranks (<= 2**63 - 1)
        self.sizes = {
            k: check_size(sizes[k], f"sizes[{k!r}]", MAX_SIZE if k in output else MAX_RANK) for k in sorted(letters)
        }
        if stack_indices + out_indices + in_indices != output:
            raise ValueError(
                f"`stack_indices`+`out_indices`+`in_indices` = {stack_indices + out_indices + in_indices!r} "
                f"must equal the output of `equation`, {output!r}."
            )
        if not out_indices or not in_indices:
            raise ValueError("`out_indices` and `in_indices` must each name at least one output index.")
        for name, value in (("out_indices", out_indices), ("in_indices", in_indices)):
            features = math.prod(self.sizes[c] for c in value)
            if features > MAX_SIZE:
                raise ValueError(f"`{name}`={value!r} gives {features:,} features; at most {MAX_SIZE:,} (2**31).")
        orphans = sorted(set(output) - set("".join(inputs)))
        if orphans:
            raise ValueError(f"output indices {orphans} of `equation` appear in no factor.")
        self.equation = f"{','.join(inputs)}->{output}"
        _check_summed_indices(inputs, output, self.sizes, self.equation)
        _check_ties(operand_names, inputs, self.sizes)
        uses = {n: operand_names.count(n) for n in names}
        frozen_names = _check_frozen(frozen, names)
        untied = tuple(n for n in names if uses[n] == 1 and n not in frozen_names)
        if zero_factor is not None and zero_factor in frozen_names:
            raise ValueError(
                f"`zero_factor`={zero_factor!r} is frozen: a constant factor cannot start at zero and learn; "
                f"choose a trainable untied factor, one of {untied}."
            )
        if zero_factor is None:
            if not untied and not frozen_names:
                raise ValueError(
                    f"`factor_names`={operand_names!r} ties every factor: ΔW is of degree >= 2 in each, so no "
                    "factor can start at zero with a non-zero gradient; add an untied factor (a core) to zero."
                )
            if not untied:
                raise ValueError(
                    f"`factor_names`={operand_names!r} with `frozen`={frozen_names!r} leaves no trainable untied "
                    "factor: ΔW is of degree >= 2 in a tied factor, so none can start at zero with a non-zero "
                    "gradient; add an untied trainable factor (a core) to zero."
                )
            zero_factor = next(n for n in reversed(operand_names) if uses[n] == 1 and n not in frozen_names)
        if uses[zero_factor] > 1:
            raise ValueError(
                f"`zero_factor`={zero_factor!r} is tied (it names {uses[zero_factor]} operands): ΔW is of degree "
                f"{uses[zero_factor]} in it, so zeroing it gives ΔW = 0 with a zero gradient as well; choose an "
                f"untied factor, one of {untied}."
            )

        self.stack_indices, self.out_indices, self.in_indices = stack_indices, out_indices, in_indices
        self.operand_names = operand_names
        self.operand_indices = tuple(inputs)
        self.factor_names = names
        self.tied_factors = {n: k for n, k in uses.items() if k > 1}
        self.zero_factor = zero_factor
        self._frozen = frozen_names
        self.factor_indices = {n: inputs[operand_names.index(n)] for n in names}
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
        """Exact number of trainable scalars: the entries of the factors not in :attr:`frozen_names` (a Python int)."""
        frozen = self.frozen_names
        return sum(math.prod(s) for n, s in self.factor_shapes.items() if n not in frozen)

    @property
    def frozen_names(self) -> tuple[str, ...]:
        """The constant factors (``frozen=`` of the constructor) in the order of :attr:`factor_names`; ``()``: none."""
        return getattr(self, "_frozen", ())

    @property
    def num_frozen(self) -> int:
        """Exact number of scalars in the frozen factors (a Python int; 0 if none), apart from :attr:`num_params`."""
        frozen = self.frozen_names
        return sum(math.prod(s) for n, s in self.factor_shapes.items() if n in frozen)

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
            "factor_names": self.operand_names,
            "zero_factor": self.zero_factor,
        } | ({"frozen": self.frozen_names} if self.frozen_names else {})

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

    def random(self, seed: int = 0, backend: str = "numpy", dtype=None, *, frozen_values=None) -> dict:
        """Every factor random and non-zero (for tests, demos and fit initialization).

        Parameters
        ----------
        seed : int
            Seed of the generator (numpy ``default_rng`` or ``torch.Generator``): a non-negative integer
            (Python or numpy) up to ``2**63 - 1``, the same range on both backends. Bools, floats,
            negative numbers and ``None`` are refused.
        backend : {"numpy", "torch"}
            Array library of the returned factors.
        dtype : optional
            A floating dtype (numpy, torch or a name such as ``"float32"``): float16, float32 or float64
            for numpy, also bfloat16 for torch; a torch dtype is accepted for numpy by name. Default:
            float64 for numpy, ``torch.get_default_dtype()`` for torch. Half precision is drawn in a
            wider float and rounded.
        frozen_values : dict, optional
            Given values of some :attr:`frozen_names` factors (e.g. a basis computed from the pretrained
            weights): floating numpy arrays or torch tensors of the factor's shape, finite, converted to
            ``backend`` and ``dtype``. The others are drawn. Every factor is drawn from the seed first,
            so the drawn factors are the same whether or not some are given.

        Returns
        -------
        dict[str, array]
            Frozen factors included, drawn from ``seed`` too, and always with numpy's generator (the
            values numpy's ``random(seed)`` gives, converted): a constant is the same array on every
            backend, so a fit or a check on torch holds the constants it would hold on numpy. The
            trainable factors follow each backend's generator.

        Raises
        ------
        TypeError, ValueError
            Naming `seed`, `backend`, `dtype` or `frozen_values` when one is not as above; a ValueError
            when the factors would not fit in memory (before anything is allocated).
        """
        seed = check_seed(seed)
        ops = ops_named(backend)
        dtype = ops.resolve_dtype(dtype)
        check_allocation(self.num_params + self.num_frozen, ops.itemsize(dtype), self._size_argument)
        gen = ops.generator(seed)
        factors = {n: ops.normal(gen, s, self.init_std(n), dtype) for n, s in self.factor_shapes.items()}
        if self.frozen_names and ops.name != "numpy":
            factors |= self._frozen_as_numpy_draws(seed, factors, ops)
        return self._with_frozen_values(factors, frozen_values, ops)

    def _frozen_as_numpy_draws(self, seed: int, factors: dict, ops) -> dict:
        """The frozen factors numpy's ``random(seed)`` draws, in ``ops``' library: constants equal on every backend.

        numpy draws float64 values and rounds them to the dtype; converting the same float64 values rounds
        them the same way, so the arrays are equal to the last bit.
        """
        gen = np.random.default_rng(seed)
        names = list(self.factor_shapes)
        last = max(names.index(n) for n in self.frozen_names)
        out = {}
        for name in names[: last + 1]:
            value = gen.standard_normal(self.factor_shapes[name]) * self.init_std(name)
            if name in self.frozen_names:
                out[name] = ops.asarray(value, like=factors[name])
        return out

    def _with_frozen_values(self, factors: dict, frozen_values, ops) -> dict:
        """``factors`` with the given frozen factors (checked, converted like the drawn ones) in place."""
        if frozen_values is None:
            return factors
        check_frozen_values(frozen_values, self.frozen_names)
        out = dict(factors)
        for name, value in frozen_values.items():
            argument = f"frozen_values[{name!r}]"
            value_ops = ops_for(value, argument=argument)
            if not value_ops.is_floating(value):
                raise TypeError(f"`{argument}` must be a floating point array, got dtype {value.dtype}.")
            shape = self.factor_shapes[name]
            if tuple(value.shape) != shape:
                raise ValueError(f"`{argument}` must have shape {shape}, got {tuple(value.shape)}.")
            if not value_ops.all_finite(value):
                raise ValueError(f"`{argument}` contains NaN or infinite values.")
            # `* 1`: a copy, so the factors never alias the caller's array
            out[name] = _als.convert(value, factors[name], ops) * 1
        return out

    def init(self, seed: int = 0, backend: str = "numpy", dtype=None, *, frozen_values=None) -> dict:
        """Training initialization: ΔW == 0 exactly (``zero_factor`` is zero), yet gradients flow.

        Same parameters as :meth:`random` (whose factors these are, but for the zero factor). The zero
        factor is trainable, never a frozen one: the frozen factors keep their random (or given) values.
        """
        kwargs = {} if frozen_values is None else {"frozen_values": frozen_values}
        factors = self.random(seed=seed, backend=backend, dtype=dtype, **kwargs)
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
        """Materialize ΔW, an array of :attr:`shape` in the factors' backend and dtype.

        Raises
        ------
        TypeError, ValueError
            As :meth:`check_factors`; a ValueError when ΔW would not fit in memory (before it is allocated).
        """
        ops = self.check_factors(factors)
        dtype = ops.dtype_of(factors[self.factor_names[0]])
        check_allocation(math.prod(self.shape), ops.itemsize(dtype), "factors")
        if ops.name == "jax" and ops.concrete(*(factors[n] for n in self.factor_names)):
            return ops.jitted(TensorNetwork.to_dense, self)({n: factors[n] for n in self.factor_names})  # as `apply`
        dense = contract(self.equation, *(factors[n] for n in self.operand_names), ops=ops)
        return dense.reshape(self.shape)

    def _sliced(self, factors, index):
        """Factors with the stack modes fixed at ``index`` and their equation terms."""
        at = dict(zip(self.stack_indices, index, strict=True))
        terms, arrays = [], []
        for name, term in zip(self.operand_names, self.operand_indices, strict=True):
            array = factors[name]
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
        TypeError
            If ``x`` is not a real array of the factors' library (torch: of their dtype, outside autocast).
        ValueError
            If ``x`` has the wrong last dimension, ``index`` is out of range, or the result would not fit
            in memory.
        """
        ops = self.check_factors(factors)
        x_ops = ops_for(x, argument="x")
        if x_ops.name != ops.name:
            raise TypeError(f"`x` is a {x_ops.name} array but the factors are {ops.name} arrays.")
        if not (ops.is_floating(x) or (ops.name == "numpy" and np.issubdtype(x.dtype, np.integer))):
            raise TypeError(f"`x` must be a real (floating or, for numpy, integer) array, got dtype {x.dtype}.")
        factor_dtype = ops.dtype_of(factors[self.factor_names[0]])
        if ops.name == "torch" and x.dtype != factor_dtype and not ops.autocast_enabled(x):
            # torch would fail deep inside einsum (outside autocast); numpy promotes, as numpy users expect
            raise TypeError(f"`x` has dtype {x.dtype} but the factors are {factor_dtype}; cast one of them.")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"`x` must have last dimension `in_features`={self.in_features}, got shape {tuple(x.shape)}."
            )
        lead = tuple(x.shape[:-1])
        if index is not None:
            index = normalize_index(index, self.stack)
        slices = self.num_slices if index is None else 1
        check_allocation(math.prod(lead) * slices * self.out_features, ops.itemsize(factor_dtype), "x")
        if ops.name == "jax" and ops.concrete(x, *(factors[n] for n in self.factor_names)):
            # one XLA program per shapes, not one compiled per eager operation; traced inputs run plainly
            return ops.jitted(TensorNetwork.apply, self, index=index)({n: factors[n] for n in self.factor_names}, x)
        x2 = x.reshape((math.prod(lead), *(self.sizes[c] for c in self.in_indices)))
        batch = opt_einsum.get_symbol(_first_free_symbol(self.sizes))
        if index is None:
            terms, arrays = list(self._inputs), [factors[n] for n in self.operand_names]
            out_terms = self.stack_indices + batch + self.out_indices
            out_shape = (*self.stack, *lead, self.out_features)
        else:
            terms, arrays = self._sliced(factors, index)
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

        The generic route is alternating least squares: a factor on one operand enters ΔW linearly, so
        with the others fixed its best value solves a linear least-squares problem, whose normal
        equations are formed by two contractions (never the full design matrix). A tied factor (on
        several operands) is not linear: its block update is a Levenberg-Marquardt (damped Gauss-Newton)
        step on the true error, accepted only if it lowers it, so every sweep lowers the error or keeps
        it. That step solves a dense ``n × n`` system, ``n`` the tied factor's number of entries.

        The :attr:`frozen_names` factors are constants: they are held at their starting values (those of
        ``init``, else of :meth:`random` with ``seed``) and only the trainable factors are fitted. To fit
        with given frozen values, start from ``init=self.random(seed, frozen_values=...)``.

        Parameters
        ----------
        dense : array of :attr:`shape`
            Tensor to approximate (numpy or torch).
        init : dict, optional
            Starting factors; default :meth:`random` with ``seed``. Its frozen factors are kept as given.
        n_iter_max : int
            Maximum number of sweeps.
        tol : float
            Stop when the relative error improves by less than ``tol`` in a sweep.
        seed : int
            Seed of the random start.

        Returns
        -------
        factors : dict
            In the backend and dtype of ``dense`` (half precision computed in float32). Any finite
            ``dense`` is fitted: beyond ``2**±12`` the sweeps run on ``dense / 2**e``, its largest entry
            in ``[0.5, 1)``, and the scale is spread back over the factors by powers of two.
        rel_err : float
            ``‖dense - to_dense(factors)‖ / ‖dense‖`` of the returned factors (:meth:`relative_error`).

        Raises
        ------
        TypeError, ValueError
            Naming the argument: `dense` of the wrong shape or with NaN or infinite entries, `init`
            malformed or not finite, `n_iter_max` not an integer >= 0, `tol` not a finite number >= 0,
            `seed` not a non-negative integer.
        """
        n_iter_max, tol, seed = check_n_iter_max(n_iter_max), check_tol(tol), check_seed(seed)
        ops = self.check_dense(dense)
        init = _als.check_init(self, init)

        frozen = self.frozen_names

        def solve(x):
            if init is None:
                start = self.random(seed=seed, backend=ops.name, dtype=ops.dtype_of(x))
            else:
                start = _als.start_from(init, x, ops)
                # a constant keeps its value: only trainable factors are brought to a scale near 1
                start.update({n: _als.convert(init[n], x, ops) for n in frozen})
            # a random start is restarted from other seeds while it ends above round-off (restarts by the error)
            draw = (
                None
                if init is not None
                else (lambda k: self.random(seed=_als.restart_seed(seed, k), backend=ops.name, dtype=ops.dtype_of(x)))
            )
            fitted = _als.fit_als(self, x, start, n_iter_max=n_iter_max, tol=tol, ops=ops, draw=draw)[0]
            return fitted | {n: start[n] for n in frozen}  # held fixed (also for a zero `dense`)

        carrier = tuple(n for n in self.factor_names if n not in self.tied_factors and n not in frozen)
        return _als.fit_scaled(self, dense, solve, ops, carrier=carrier)

    def relative_error(self, dense, factors) -> float:
        """``‖dense - to_dense(factors)‖ / ‖dense‖`` (``‖to_dense(factors)‖`` for a zero ``dense``).

        Computed at least in float32 (half-precision arrays are widened) and free of over- and underflow:
        the arrays are scaled by powers of two before any product or square, so any finite ``dense``
        and ``factors`` give the error the formula has in exact range.
        """
        ops = self.check_dense(dense)
        factor_ops = self.check_factors(factors)
        if factor_ops.name != ops.name:
            raise TypeError(
                f"`dense` is a {ops.name} array but `factors` are {factor_ops.name} arrays; use one library."
            )
        return _als.relative_error(self, dense, factors, ops)

    # ------------------------------------------------------------------ the format protocol
    #: Sweeps of the generic ALS fit when :meth:`init_from_weights` only needs directions.
    init_sweeps = 50

    @property
    def slice_rank(self) -> int:
        """Upper bound on the rank of every slice ``ΔW[index]``: the network's smallest cut.

        Split the operands into a set ``S`` on the output side and the rest on the input side; a slice
        then factors as (contraction of ``S``) @ (contraction of the rest) over the indices that cross:
        a bond carried on both sides, an output index carried by an input-side operand and an input index
        carried by an output-side operand (stack indices are fixed in a slice). The bound is the smallest
        product of crossing sizes over all splits (``S`` empty gives ``out_features``, ``S`` everything
        ``in_features``): e.g. ``min(a·c, b·d, a·d, b·c)`` for a Kronecker product ``A (a, b) ⊗ B (c, d)``,
        whose rank is at most ``min(a, b)·min(c, d)``. Every split is tried up to 12 operands; beyond, the
        splits of one operand against the rest. Built-in formats override it with their closed form;
        :meth:`lora_factors` returns factors this wide.
        """
        return _min_cut(self)

    def lora_factors(self, factors, index=()):
        """``(B, A)``, ``B (out_features, R)`` and ``A (R, in_features)`` with ``B @ A == ΔW[index]``.

        ``R`` is :attr:`slice_rank`. This generic route materializes the slice and keeps its ``R``
        leading singular pairs (exact, since ``R`` bounds the slice's rank); the built-in formats override it
        with closed forms, exact for LoRA, Tucker-2, CP and LoRA² (no dense matrix). Arrays stay in the
        factors' backend and dtype.

        Parameters
        ----------
        factors : dict
            Factors of this format.
        index : tuple of int or int
            Which slice of the stack.

        Returns
        -------
        tuple of array
            ``(B, A)``.

        Raises
        ------
        TypeError, ValueError
            As :meth:`check_factors`, and naming `index` when it is out of range.
        """
        ops = self.check_factors(factors)
        index = normalize_index(index, self.stack)
        return self._svd_lora_factors(factors, index, ops)

    def _svd_lora_factors(self, factors, index, ops):
        """The slice's ``slice_rank`` leading singular pairs, ``(U S, Vᵀ)``."""
        like = factors[self.factor_names[0]]
        dtype = ops.dtype_of(like)
        eye = ops.eye(self.in_features, dtype, like=like)
        dense = ops.swapaxes(self.apply(factors, eye, index), 0, 1)
        work = ops.working_dtype(dtype)  # no SVD in half precision: float32, then rounded back
        u, sv, vt = ops.svd(ops.cast(dense, work) if work != dtype else dense)
        rank = self.slice_rank
        B, A = u[:, :rank] * sv[:rank], vt[:rank]
        return (B, A) if work == dtype else (ops.cast(B, dtype), ops.cast(A, dtype))

    def init_from_weights(self, dense) -> dict:
        """Factors fitted to ``dense`` (the pretrained weights of a stack) whose directions seed an init.

        ``nn``'s ``init="svd"`` zeroes :attr:`zero_factor` and rescales the others. The generic fit is
        alternating least squares, stopped after :attr:`init_sweeps` sweeps (directions are all it needs);
        formats with a closed-form fit (SVD, HOOI, TT-SVD) run it as :meth:`fit` does.

        Parameters
        ----------
        dense : array of :attr:`shape`
            The weights to fit (numpy or torch).

        Returns
        -------
        dict
            Factors in ``dense``'s backend and dtype.
        """
        return self.fit(dense, n_iter_max=self.init_sweeps)[0]

    #: The factors that carry the rank components of every slice, for rank pruning
    #: (:class:`tensorpeft.nn.RankPruner`): None (the default) when the format has none, else a dict
    #: from factor name to the axis that indexes the components, counted from the end. The first entry
    #: is the *gate*, of shape ``(*stack, r)``: a zero entry removes one component from its slice. Each
    #: other entry is a ``(*stack, r, k)`` (axis ``-2``) or ``(*stack, k, r)`` (axis ``-1``) factor
    #: whose importance, averaged over ``k``, adds to its component's score.
    rank_components: ClassVar[dict[str, int] | None] = None

    def regularizer(self, factors) -> dict:
        """Named penalty terms the format asks training to add to the loss; here none.

        :meth:`tensorpeft.nn.TensorPeftModel.orthogonality_loss` adds up the terms of every stack.

        Parameters
        ----------
        factors : dict
            The format's factors (numpy or torch).

        Returns
        -------
        dict
            Term name → scalar (a 0-d array or tensor, differentiable in the factors); empty here.
            :class:`OrthogonalProjection` returns its :meth:`~OrthogonalProjection.orthogonality_penalty`.
        """
        self.check_factors(factors)
        return {}


def _first_free_symbol(sizes) -> int:
    k = 0
    while opt_einsum.get_symbol(k) in sizes:
        k += 1
    return k


def fresh_letters(count: int, avoid: str, name: str = "stack") -> str:
    """``count`` einsum letters (a-z, A-Z) not in ``avoid``, readable lower-case first.

    Raises ValueError naming ``name`` (the argument the count comes from) when the format's letters,
    these and ``avoid``, would be more than a format may use (:data:`.validate.MAX_FORMAT_LETTERS`).
    """
    check_index_letters(count + len(set(avoid)), name)
    free = [c for c in _ASCII_LETTERS if c not in avoid]
    return "".join(free[:count])


#: Largest operand count whose every split :func:`_min_cut` tries (2**12 splits).
_EXHAUSTIVE_CUT_OPERANDS = 12


def _min_cut(fmt: TensorNetwork) -> int:
    """The smallest product of crossing index sizes over splits of the operands (see ``slice_rank``)."""
    n = len(fmt.operand_indices)
    carried = {}
    for k, term in enumerate(fmt.operand_indices):
        for c in term:
            carried[c] = carried.get(c, 0) | (1 << k)
    stack, out, inp = set(fmt.stack_indices), set(fmt.out_indices), set(fmt.in_indices)
    letters = [(c, mask, fmt.sizes[c]) for c, mask in carried.items() if c not in stack and fmt.sizes[c] > 1]
    everyone = (1 << n) - 1
    if n <= _EXHAUSTIVE_CUT_OPERANDS:
        splits = range(1 << n)
    else:
        splits = [0, everyone, *(1 << k for k in range(n)), *(everyone ^ (1 << k) for k in range(n))]
    best = min(fmt.out_features, fmt.in_features)
    for side in splits:  # ``side``: the operands on the output side
        cost = 1
        for c, mask, size in letters:
            on_out = c in out or mask & side
            on_in = c in inp or mask & ~side & everyone
            if on_out and on_in:
                cost *= size
                if cost >= best:
                    break
        best = min(best, cost)
    return best
