"""Sums of formats: ΔW = ΔW_1 + ΔW_2 + ..., each term a format of one shape with its own factors.

A sum is not one einsum product, so :class:`Sum` is not an equation: it holds its terms and answers
every verb of the format vocabulary through theirs (the factored ``apply`` of a sum is the sum of the
terms' factored applies, never the dense update). It is a :class:`~tensorpeft.decomp.TensorNetwork`
for the rest of the library (``nn``, the budget search, ``check_format``), without an ``equation``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import _als
from ._contract import contract
from ._network import TensorNetwork, check_frozen_values
from .validate import check_n_iter_max, check_seed, check_tol, normalize_index

__all__ = ["Sum"]


def _prefix(k: int) -> str:
    return f"t{k}_"


def _term_seed(seed: int, k: int) -> int:
    """A seed for term ``k`` drawn from ``seed``: distinct terms of one format must not start equal."""
    state = np.random.SeedSequence([seed, k]).generate_state(2, np.uint64)
    return int((int(state[0]) << 32 ^ int(state[1])) & (2**63 - 1))


class Sum(TensorNetwork):
    """The sum of formats of one shape: ``ΔW = ΔW_1 + ΔW_2 + ...``, a format like any other.

    A block-term decomposition with blocks of *different* structures (a Tucker-2 block plus a CP
    block), LoRA plus a Kronecker product: anything a single einsum product cannot write. Every verb
    goes through the terms' own: ``apply`` adds the terms' factored applies, ``init`` zeroes each
    term's zero factor, ``lora_factors`` concatenates the terms' LoRA factors along the rank.

    Parameters
    ----------
    *terms : TensorNetwork
        At least two formats of one :attr:`shape` (any format: built-in, custom network, subclass).
        A term that is itself a :class:`Sum` is flattened: ``Sum(Sum(a, b), c) == Sum(a, b, c)``.

    Attributes
    ----------
    terms : tuple of TensorNetwork
        The terms, in order.
    factor_names : tuple of str
        The terms' factor names, namespaced: factor ``A`` of term ``k`` (counted from 0) is ``"t{k}_A"``
        (``"t0_A"``, ``"t1_G"``). No dot, so each is a legal ``nn.Parameter`` name and safetensors key.
    frozen_names : tuple of str
        The terms' frozen (constant) factors, namespaced the same way (empty when none is frozen).
    zero_factors : tuple of str
        The factor of each term that :meth:`init` zeroes (each term's ``zero_factor``), namespaced.
    num_params : int
        The sum of the terms' parameter counts.

    Raises
    ------
    TypeError
        If a term is not a format (a :class:`TensorNetwork`).
    ValueError
        If fewer than two terms are given, or the terms' shapes differ.

    Examples
    --------
    LoRA plus a Tucker-2 block over 3 layers:

    >>> import numpy as np
    >>> from tensorpeft import decomp
    >>> f = decomp.Sum(decomp.LoRA((3,), 8, 6, rank=1), decomp.Tucker2((3,), 8, 6, rank=2))
    >>> f.factor_names
    ('t0_A', 't0_B', 't1_A', 't1_G', 't1_B')
    >>> f.num_params == 3 * (8 + 6) + (8 * 2 + 3 * 4 + 6 * 2)
    True
    >>> fac = f.random(seed=0)
    >>> x = np.ones((2, 6))
    >>> bool(np.allclose(f.apply(fac, x, index=1), x @ f.to_dense(fac)[1].T))
    True
    >>> f.slice_rank  # 1 + min(2, 2)
    3
    """

    label = "sum of formats"
    zero_factor = None  # one per term: see `zero_factors`

    def __init__(self, *terms):
        flat = []
        for k, term in enumerate(terms):
            if isinstance(term, Sum):
                flat.extend(term.terms)
            elif isinstance(term, TensorNetwork):
                flat.append(term)
            else:
                raise TypeError(
                    f"`terms[{k}]` must be a format (a decomp.TensorNetwork such as decomp.LoRA(...)), "
                    f"got {type(term).__name__}."
                )
        if len(flat) < 2:
            raise ValueError(f"`terms` must be at least 2 formats of one shape, got {len(flat)}.")
        shape = tuple(flat[0].shape)
        for k, term in enumerate(flat[1:], start=1):
            if tuple(term.shape) != shape:
                raise ValueError(
                    f"`terms[{k}]` has shape {tuple(term.shape)} but `terms[0]` has shape {shape}; every term of "
                    "a Sum must have one shape (*stack, out_features, in_features)."
                )
        self.terms = tuple(flat)
        self._names = tuple(
            {_prefix(k) + n: n for n in term.factor_names} for k, term in enumerate(self.terms)
        )  # namespaced -> the term's own name, per term
        self.factor_names = tuple(n for names in self._names for n in names)
        self.operand_names = self.factor_names
        self._frozen = tuple(
            _prefix(k) + n for k, term in enumerate(self.terms) for n in getattr(term, "frozen_names", ())
        )
        self.zero_factors = tuple(
            _prefix(k) + term.zero_factor
            for k, term in enumerate(self.terms)
            if getattr(term, "zero_factor", None) is not None
        )
        self.tied_factors = {
            _prefix(k) + n: m for k, term in enumerate(self.terms) for n, m in getattr(term, "tied_factors", {}).items()
        }

    # ------------------------------------------------------------------ shapes and counts
    @property
    def stack(self) -> tuple[int, ...]:
        """Sizes of the stack modes (the terms')."""
        return tuple(self.terms[0].stack)

    @property
    def out_features(self) -> int:
        """Output features."""
        return self.terms[0].out_features

    @property
    def in_features(self) -> int:
        """Input features."""
        return self.terms[0].in_features

    @property
    def shape(self) -> tuple[int, ...]:
        """``(*stack, out_features, in_features)``, every term's shape."""
        return tuple(self.terms[0].shape)

    @property
    def factor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each factor, by namespaced name (term 0's first)."""
        return {
            name: tuple(term.factor_shapes[own])
            for term, names in zip(self.terms, self._names, strict=True)
            for name, own in names.items()
        }

    @property
    def num_params(self) -> int:
        """The sum of the terms' parameter counts (a Python int)."""
        return sum(term.num_params for term in self.terms)

    @property
    def num_frozen(self) -> int:
        """The sum of the terms' frozen element counts (0 when no term freezes a factor)."""
        return sum(getattr(term, "num_frozen", 0) for term in self.terms)

    # ------------------------------------------------------------------ identity
    def _args(self) -> dict:
        return {"terms": self.terms}

    def __repr__(self) -> str:
        return f"Sum({', '.join(repr(t) for t in self.terms)})"

    # ------------------------------------------------------------------ factors
    def split(self, factors) -> list[dict]:
        """The factors of each term under the term's own names (checked first, naming the namespaced factor).

        Parameters
        ----------
        factors : dict
            Factors of this sum (namespaced names).

        Returns
        -------
        list of dict
            One factor dict per term.
        """
        self.check_factors(factors)
        return self._split(factors)

    def _split(self, factors) -> list[dict]:
        return [{own: factors[name] for name, own in names.items()} for names in self._names]

    def join(self, parts) -> dict:
        """The namespaced factor dict of a sum from one factor dict per term (the inverse of :meth:`split`)."""
        return {name: part[own] for part, names in zip(parts, self._names, strict=True) for name, own in names.items()}

    def init_std(self, name: str) -> float:
        """The standard deviation its term gives factor ``name`` (namespaced)."""
        k, own = self._locate(name)
        return self.terms[k].init_std(own)

    def _locate(self, name):
        for k, names in enumerate(self._names):
            if name in names:
                return k, names[name]
        raise ValueError(f"`name` must be one of {list(self.factor_names)}, got {name!r}.")

    def _per_term(self, frozen_values) -> list[dict]:
        """``frozen_values`` (namespaced) as one dict per term, under the terms' own names."""
        if frozen_values is None:
            return [{} for _ in self.terms]
        check_frozen_values(frozen_values, self.frozen_names)
        return [{own: frozen_values[n] for n, own in names.items() if n in frozen_values} for names in self._names]

    def _draw(self, verb: str, seed, backend, dtype, frozen_values) -> dict:
        seed = check_seed(seed)
        given = self._per_term(frozen_values)
        parts = []
        for k, term in enumerate(self.terms):
            kwargs = {"frozen_values": given[k]} if given[k] else {}
            parts.append(getattr(term, verb)(seed=_term_seed(seed, k), backend=backend, dtype=dtype, **kwargs))
        return self.join(parts)

    def random(self, seed: int = 0, backend: str = "numpy", dtype=None, *, frozen_values=None) -> dict:
        """Every term's :meth:`~TensorNetwork.random`, each with its own seed drawn from ``seed``.

        Terms of one format thus start different. Parameters as :meth:`TensorNetwork.random`;
        ``frozen_values`` names the namespaced frozen factors (``{"t1_A": array}``).
        """
        return self._draw("random", seed, backend, dtype, frozen_values)

    def init(self, seed: int = 0, backend: str = "numpy", dtype=None, *, frozen_values=None) -> dict:
        """Every term's :meth:`~TensorNetwork.init`: ΔW == 0 exactly, each term's zero factor zero.

        Each term's other factors are non-zero, so every zero factor gets a gradient. Parameters as
        :meth:`random`.
        """
        return self._draw("init", seed, backend, dtype, frozen_values)

    # ------------------------------------------------------------------ dense and apply
    def to_dense(self, factors):
        """The sum of the terms' dense updates, an array of :attr:`shape` in the factors' backend and dtype.

        Raises
        ------
        TypeError, ValueError
            As :meth:`~TensorNetwork.check_factors` (naming the namespaced factor).
        """
        parts = self.split(factors)
        dense = None
        for term, part in zip(self.terms, parts, strict=True):
            d = term.to_dense(part)
            dense = d if dense is None else dense + d
        return dense

    def apply(self, factors, x, index=()):
        """``x @ ΔW[index].T`` as the sum of the terms' factored applies (ΔW is never formed).

        Parameters, returns and errors as :meth:`TensorNetwork.apply`.
        """
        parts = self.split(factors)
        y = None
        for term, part in zip(self.terms, parts, strict=True):
            t = term.apply(part, x, index)
            y = t if y is None else y + t
        return y

    # ------------------------------------------------------------------ fit
    #: Starts tried by :meth:`fit` from a random start (the first, seeded by ``seed``, then others).
    n_starts = 16
    #: :meth:`fit` stops trying starts once one reaches this relative error.
    exact_error = 1e-10

    def fit(self, dense, *, init=None, n_iter_max: int = 200, tol: float = 1e-12, seed: int = 0):
        """Decompose a dense tensor of :attr:`shape` into this sum: joint damped Gauss-Newton or ALS, with restarts.

        A sum is linear in each factor but not jointly, and alternating least squares over its terms
        (each term fitted in turn to its residual ``dense − Σ_{j≠k} ΔW_j``) creeps: two terms trade a
        component for thousands of sweeps. Where the Jacobian of ΔW in all the trainable factors is
        small (at most 1,500 parameters and ``2·10**7`` entries), each sweep is instead a
        Levenberg-Marquardt step on all of them at once, accepted only if it lowers the error; above,
        a sweep is one ALS sweep per term (:meth:`TensorNetwork.fit`'s updates, frozen factors held
        fixed) followed by an extrapolated step (Bro's line search: ``s = sweep**(1/3)``) kept only if
        it lowers the error. Either way the error never rises. From a random start, up to
        :attr:`n_starts` starts are tried (``random(seed)`` first) and the best kept; it stops at the
        first whose error is below :attr:`exact_error` (1e-10). A start stops after ``n_iter_max``
        sweeps, or when a sweep improves the relative error by less than ``tol``.

        Parameters
        ----------
        dense : array of :attr:`shape`
            Tensor to approximate (numpy or torch).
        init : dict, optional
            Starting factors (namespaced): the one start. Default: random starts from ``seed``.
        n_iter_max : int
            Maximum number of sweeps per start.
        tol : float
            Stop a start when the relative error improves by less than ``tol`` in a sweep.
        seed : int
            Seed of the random starts.

        Returns
        -------
        factors : dict
            In the backend and dtype of ``dense`` (half precision computed in float32). Any finite
            ``dense`` is fitted: the sweeps run on ``dense / 2**e`` and every term is scaled back by
            ``2**e`` (powers of two, exact).
        rel_err : float
            ``‖dense - to_dense(factors)‖ / ‖dense‖`` of the returned factors (:meth:`relative_error`).

        Raises
        ------
        TypeError, ValueError
            Naming the argument, as :meth:`TensorNetwork.fit`.

        Notes
        -----
        Exactly representable sums are not always recovered: the landscape of a sum has local minima
        that no local method leaves, and a single start lands in one often. Measured (2026-12-01, 20
        random exactly representable targets each, default settings): LoRA (rank 1) + Tucker-2 (2, 2) on
        3 slices of 8 × 6 and on 2 of 10 × 8, and a Tucker-2 network + a per-slice rank-1 network (2 of
        10 × 8): every fit below 1e-12; a Tucker-2 network (2, 2) + a CP network (rank 3) on 3 slices of
        8 × 6: 16 of 20 below 1e-12, the others at 1e-3 to 4e-3 (a single start succeeds about 20% of
        the time there, 45% for LoRA + Tucker-2).
        """
        n_iter_max, tol, seed = check_n_iter_max(n_iter_max), check_tol(tol), check_seed(seed)
        return self._fit(dense, init, n_iter_max, tol, seed, self.n_starts)

    def _fit(self, dense, init, n_iter_max, tol, seed, n_starts):
        ops = self.check_dense(dense)
        init = _als.check_init(self, init)
        dense = _als.detach(dense, ops)
        dtype = ops.dtype_of(dense)
        e = _als.exponent(_als.max_abs(dense, ops))
        if abs(e) <= _als._ORDINARY:
            e = 0
        x = _als.times_pow2(_als.cast(dense, _als.working_dtype(dtype, ops), ops), -e)
        work = ops.dtype_of(x)
        if init is not None:
            starts = [{n: _als.convert(v, x, ops) for n, v in init.items()}]
        else:
            starts = (
                self.random(seed=seed if k == 0 else _term_seed(seed, 1000 + k), backend=ops.name, dtype=work)
                for k in range(n_starts)
            )
        best, best_err = None, None
        for start in starts:
            parts, err = self._fit_from(x, self._split(start), n_iter_max, tol, ops)
            if best_err is None or err < best_err:
                best, best_err = parts, err
            if best_err <= self.exact_error:
                break
        placed = []
        for term, part in zip(self.terms, best, strict=True):
            fixed = tuple(getattr(term, "tied_factors", {})) + tuple(getattr(term, "frozen_names", ()))
            carrier = tuple(n for n in term.factor_names if n not in fixed)
            placed.append(_als.place_scale(part, e, dtype, ops, carrier, tied=fixed))
        factors = self.join(placed)
        return factors, self.relative_error(dense, factors)

    def _fit_from(self, x, parts, n_iter_max, tol, ops):
        """One start: ``(parts, err)`` after the joint steps (small problems) or the ALS sweeps."""
        ref = ops.norm(x)
        if ref == 0:
            return [{n: v * 0 for n, v in part.items()} for part in parts], 0.0
        polished, err = self._polish(x, parts, n_iter_max, tol, ops)
        if err is not None:
            return polished, err
        return self._sweeps(x, parts, n_iter_max, tol, ops)

    def _sweeps(self, x, parts, n_iter_max, tol, ops):
        """Block coordinate descent on ``x`` (of moderate scale) from ``parts``, extrapolated: ``(parts, err)``."""
        ref = ops.norm(x)
        denses = [_dense(term, part, ops) for term, part in zip(self.terms, parts, strict=True)]
        err = ops.norm(x - sum(denses[1:], denses[0])) / ref
        for sweep in range(n_iter_max):
            old = [dict(part) for part in parts]
            for k, term in enumerate(self.terms):
                others = [d for j, d in enumerate(denses) if j != k]
                residual = x - sum(others[1:], others[0])
                parts[k] = _als.fit_als(term, residual, parts[k], n_iter_max=1, tol=0.0, ops=ops)[0]
                denses[k] = _dense(term, parts[k], ops)
            new_err = ops.norm(x - sum(denses[1:], denses[0])) / ref
            if sweep >= 1:  # Bro's extrapolation along the sweep's change, kept only if it lowers the error
                s = (sweep + 1) ** (1 / 3)
                trial = [{n: o[n] + s * (p[n] - o[n]) for n in p} for o, p in zip(old, parts, strict=True)]
                trial_denses = [_dense(term, part, ops) for term, part in zip(self.terms, trial, strict=True)]
                trial_err = ops.norm(x - sum(trial_denses[1:], trial_denses[0])) / ref
                if trial_err < new_err:
                    parts, denses, new_err = trial, trial_denses, trial_err
            done = abs(err - new_err) < tol or new_err < tol
            err = new_err
            if done:
                break
        return parts, err

    def _trainable(self, term):
        frozen = set(getattr(term, "frozen_names", ()))
        return [n for n in term.factor_names if n not in frozen]

    def _polish(self, x, parts, n_steps, tol, ops):
        """Levenberg-Marquardt steps on every trainable factor at once; each accepted only if it lowers the error.

        Returns ``(parts, err)``; the parts unchanged where the Jacobian would be too large (see ``_LM_MAX_*``).
        """
        n = sum(sum(_numel(part[m]) for m in self._trainable(t)) for t, part in zip(self.terms, parts, strict=True))
        rows = _numel(x)
        if n > _LM_MAX_PARAMS or n * rows > _LM_MAX_ENTRIES:
            return parts, None
        ref = ops.norm(x)
        flat_x = x.reshape((rows,))

        def dense_of(ps):
            return sum((_dense(t, p, ops) for t, p in zip(self.terms, ps, strict=True)), x * 0).reshape((rows,))

        def error(ps):
            return ops.norm(flat_x - dense_of(ps)) / ref

        err = error(parts)
        lam = 1e-3
        history = [err]
        for _ in range(n_steps):
            if err < tol:
                break
            jac = ops.concatenate([_jacobian(t, p, ops) for t, p in zip(self.terms, parts, strict=True)], 1)
            residual = flat_x - dense_of(parts)
            jac_t = ops.swapaxes(jac, 0, 1)
            gram = jac_t @ jac
            grad = jac_t @ residual.reshape((rows, 1))
            w, v = _eigh(gram, ops)
            vg = ops.swapaxes(v, 0, 1) @ grad
            scale = float(w.sum()) / n
            if not scale > 0:
                break
            for _ in range(_LM_TRIES):
                step = v @ (vg / (w.reshape((n, 1)) + lam * scale))
                trial, at = [], 0
                for t, p in zip(self.terms, parts, strict=True):
                    q = dict(p)
                    for m in self._trainable(t):
                        size = _numel(p[m])
                        q[m] = p[m] + step[at : at + size].reshape(tuple(p[m].shape))
                        at += size
                    trial.append(q)
                new_err = error(trial)
                if new_err < err:
                    break
                lam *= 4
            else:
                break  # no step lowers the error: a stationary point
            improved = err - new_err
            parts, err, lam = trial, new_err, max(lam / 3, 1e-12)
            history.append(err)
            if improved < tol:
                break
            if len(history) > _LM_STALL and err > self.exact_error and err > 0.5 * history[-1 - _LM_STALL]:
                break  # creeping (a swamp or a local minimum): near an exact solution the steps converge fast
        return parts, err

    def relative_error(self, dense, factors) -> float:
        """``‖dense - to_dense(factors)‖ / ‖dense‖`` (``‖to_dense(factors)‖`` for a zero ``dense``).

        Computed at least in float32, free of over- and underflow: every term is rebuilt from factors
        scaled by powers of two to a largest entry near 1, and all are brought to one power of two
        before the difference.
        """
        ops = self.check_dense(dense)
        factor_ops = self.check_factors(factors)
        if factor_ops.name != ops.name:
            raise TypeError(
                f"`dense` is a {ops.name} array but `factors` are {factor_ops.name} arrays; use one library."
            )
        first = factors[self.factor_names[0]]
        work = _als.wider(_als.working_dtype(ops.dtype_of(dense), ops), _als.working_dtype(first.dtype, ops), ops)
        d = _als.cast(_als.detach(dense, ops), work, ops)
        pieces = []  # (rebuilt term at unit scale, its binary exponent)
        for term, part in zip(self.terms, self._split(factors), strict=True):
            arrays = {n: _als.convert(v, d, ops) for n, v in part.items()}
            peaks = {n: _als.max_abs(v, ops) for n, v in arrays.items()}
            if not all(peaks.values()):
                continue  # an exactly zero term
            exps = {n: _als.exponent(p) for n, p in peaks.items()}
            uses = getattr(term, "operand_names", term.factor_names)
            total = sum(exps[n] * uses.count(n) for n in term.factor_names)
            rec = term.to_dense({n: _als.times_pow2(v, -exps[n]) for n, v in arrays.items()})
            peak = _als.max_abs(rec, ops)
            if peak > 0:
                pieces.append((rec, total))
        peak_d = _als.max_abs(d, ops)
        if not pieces:
            return 1.0 if peak_d > 0 else 0.0
        tops = [total + _als.exponent(_als.max_abs(rec, ops)) for rec, total in pieces]
        e_d = _als.exponent(peak_d) if peak_d > 0 else min(tops)
        top = max(e_d, *tops)
        diff = _als.times_pow2(d, -top)
        for rec, total in pieces:
            diff = diff - _als.times_pow2(rec, total - top)
        err = _als._norm(diff, ops)
        if peak_d == 0:
            return _als._ldexp(err, top)  # absolute: ‖to_dense(factors)‖
        ref = _als._norm(_als.times_pow2(d, -e_d), ops)
        return _als._ldexp(err / ref, top - e_d)

    # ------------------------------------------------------------------ the format protocol
    @property
    def slice_rank(self) -> int:
        """The sum of the terms' slice ranks, capped at ``min(out_features, in_features)``."""
        return min(sum(term.slice_rank for term in self.terms), self.out_features, self.in_features)

    def lora_factors(self, factors, index=()):
        """``(B, A)`` with ``B @ A == ΔW[index]``: the terms' LoRA factors side by side.

        ``B = [B_1, B_2, ...]`` (columns) and ``A = [A_1; A_2; ...]`` (rows), exact, as wide as the sum
        of the terms' widths; where that exceeds ``min(out_features, in_features)``, the slice's SVD at
        that width instead (exact too). Parameters and errors as :meth:`TensorNetwork.lora_factors`.
        """
        ops = self.check_factors(factors)
        index = normalize_index(index, self.stack)
        pairs = [term.lora_factors(part, index) for term, part in zip(self.terms, self._split(factors), strict=True)]
        width = sum(int(A.shape[0]) for _, A in pairs)
        if width > min(self.out_features, self.in_features):
            return self._svd_lora_factors(factors, index, ops)
        if ops.name == "torch":
            cat = ops.torch.cat
            return cat([B for B, _ in pairs], 1), cat([A for _, A in pairs], 0)
        return np.concatenate([B for B, _ in pairs], 1), np.concatenate([A for _, A in pairs], 0)

    def init_from_weights(self, dense) -> dict:
        """:meth:`fit`'s factors of ``dense`` from one start and :attr:`init_sweeps` sweeps (directions suffice).

        Parameters
        ----------
        dense : array of :attr:`shape`
            The weights to fit (numpy or torch).

        Returns
        -------
        dict
            Factors in ``dense``'s backend and dtype.
        """
        return self._fit(dense, None, self.init_sweeps, 1e-12, 0, 1)[0]

    def regularizer(self, factors) -> dict:
        """The terms' penalty terms, each named ``"t{k}_<name>"`` (empty when no term has any).

        Parameters
        ----------
        factors : dict
            The sum's factors (numpy or torch).

        Returns
        -------
        dict
            Term name → scalar, differentiable in the factors.
        """
        out = {}
        for k, (term, part) in enumerate(zip(self.terms, self.split(factors), strict=True)):
            out.update({_prefix(k) + n: v for n, v in term.regularizer(part).items()})
        return out

    @classmethod
    def from_scale(cls, scale: int, *, terms, **kwargs):
        """The sum of ``terms`` at one shared scalar rank ``scale`` (the budget search's build step).

        Parameters
        ----------
        scale : int
            The scalar rank, at least 1; a term bounded below it (``max_scale``) takes its bound.
        terms : sequence of format class or (format class, dict)
            The terms' classes, each with its own constructor arguments in the dict if it needs any
            (``(decomp.CP, {"heads": 4})``); every class must have the ``from_scale`` hook.
        **kwargs
            Constructor arguments shared by every term (``stack``, ``out_features``, ``in_features``).

        Returns
        -------
        Sum

        Examples
        --------
        >>> from tensorpeft import decomp
        >>> shape = {"stack": (4,), "out_features": 16, "in_features": 16}
        >>> f = decomp.rank_for_budget(decomp.Sum, 600, terms=[decomp.LoRA, decomp.Tucker2], **shape)
        >>> [t.rank for t in f.terms], f.num_params
        ([3, (3, 3)], 516)
        """
        built = []
        for cls_k, kw in _term_specs(terms):
            bound = cls_k.max_scale(**kw, **kwargs) if hasattr(cls_k, "max_scale") else None
            built.append(cls_k.from_scale(scale if bound is None else min(scale, bound), **kw, **kwargs))
        return cls(*built)

    @classmethod
    def max_scale(cls, *, terms, **kwargs) -> int | None:
        """The largest ``max_scale`` of the terms (past it nothing grows), or None if a term is unbounded.

        Parameters
        ----------
        terms : sequence of format class or (format class, dict)
            As :meth:`from_scale`.
        **kwargs
            As :meth:`from_scale`.

        Returns
        -------
        int or None
        """
        bounds = []
        for cls_k, kw in _term_specs(terms):
            bound = cls_k.max_scale(**kw, **kwargs) if hasattr(cls_k, "max_scale") else None
            if bound is None:
                return None
            bounds.append(bound)
        return max(bounds)


# A damped Gauss-Newton (Levenberg-Marquardt) polish over all the trainable factors at once, where its
# dense Jacobian (entries of ΔW × trainable parameters) stays small: ALS on a sum can creep for thousands
# of sweeps along a valley (two terms trading a component), which the joint step crosses at once.
_LM_MAX_PARAMS = 1500
_LM_MAX_ENTRIES = 2 * 10**7
_LM_STEPS = 200
_LM_TRIES = 12
_LM_STALL = 30  # a start whose error did not halve in this many steps is given up


def _eigh(a, ops):
    """Eigenvalues (clipped at 0) and eigenvectors of a symmetric matrix, in ``a``'s backend."""
    if ops.name == "torch":
        w, v = ops.torch.linalg.eigh(a)
        return w.clamp(min=0), v
    if ops.name == "numpy":
        w, v = np.linalg.eigh(a)
        return np.maximum(w, 0), v
    import jax.numpy as jnp  # the third backend

    w, v = jnp.linalg.eigh(a)
    return jnp.maximum(w, 0), v


def _dense(term, part, ops):
    """``term.to_dense(part)`` of checked factors, without the checks (the fit's inner loop)."""
    return contract(term.equation, *(part[n] for n in term.operand_names), ops=ops).reshape(tuple(term.shape))


def _numel(x) -> int:
    n = 1
    for k in x.shape:
        n *= int(k)
    return n


def _jacobian(term, part, ops):
    """``∂ vec ΔW / ∂ vec F`` of every trainable factor ``F`` of ``term`` (a network with an equation), side by side.

    One contraction per operand: the other operands, an identity for each letter the operand shares with
    the output (ΔW's entry and the factor's entry must agree there), ones for a dangling size-1 letter;
    a tied factor adds up its uses.
    """
    out = term._output
    operands = list(zip(term.operand_names, term.operand_indices, strict=True))
    frozen = set(getattr(term, "frozen_names", ()))
    like = next(iter(part.values()))
    dtype = ops.dtype_of(like)
    size = term.sizes
    used = set(size) | set(out)
    rows = 1
    for c in out:
        rows *= size[c]
    blocks = []
    for name in term.factor_names:
        if name in frozen:
            continue
        block = None
        for k, (owner, t_k) in enumerate(operands):
            if owner != name:
                continue
            fresh = _als._fresh(set(used))
            primes = {c: next(fresh) for c in t_k if c in out}
            terms = [t for j, (_, t) in enumerate(operands) if j != k]
            arrays = [part[n] for j, (n, _) in enumerate(operands) if j != k]
            present = set(out).union(*terms) if terms else set(out)
            for c in t_k:
                if c in primes:
                    terms.append(c + primes[c])
                    arrays.append(ops.eye(size[c], dtype, like=like))
                elif c not in present:
                    terms.append(c)
                    arrays.append(ops.zeros((size[c],), dtype, like=like) + 1)
            target = "".join(primes.get(c, c) for c in t_k)
            j_k = contract(f"{','.join(terms)}->{out}{target}", *arrays, ops=ops).reshape((rows, -1))
            block = j_k if block is None else block + j_k
        blocks.append(block)
    return ops.concatenate(blocks, 1)


def _term_specs(terms) -> list[tuple[type, dict]]:
    """``terms`` of :meth:`Sum.from_scale` as ``(class, kwargs)`` pairs (TypeError/ValueError naming `terms`)."""
    if isinstance(terms, str | bytes | Mapping) or not hasattr(terms, "__iter__"):
        raise TypeError(f"`terms` must be a list of format classes or (class, kwargs) pairs, got {terms!r}.")
    specs = []
    for k, item in enumerate(terms):
        cls_k, kw = item, {}
        if isinstance(item, tuple) and len(item) == 2:
            cls_k, kw = item
        if not (isinstance(cls_k, type) and issubclass(cls_k, TensorNetwork) and hasattr(cls_k, "from_scale")):
            raise TypeError(
                f"`terms[{k}]` must be a format class with a `from_scale` hook (decomp.LoRA) or a (class, kwargs) "
                f"pair, got {item!r}."
            )
        if not isinstance(kw, Mapping) or "rank" in kw:
            raise TypeError(f"`terms[{k}]`: the constructor arguments must be a dict without `rank`, got {kw!r}.")
        specs.append((cls_k, dict(kw)))
    if len(specs) < 2:
        raise ValueError(f"`terms` must name at least 2 format classes, got {len(specs)}.")
    return specs
