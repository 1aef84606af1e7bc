"""Hypothesis strategies for formats: small random built-in formats and custom tensor networks.

Sizes are kept small on purpose (features up to 6, stacks of at most two modes of size 3): the
properties the suite checks do not depend on size, and small instances let hypothesis run hundreds of
them, gradcheck included, in seconds.
"""

from __future__ import annotations

import math
import numbers

from hypothesis import strategies as st

from ..decomp import CP, LoRA, OrthogonalProjection, TensorNetwork, TensorTrain, Tucker2, balanced_modes
from ..decomp.validate import check_size, prime_factors

__all__ = [
    "cp_formats",
    "formats",
    "lora_formats",
    "orthogonal_formats",
    "tensor_networks",
    "tensor_train_formats",
    "tucker2_formats",
]


#: Largest ``stack_modes`` of the built-in format strategies (a tensor train spends two einsum letters
#: per stack mode, and a format may use 51).
MAX_STACK_MODES = 8
#: Largest number of modes ``in_modes``/``out_modes`` of a drawn tensor train have (prime factors are merged).
_MAX_TRAIN_MODES = 6


def _check_nonnegative_int(value, name: str, bound: int | None = None) -> int:
    """``value`` as an int in ``[0, bound]``; TypeError for a non-integer (bools too), ValueError out of range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be a non-negative integer, got {value!r} ({type(value).__name__}).")
    if value < 0 or (bound is not None and value > bound):
        upper = "" if bound is None else f" and at most {bound}"
        raise ValueError(f"`{name}` must be a non-negative integer{upper}, got {value!r}.")
    return int(value)


def _stacks(stack_modes: int, max_stack: int):
    return st.lists(st.integers(1, max_stack), max_size=stack_modes).map(tuple)


def _sizes(stack_modes, max_stack, max_features):
    stack_modes = _check_nonnegative_int(stack_modes, "stack_modes", MAX_STACK_MODES)
    max_stack = check_size(max_stack, "max_stack")
    max_features = check_size(max_features, "max_features")
    return _stacks(stack_modes, max_stack), st.integers(1, max_features)


def lora_formats(*, stack_modes: int = 2, max_stack: int = 3, max_features: int = 6):
    """Strategy for small :class:`~tensorpeft.decomp.LoRA` formats.

    Parameters
    ----------
    stack_modes : int
        Largest number of stack modes, at most 8 (``()`` is always possible).
    max_stack : int
        Largest size of a stack mode, at most 2**31.
    max_features : int
        Largest ``out_features`` and ``in_features``, at most 2**31.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`~tensorpeft.decomp.LoRA`, with ``1 <= rank <= min(out_features, in_features)``.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> from tensorpeft.testing import lora_formats
    >>> @settings(max_examples=10)
    ... @given(lora_formats())
    ... def test(fmt):
    ...     assert fmt.rank <= min(fmt.out_features, fmt.in_features)
    >>> test()
    """
    stacks, features = _sizes(stack_modes, max_stack, max_features)

    @st.composite
    def build(draw):
        stack, d_out, d_in = draw(stacks), draw(features), draw(features)
        return LoRA(stack, d_out, d_in, rank=draw(st.integers(1, min(d_out, d_in))))

    return build()


def tucker2_formats(*, stack_modes: int = 2, max_stack: int = 3, max_features: int = 6):
    """Strategy for small :class:`~tensorpeft.decomp.Tucker2` formats.

    Ranks are a single int (``<= min(out_features, in_features)``) or a rectangular pair
    ``(r_out, r_in)`` with ``r_out <= out_features`` and ``r_in <= in_features``.

    Parameters
    ----------
    stack_modes : int
        Largest number of stack modes, at most 8 (``()`` is always possible).
    max_stack : int
        Largest size of a stack mode, at most 2**31.
    max_features : int
        Largest ``out_features`` and ``in_features``, at most 2**31.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`~tensorpeft.decomp.Tucker2`.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> from tensorpeft.testing import tucker2_formats
    >>> @settings(max_examples=10)
    ... @given(tucker2_formats(stack_modes=1))
    ... def test(fmt):
    ...     r_out, r_in = fmt.rank
    ...     assert fmt.num_params == r_out * fmt.out_features + r_in * fmt.in_features + fmt.num_slices * r_out * r_in
    >>> test()
    """
    stacks, features = _sizes(stack_modes, max_stack, max_features)

    @st.composite
    def build(draw):
        stack, d_out, d_in = draw(stacks), draw(features), draw(features)
        square = st.integers(1, min(d_out, d_in))
        pair = st.tuples(st.integers(1, d_out), st.integers(1, d_in))
        return Tucker2(stack, d_out, d_in, rank=draw(st.one_of(square, pair)))

    return build()


def _divisors(n: int) -> list[int]:
    """The divisors of ``n`` in increasing order, from its prime factors (not by trying every k <= n)."""
    divisors = {1}
    for p in prime_factors(n):
        divisors |= {d * p for d in divisors}
    return sorted(divisors)


def cp_formats(*, stack_modes: int = 2, max_stack: int = 3, max_features: int = 6, max_rank: int = 4):
    """Strategy for small :class:`~tensorpeft.decomp.CP` formats, with and without a head split.

    Parameters
    ----------
    stack_modes, max_stack, max_features : int
        As :func:`lora_formats`.
    max_rank : int
        Largest CP rank, at most 2**31 (CP has no upper bound; the rank may exceed the feature sizes).

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`~tensorpeft.decomp.CP`; ``heads`` is ``None`` or a divisor of ``out_features``.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> from tensorpeft.testing import cp_formats
    >>> @settings(max_examples=10)
    ... @given(cp_formats())
    ... def test(fmt):
    ...     assert fmt.heads is None or fmt.out_features % fmt.heads == 0
    >>> test()
    """
    stacks, features = _sizes(stack_modes, max_stack, max_features)
    max_rank = check_size(max_rank, "max_rank")

    @st.composite
    def build(draw):
        stack, d_out, d_in = draw(stacks), draw(features), draw(features)
        heads = draw(st.one_of(st.none(), st.sampled_from(_divisors(d_out))))
        return CP(stack, d_out, d_in, rank=draw(st.integers(1, max_rank)), heads=heads)

    return build()


def _factorizations(n: int):
    """Strategy for ordered factorizations of ``n`` into at most ``_MAX_TRAIN_MODES`` modes (a 1 now and then)."""
    primes = prime_factors(n)

    @st.composite
    def build(draw):
        order = draw(st.permutations(primes))
        modes = []
        for q in order:
            if modes and (len(modes) >= _MAX_TRAIN_MODES - 1 or draw(st.booleans())):
                modes[-1] *= q
            else:
                modes.append(q)
        if not modes or draw(st.integers(0, 4)) == 0:
            modes.insert(draw(st.integers(0, len(modes))), 1)
        return tuple(modes)

    return build()


def _modes(n: int):
    """``None`` (the default modes) or an explicit factorization; explicit only when the default has too many."""
    explicit = _factorizations(n)
    return explicit if len(balanced_modes(n)) > _MAX_TRAIN_MODES else st.one_of(st.none(), explicit)


def tensor_train_formats(*, stack_modes: int = 2, max_stack: int = 3, max_features: int = 6, max_rank: int = 3):
    """Strategy for small :class:`~tensorpeft.decomp.TensorTrain` formats.

    Draws explicit ``in_modes``/``out_modes`` (any ordered factorization, size-1 modes included) or
    the automatic ones, ``share_stack`` True or False, and a rank that is an int (capped per bond) or
    an explicit tuple within every bond's bound.

    Parameters
    ----------
    stack_modes, max_stack, max_features : int
        As :func:`lora_formats`.
    max_rank : int
        Largest bond rank, at most 2**31. ``in_modes`` and ``out_modes`` have at most 6 modes each.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`~tensorpeft.decomp.TensorTrain`.

    Examples
    --------
    >>> import math
    >>> from hypothesis import given, settings
    >>> from tensorpeft.testing import tensor_train_formats
    >>> @settings(max_examples=10)
    ... @given(tensor_train_formats())
    ... def test(fmt):
    ...     assert math.prod(fmt.in_modes) == fmt.in_features
    >>> test()
    """
    stacks, features = _sizes(stack_modes, max_stack, max_features)
    max_rank = check_size(max_rank, "max_rank")

    @st.composite
    def build(draw):
        stack, d_out, d_in = draw(stacks), draw(features), draw(features)
        in_modes = draw(_modes(d_in))
        out_modes = draw(_modes(d_out))
        share = draw(st.booleans())
        auto_in = balanced_modes(d_in) if in_modes is None else in_modes
        auto_out = tuple(reversed(balanced_modes(d_out))) if out_modes is None else out_modes
        train = (*stack, *auto_in, *auto_out) if share else (*auto_in, *auto_out)
        bounds = [min(math.prod(train[: k + 1]), math.prod(train[k + 1 :])) for k in range(len(train) - 1)]
        explicit = st.tuples(*(st.integers(1, min(b, max_rank)) for b in bounds))
        rank = draw(st.one_of(st.integers(1, max_rank), explicit))
        return TensorTrain(stack, d_out, d_in, rank=rank, in_modes=in_modes, out_modes=out_modes, share_stack=share)

    return build()


def orthogonal_formats(*, stack_modes: int = 2, max_stack: int = 3, max_features: int = 6):
    """Strategy for small :class:`~tensorpeft.decomp.OrthogonalProjection` formats.

    ``inner`` is omitted (so equal to ``rank``) or drawn in ``rank <= inner <= min(out_features,
    in_features)``.

    Parameters
    ----------
    stack_modes : int
        Largest number of stack modes, at most 8 (``()`` is always possible).
    max_stack : int
        Largest size of a stack mode, at most 2**31.
    max_features : int
        Largest ``out_features`` and ``in_features``, at most 2**31.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`~tensorpeft.decomp.OrthogonalProjection`.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> from tensorpeft.testing import orthogonal_formats
    >>> @settings(max_examples=10)
    ... @given(orthogonal_formats())
    ... def test(fmt):
    ...     assert fmt.rank <= fmt.inner <= min(fmt.out_features, fmt.in_features)
    >>> test()
    """
    stacks, features = _sizes(stack_modes, max_stack, max_features)

    @st.composite
    def build(draw):
        stack, d_out, d_in = draw(stacks), draw(features), draw(features)
        inner = draw(st.one_of(st.none(), st.integers(1, min(d_out, d_in))))
        rank = draw(st.integers(1, inner or min(d_out, d_in)))
        return OrthogonalProjection(stack, d_out, d_in, rank=rank, inner=inner)

    return build()


def formats(*, stack_modes: int = 2, max_stack: int = 3, max_features: int = 6):
    """Strategy for a small instance of any built-in format.

    One of :func:`lora_formats`, :func:`tucker2_formats`, :func:`cp_formats`,
    :func:`tensor_train_formats` and :func:`orthogonal_formats`, with the same size limits (and their
    default rank limits).

    Parameters
    ----------
    stack_modes : int
        Largest number of stack modes, at most 8 (``()`` is always possible).
    max_stack : int
        Largest size of a stack mode, at most 2**31.
    max_features : int
        Largest ``out_features`` and ``in_features``, at most 2**31.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`~tensorpeft.decomp.TensorNetwork` subclasses.

    Examples
    --------
    >>> from hypothesis import given, settings
    >>> from tensorpeft.testing import formats
    >>> @settings(max_examples=10)
    ... @given(formats())
    ... def test(fmt):
    ...     assert fmt.shape == (*fmt.stack, fmt.out_features, fmt.in_features)
    >>> test()
    """
    kwargs = {"stack_modes": stack_modes, "max_stack": max_stack, "max_features": max_features}
    return st.one_of(
        lora_formats(**kwargs),
        tucker2_formats(**kwargs),
        cp_formats(**kwargs),
        tensor_train_formats(**kwargs),
        orthogonal_formats(**kwargs),
    )


#: Bounds of :func:`tensor_networks`' arguments: its letters are a-z (19 left for the stack after
#: two output, two input and three bond letters), and its sizes are trimmed one step at a time.
MAX_NETWORK_FACTORS = 16
MAX_NETWORK_STACK_MODES = 19
MAX_NETWORK_SIZE = 2**10
MAX_NETWORK_ELEMENTS = 2**20


def tensor_networks(
    *, max_factors: int = 4, stack_modes: int = 2, max_size: int = 3, max_elements: int = 96, frozen: bool = True
):
    """Strategy for random valid custom :class:`~tensorpeft.decomp.TensorNetwork` formats.

    Every index letter (stack, output, input or bond) is carried by a random non-empty set of factors,
    so the networks include shared stack modes, hyperedges (an index on three factors) and dangling
    bonds (on one factor only, hence summed; of size 1, as :class:`~tensorpeft.decomp.TensorNetwork`
    requires of an index summed inside one factor). Features may be split into two modes. With
    ``frozen``, some networks hold frozen factors (constants drawn from the seed, as in VeRA), never the
    zero factor.

    Parameters
    ----------
    max_factors : int
        Largest number of factors, at most 16.
    stack_modes : int
        Largest number of stack modes, at most 19 (the letters are a-z).
    max_size : int
        Largest size of one index, at most 2**10.
    max_elements : int
        Upper bound on every factor's size and on the dense tensor's size, so that gradchecks and
        naive references stay cheap (sizes are trimmed, largest first, until it holds); at most 2**20.
    frozen : bool
        Whether networks with frozen factors are drawn too (``frozen=``; named factors only).

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`~tensorpeft.decomp.TensorNetwork`.

    Examples
    --------
    >>> import math
    >>> from hypothesis import given, settings
    >>> from tensorpeft.testing import tensor_networks
    >>> @settings(max_examples=10)
    ... @given(tensor_networks())
    ... def test(fmt):
    ...     counts = {n: math.prod(s) for n, s in fmt.factor_shapes.items()}
    ...     assert fmt.num_params == sum(c for n, c in counts.items() if n not in fmt.frozen_names)
    >>> test()
    """
    max_factors = check_size(max_factors, "max_factors", MAX_NETWORK_FACTORS)
    stack_modes = _check_nonnegative_int(stack_modes, "stack_modes", MAX_NETWORK_STACK_MODES)
    max_size = check_size(max_size, "max_size", MAX_NETWORK_SIZE)
    max_elements = check_size(max_elements, "max_elements", MAX_NETWORK_ELEMENTS)
    if not isinstance(frozen, bool):
        raise TypeError(f"`frozen` must be a bool, got {frozen!r} ({type(frozen).__name__}).")

    @st.composite
    def build(draw):
        n_stack = draw(st.integers(0, stack_modes))
        n_out, n_in, n_bond = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(0, 3))
        letters = "abcdefghijklmnopqrstuvwxyz"
        stack = letters[:n_stack]
        out = letters[n_stack : n_stack + n_out]
        inp = letters[n_stack + n_out : n_stack + n_out + n_in]
        bonds = letters[n_stack + n_out + n_in : n_stack + n_out + n_in + n_bond]
        n_factors = draw(st.integers(1, max_factors))
        members: list[set[str]] = [set() for _ in range(n_factors)]
        for letter in stack + out + inp + bonds:
            for k in draw(st.sets(st.integers(0, n_factors - 1), min_size=1)):
                members[k].add(letter)
        for k in range(n_factors):
            if not members[k]:
                members[k].add(draw(st.sampled_from(stack + out + inp + bonds)))
        sizes = {c: draw(st.integers(1, max_size)) for c in stack + out + inp + bonds}
        for c in bonds:  # summed inside one factor, a bond of size > 1 only adds up redundant entries
            if sum(c in m for m in members) == 1:
                sizes[c] = 1
        _trim(sizes, [*members, set(stack + out + inp)], max_elements)
        terms = ["".join(draw(st.permutations(sorted(m)))) for m in members]
        names = draw(st.one_of(st.none(), st.just(tuple(f"factor_{k}" for k in range(n_factors)))))
        zero = draw(st.integers(0, n_factors - 1))
        fixed = ()
        if frozen and names is not None and n_factors > 1:
            others = [n for k, n in enumerate(names) if k != zero]
            chosen = draw(st.sets(st.sampled_from(others), max_size=len(others)))
            fixed = tuple(n for n in names if n in chosen)
        return TensorNetwork(
            f"{','.join(terms)}->{stack + out + inp}",
            sizes,
            stack_indices=stack,
            out_indices=out,
            in_indices=inp,
            factor_names=names,
            zero_factor=None if names is None else names[zero],
            frozen=fixed,
        )

    return build()


def _trim(sizes: dict[str, int], groups: list[set[str]], limit: int) -> None:
    """Shrink the largest sizes in place until every group's size product is at most ``limit``."""
    for group in groups:
        while math.prod(sizes[c] for c in group) > limit:
            largest = max(sorted(group), key=lambda c: sizes[c])
            sizes[largest] -= 1
