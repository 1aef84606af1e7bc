"""Alternating least squares for any tensor network, with a damped Gauss-Newton step for tied factors.

With all factors but one fixed, the network is linear in the remaining factor ``F``. Writing ``b`` for
the indices ``F`` shares with the output, ``c`` for its contracted (bond) indices and ``m`` for the
output indices it lacks, the best ``F`` solves, for every ``b``, the normal equations
``Gram[b] F[b] = rhs[b]`` with ``Gram = Σ_m E E'`` and ``rhs = Σ_m E T``, where ``E`` is the
contraction of the other factors. Both are computed as contractions of the *factors* (opt_einsum
chooses the order), never by forming ``E``; for CP this is exactly CP-ALS with Hadamard products of
Grams and the MTTKRP.

A *tied* factor ``T`` (one array on ``m >= 2`` operands, e.g. ``U`` in ``U Σ_l Uᵀ``) makes ΔW a
polynomial of degree ``m`` in ``T``: no linear solve gives its best value. Its block update is a
Levenberg-Marquardt step instead (:func:`_tied_step`): ΔW is linearized in ``T``,
``ΔW(T + D) ≈ ΔW(T) + Σ_u J_u D`` (``J_u`` the Jacobian through use ``u``), the Gauss-Newton matrix
``Σ_uv J_uᵀ J_v`` and gradient ``Σ_u J_uᵀ R`` are contracted from the factors as above (cross terms
``u ≠ v`` included), and the damped step is taken only if it lowers the error (the damping grows until it
does, shrinks after a success). Every block update then lowers the error or keeps it, so the sweeps
descend monotonically; near a zero-residual solution the step is Gauss-Newton's, which converges fast.
It forms a dense ``n × n`` matrix, ``n`` the number of entries of the tied factor, and solves it: meant
for tied factors of up to a few thousand entries.
"""

from __future__ import annotations

import math

import numpy as np
import opt_einsum

from ._contract import contract
from .validate import check_n_iter_max, check_seed, check_tol

__all__ = ["fit_als"]


def _fresh(used: set[str]):
    k = 0
    while True:
        s = opt_einsum.get_symbol(k)
        k += 1
        if s not in used:
            used.add(s)
            yield s


def _update(fmt, factors, name, target, ops, with_fit: bool = False):
    """Return the least-squares optimal factor ``name`` given the others.

    With ``with_fit``, return ``(factor, inner, norm2)`` with ``inner = <target, ΔW>`` and
    ``norm2 = ‖ΔW‖²`` of the network holding the new factor: ΔW is linear in it, so both come from the
    normal equations (``Fᵀ rhs`` and ``Fᵀ Gram F``) without forming ΔW.
    """
    out = fmt._output
    term = fmt.factor_indices[name]
    others = [(t, n) for n, t in zip(fmt.operand_names, fmt.operand_indices, strict=True) if n != name]
    other_terms = [t for t, _ in others]
    other_arrays = [factors[n] for _, n in others]
    other_letters = set("".join(other_terms))

    b = "".join(c for c in term if c in out)
    c = "".join(ch for ch in term if ch not in out)

    fresh = _fresh(set(fmt.sizes) | set(out))
    rename = {ch: next(fresh) for ch in other_letters | set(c) if ch not in out}
    copy_terms = ["".join(rename.get(ch, ch) for ch in t) for t in other_terms]
    b_gram = "".join(ch for ch in b if ch in other_letters)
    c_copy = "".join(rename[ch] for ch in c)
    # Bond indices no other factor carries (e.g. the size-1 ends of a tensor train) are a plain sum:
    # the design matrix is constant along them. Vectors of ones make them explicit in both contractions.
    dangling = [ch for ch in c if ch not in other_letters]
    ones = [ops.zeros((fmt.sizes[ch],), ops.dtype_of(target), like=target) + 1 for ch in dangling]

    rhs = contract(f"{','.join([out, *other_terms, *dangling])}->{b + c}", target, *other_arrays, *ones, ops=ops)
    if other_arrays or ones:
        gram = contract(
            f"{','.join([*other_terms, *copy_terms, *dangling, *(rename[ch] for ch in dangling)])}"
            f"->{b_gram + c + c_copy}",
            *other_arrays,
            *other_arrays,
            *ones,
            *ones,
            ops=ops,
        )
    else:  # a single factor holding every index: it is the target itself
        gram = ops.zeros((), ops.dtype_of(target), like=target) + 1
    size = fmt.sizes
    nc = math.prod(size[ch] for ch in c)
    # The Gram matrix does not depend on the indices of ``b`` that only this factor carries: keep them
    # as size-1 axes and let the batched solve broadcast over them.
    gram = gram.reshape((*(size[ch] if ch in b_gram else 1 for ch in b), nc, nc))
    rhs = rhs.reshape((*(size[ch] for ch in b), nc, 1))
    solution = ops.pinv_hermitian(gram) @ rhs
    # back to the factor's own index order
    factor = ops.einsum(f"{b + c}->{term}", solution.reshape(tuple(size[ch] for ch in b + c)))
    if not with_fit:
        return factor
    return factor, float((solution * rhs).sum()), float((solution * (gram @ solution)).sum())


_LM_START = 1e-3  # initial damping, relative to the mean diagonal of the Gauss-Newton matrix
_LM_TRIES = 12  # damped steps tried per block update before the tied factor is left as it is


def _rename(term: str, out: str, mapping: dict) -> str:
    return "".join(ch if ch in out else mapping[ch] for ch in term)


def _tied_system(fmt, factors, name, residual, ops):
    """Gauss-Newton matrix ``H`` (``n × n``) and gradient ``g`` (``n``) of ΔW in the tied factor ``name``.

    ``residual`` is ``target - ΔW`` with the equation's output indices.
    """
    out = fmt._output
    operands = list(zip(fmt.operand_names, fmt.operand_indices, strict=True))
    uses = [k for k, (n, _) in enumerate(operands) if n == name]
    like = factors[name]
    dtype = ops.dtype_of(like)
    size = fmt.sizes
    n = math.prod(size[ch] for ch in fmt.factor_indices[name])
    used = set(size) | set(out)

    def environment(k, mapping):
        """Terms and arrays of every operand but ``k``, non-output letters renamed by ``mapping``.

        Vectors of ones stand for the letters of operand ``k`` that neither another operand nor the output
        carries (size-1 bonds).
        """
        terms = [_rename(t, out, mapping) for j, (_, t) in enumerate(operands) if j != k]
        arrays = [factors[nm] for j, (nm, _) in enumerate(operands) if j != k]
        present = set(out).union(*(t for j, (_, t) in enumerate(operands) if j != k))
        for ch in operands[k][1]:
            if ch not in present:
                terms.append(mapping[ch])
                arrays.append(ops.zeros((size[ch],), dtype, like=like) + 1)
        return terms, arrays

    inner = sorted(set(size) - set(out))
    gram = grad = None
    for u in uses:
        fresh = _fresh(set(used))
        a = {ch: next(fresh) for ch in inner}
        terms_u, arrays_u = environment(u, a)
        t_u = _rename(operands[u][1], out, a)
        rhs = contract(f"{','.join([out, *terms_u])}->{t_u}", residual, *arrays_u, ops=ops).reshape((n,))
        grad = rhs if grad is None else grad + rhs
        for v in uses:
            block_fresh = _fresh(set(used) | set(a.values()))
            b = {ch: next(block_fresh) for ch in inner}
            terms_v, arrays_v = environment(v, b)
            t_v = _rename(operands[v][1], out, b)
            # an output index in both uses is one index of the contraction: a diagonal, restored by identities
            shared = [ch for ch in t_v if ch in t_u]
            primes = {ch: next(block_fresh) for ch in shared}
            joint = t_u + "".join(ch for ch in t_v if ch not in t_u)
            # an output index only this use carries (``o`` of ``U[o, a]`` for u == v) is constant in the block
            present = set("".join(terms_u + terms_v))
            missing = [ch for ch in joint if ch not in present]
            ones = [ops.zeros((size[ch],), dtype, like=like) + 1 for ch in missing]
            block = contract(
                f"{','.join([*terms_u, *terms_v, *missing])}->{joint}", *arrays_u, *arrays_v, *ones, ops=ops
            )
            if shared:
                eyes = [ops.eye(size[ch], dtype, like=like) for ch in shared]
                spec = ",".join([joint, *(ch + primes[ch] for ch in shared)])
                t_v_full = "".join(primes.get(ch, ch) for ch in t_v)
                block = contract(f"{spec}->{t_u}{t_v_full}", block, *eyes, ops=ops)
            block = block.reshape((n, n))
            gram = block if gram is None else gram + block
    return gram, grad


def _tied_step(fmt, factors, name, target, err, ref, ops, damping):
    """One accepted Levenberg-Marquardt step on tied factor ``name``; return ``(factors, err, damping)``.

    The step solves ``(H + λ·mean(diag H)·I) d = g``; a step that does not lower the error is refused and
    ``λ`` multiplied by 4, an accepted one divides it by 3. After :data:`_LM_TRIES` refusals the factor
    is left as it is (the error never rises) and the damping it came with is kept for the next sweep.
    """
    rebuilt = contract(fmt.equation, *(factors[n] for n in fmt.operand_names), ops=ops)
    residual = target - rebuilt.reshape(target.shape)
    gram, grad = _tied_system(fmt, factors, name, residual, ops)
    n = grad.shape[0]
    like = factors[name]
    eye = ops.eye(n, ops.dtype_of(like), like=like)
    scale = float(ops.einsum("ii->", gram)) / n
    if not scale > 0:
        return factors, err, damping
    lam = damping
    for _ in range(_LM_TRIES):
        step = ops.pinv_hermitian(gram + eye * (lam * scale)) @ grad.reshape((n, 1))
        trial = dict(factors)
        trial[name] = like + step.reshape(like.shape)
        new_err = _plain_error(fmt, target, trial, ref, ops)
        if new_err < err:
            return trial, new_err, max(lam / 3, 1e-12)
        lam *= 4
    return factors, err, damping  # a stationary point of this block: no step lowers the error


_GRAM_FLOOR = 1e-3  # below this relative error the sweep's error is recomputed from the dense residual
_RESTARTS = 7  # random restarts at most (8 starts) when the first start ends neither exact nor confirmed
_AGREE = 1e-6  # two starts whose errors agree to this relative tolerance have found the same minimum


def restart_seed(seed: int, k: int) -> int:
    """Seed of the ``k``-th restart of a fit started from ``seed`` (distinct from every plain seed's stream)."""
    return int(np.random.SeedSequence((seed, k)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def fit_als(fmt, dense, init, *, n_iter_max, tol, ops, draw=None, restarts: int = _RESTARTS):
    """Run ALS sweeps from ``init``; return ``(factors, rel_err)``.

    Each sweep updates every factor once, in order (frozen factors are skipped): an untied factor by its
    least-squares solve, a tied one by a damped Gauss-Newton step (:func:`_tied_step`).

    ``dense`` should be of moderate scale (:func:`fit_scaled` hands over ``dense / 2**e`` with its largest
    entry in ``[0.5, 1)``). The error of each sweep, which decides when to stop, comes from the normal
    equations of the last update (:func:`_update`) while it is above :data:`_GRAM_FLOOR` (there the
    cancellation in ``‖T‖² − 2⟨T, ΔW⟩ + ‖ΔW‖²`` costs less than 1e-13), else from the dense residual.

    Restarts chosen by the error: with ``draw`` (``draw(k)`` returns the ``k``-th random start), a run
    that ends above round-off (``eps**(2/3)`` of the dtype: 3.7e-11 in float64) is followed by runs
    from ``draw(1)``, ``draw(2)``, … (at most ``restarts``), until one reaches round-off or the best error
    has been reached by two runs (to :data:`_AGREE`, relative): ALS stalls at local minima (a block-term
    network from about one random start in three), which another start avoids. The best run is returned.
    Frozen factors keep the values of ``init`` in every run.
    """
    best = _sweeps(fmt, dense, init, n_iter_max=n_iter_max, tol=tol, ops=ops)
    if draw is None or restarts <= 0:
        return best
    exact = float(ops.finfo(ops.dtype_of(dense)).eps) ** (2 / 3)
    errors = [best[1]]
    frozen = getattr(fmt, "frozen_names", ())
    for k in range(1, restarts + 1):
        seen = sum(abs(e - best[1]) <= _AGREE * best[1] for e in errors)
        if best[1] <= exact or seen >= 2:
            break
        start = draw(k) | {n: init[n] for n in frozen}
        run = _sweeps(fmt, dense, start, n_iter_max=n_iter_max, tol=tol, ops=ops)
        errors.append(run[1])
        if run[1] < best[1]:
            best = run
    return best


def _sweeps(fmt, dense, init, *, n_iter_max, tol, ops):
    """ALS sweeps from one start (see :func:`fit_als`); return ``(factors, rel_err)``."""
    target = dense.reshape(tuple(fmt.sizes[c] for c in fmt._output))
    factors = {n: convert(v, dense, ops) for n, v in init.items()}
    ref = ops.norm(dense)
    if ref == 0:
        return {n: v * 0 for n, v in factors.items()}, 0.0
    err = _plain_error(fmt, dense, factors, ref, ops)
    tied = getattr(fmt, "tied_factors", {})
    damping = dict.fromkeys(tied, _LM_START)
    frozen = getattr(fmt, "frozen_names", ())
    order = [n for n in fmt.factor_names if n not in frozen]  # a frozen factor: held at its starting value
    last = order[-1] if order and order[-1] not in tied else None
    for _ in range(n_iter_max):
        fit = None
        for name in order:
            if name in tied:
                step_err = _plain_error(fmt, dense, factors, ref, ops)
                factors, _, damping[name] = _tied_step(fmt, factors, name, target, step_err, ref, ops, damping[name])
            elif name == last:
                factors[name], *fit = _update(fmt, factors, name, target, ops, with_fit=True)
            else:
                factors[name] = _update(fmt, factors, name, target, ops)
        new_err = None
        if fit is not None:
            inner, norm2 = fit
            new_err = math.sqrt(max(ref * ref - 2 * inner + norm2, 0.0)) / ref
        if new_err is None or new_err < _GRAM_FLOOR or not math.isfinite(new_err):
            new_err = _plain_error(fmt, dense, factors, ref, ops)
        done = abs(err - new_err) < tol or new_err < tol
        err = new_err
        if done:
            break
    return factors, err


def _plain_error(fmt, dense, factors, ref, ops) -> float:
    """``‖dense - to_dense(factors)‖ / ref`` without the checks and rescaling of ``relative_error``."""
    rebuilt = contract(fmt.equation, *(factors[n] for n in fmt.operand_names), ops=ops)
    return ops.norm(dense - rebuilt.reshape(dense.shape)) / ref


# ---------------------------------------------------------------------------------------- scale-safe fitting
# Every fit works on ``dense / 2**e``, ``e`` the binary exponent of the largest entry (unless that is
# within 2**±12), so that no Gram matrix, square or singular value over- or underflows whatever the
# scale of ``dense``; the factors are scaled back by powers of two (exact), and the reported error is
# that of the returned factors.

_STEP = 100  # 2**±100 is a normal float32 (and float64): scaling by powers of two in steps of this size is exact
_SUM_BITS = 8  # headroom above a factor's largest entry for the sums of a contraction
_ORDINARY = 12  # largest entries within 2**±12 need no scaling in float32 or float64 (squares stay far from the ends)


def detach(x, ops):
    """``x`` without autograd history (torch); numpy arrays as they are."""
    return x.detach() if ops.name == "torch" else x


def max_abs(x, ops) -> float:
    """Largest absolute entry of ``x`` as a Python float."""
    return ops.max_abs(x)


def exponent(value: float) -> int:
    """Binary exponent ``e`` with ``value = f · 2**e``, ``0.5 <= f < 1`` (0 for 0)."""
    return math.frexp(value)[1] if value else 0


def times_pow2(x, k: int):
    """``x · 2**k``, exact (barring subnormal results), in steps that keep every multiplier a normal float32."""
    while k:
        step = max(-_STEP, min(_STEP, k))
        x = x * 2.0**step
        k -= step
    return x


def working_dtype(dtype, ops):
    """Dtype a fit computes in: float32 for half precision (bf16, fp16), float64 for exotic floats."""
    return ops.working_dtype(dtype)


def wider(a, b, ops):
    """The wider of two working dtypes (float64 if either is)."""
    if ops.name == "torch":
        return ops.torch.float64 if ops.torch.float64 in (a, b) else ops.torch.float32
    return np.promote_types(a, b)


def cast(x, dtype, ops):
    """``x`` in ``dtype`` (no copy when it already is)."""
    return ops.cast(x, dtype)


def convert(x, like, ops):
    """``x`` (numpy or torch) as an array of ``like``'s backend, dtype and device."""
    if ops.is_array(x):
        return x.detach().to(device=like.device, dtype=like.dtype) if ops.name == "torch" else cast(x, like.dtype, ops)
    if hasattr(x, "detach"):  # a torch tensor for numpy: through float64, which numpy has for every torch float
        x = x.detach().cpu().double().numpy()
    return ops.asarray(x, like=like)


def _exponent_range(dtype, ops) -> tuple[int, int]:
    """Binary exponents between which a factor's largest entry keeps full precision and room for sums."""
    info = ops.finfo(dtype)
    bits = 1 - exponent(float(info.eps))  # mantissa bits
    return exponent(float(info.tiny)) + bits, exponent(float(info.max)) - _SUM_BITS


def _split(total: int, names) -> dict:
    """``total`` split into integer parts over ``names``, as evenly as possible."""
    base, rem = divmod(total, len(names))
    return {n: base + (1 if k < rem else 0) for k, n in enumerate(names)}


def _plans(exps, k: int, carrier, fixed: bool, tied=()):
    """Candidate shifts: ``2**k`` split over ``carrier``, then (unless ``fixed``) balanced over the factors.

    A ``tied`` factor (on several operands) takes no part in the balance: a shift of it would scale ΔW once
    per use.
    """
    plans = [_split(k, carrier)]
    if not fixed:
        nonzero = [n for n, e in exps.items() if e is not None and n not in tied]
        if nonzero:
            total = k + sum(exps[n] for n in nonzero)
            target = _split(total, nonzero)
            plans.append({n: target[n] - exps[n] for n in nonzero})
    return plans


def place_scale(factors, k: int, dtype, ops, carrier, *, fixed: bool = False, tied=()) -> dict:
    """Multiply the product of ``factors`` by ``2**k`` and return them in ``dtype``.

    The scale goes on the factors named by ``carrier`` (split evenly) if that keeps every factor's
    largest entry well inside the range of ``dtype``; otherwise (unless ``fixed``: orthonormal planes
    must stay so) it is balanced so that every factor gets about the same largest entry. ``carrier`` must
    hold untied factors only, and the ``tied`` ones (names on several operands) keep their scale.

    Raises
    ------
    ValueError
        Naming `dense`, if no placement gives finite factors in ``dtype``.
    """
    peaks = {n: max_abs(v, ops) for n, v in factors.items()}
    exps = {n: (exponent(p) if p > 0 else None) for n, p in peaks.items()}
    low, high = _exponent_range(dtype, ops)
    plans = _plans(exps, k, tuple(carrier), fixed, tuple(tied))
    chosen = plans[-1]
    for plan in plans:
        if all(e is None or low <= e + plan.get(n, 0) <= high for n, e in exps.items()):
            chosen = plan
            break
    with np.errstate(over="ignore"):  # an overflow is reported below, naming `dense`
        out = {n: cast(times_pow2(v, chosen.get(n, 0)), dtype, ops) for n, v in factors.items()}
    if not all(ops.all_finite(v) for v in out.values()):
        raise ValueError(
            f"`dense` has entries up to 2**{k}: its factors in this format overflow {dtype}; "
            "fit a rescaled `dense` or use a wider dtype."
        )
    return out


def start_from(init, like, ops) -> dict:
    """Starting factors ``init`` (checked) in the backend and dtype of ``like``, each with a largest entry near 1.

    ALS needs only their directions (each update solves for one factor given the others): a start at a
    scale far from the data's would only make the first Gram matrices over- or underflow.
    """
    start = {}
    for name, v in init.items():
        v = convert(v, like, ops)
        start[name] = times_pow2(v, -exponent(max_abs(v, ops)))
    return start


def check_init(fmt, init):
    """Validate optional starting factors: names, shapes, dtypes and finite entries (naming `init`)."""
    if init is None:
        return None
    init_ops = fmt.check_factors(init, argument="init")
    for name in fmt.factor_names:
        if not init_ops.all_finite(init[name]):
            raise ValueError(f"`init[{name!r}]` contains NaN or infinite values; starting factors must be finite.")
    return init


def fit_scaled(fmt, dense, solve, ops, *, carrier, fixed: bool = False):
    """Fit ``dense / 2**e`` with ``solve(x)``; return the factors scaled back, in ``dense``'s dtype, and their error.

    ``solve`` computes in the working dtype (float32 for half precision) and returns factors of ``x``;
    the scale ``2**e`` is placed by :func:`place_scale` (on ``carrier`` where that is safe). The error
    is ``fmt.relative_error`` of the returned (rounded) factors.
    """
    dense = detach(dense, ops)
    dtype = ops.dtype_of(dense)
    e = exponent(max_abs(dense, ops))
    if abs(e) <= _ORDINARY:
        e = 0  # ordinary scale: fitted as it is, without a scaled copy
    x = times_pow2(cast(dense, working_dtype(dtype, ops), ops), -e)
    # tied factors keep their scale (a shift would scale ΔW once per use), frozen ones their values
    tied = (*getattr(fmt, "tied_factors", {}), *getattr(fmt, "frozen_names", ()))
    factors = place_scale(solve(x), e, dtype, ops, carrier, fixed=fixed, tied=tied)
    return factors, fmt.relative_error(dense, factors)


def relative_error(fmt, dense, factors, ops) -> float:
    """``‖dense - to_dense(factors)‖ / ‖dense‖`` of checked arrays, free of over- and underflow.

    Computed in the working dtype (float32 at least): the factors are scaled by powers of two to a
    largest entry near 1 before the contraction and both tensors brought to a common power of two
    before the difference, so the result is the plain formula's, as if the range were unlimited.
    """
    first = factors[fmt.factor_names[0]]
    uses = [fmt.operand_names.count(n) for n in fmt.factor_names]
    work = wider(working_dtype(ops.dtype_of(dense), ops), working_dtype(first.dtype, ops), ops)
    d = cast(detach(dense, ops), work, ops)
    arrays = {name: convert(factors[name], d, ops) for name in fmt.factor_names}
    peaks = {name: max_abs(f, ops) for name, f in arrays.items()}
    peak_d = max_abs(d, ops)
    if not all(peaks.values()):
        return 1.0 if peak_d > 0 else 0.0  # the product is exactly zero
    exps = {name: exponent(p) for name, p in peaks.items()}
    fast = _plain_if_safe(fmt, d, arrays, exponent(peak_d), [exps[n] for n in fmt.operand_names], ops)
    if fast is not None:
        return fast
    total = sum(exps[n] * k for n, k in zip(fmt.factor_names, uses, strict=True))  # a tied factor once per use
    scaled = [times_pow2(arrays[n], -exps[n]) for n in fmt.operand_names]
    rec = contract(fmt.equation, *scaled, ops=ops).reshape(d.shape)
    peak_r = max_abs(rec, ops)
    if peak_r == 0:
        return 1.0 if peak_d > 0 else 0.0
    e_r = total + exponent(peak_r)
    if peak_d == 0:
        return _ldexp(_norm(rec, ops), total)  # absolute: ‖to_dense(factors)‖
    e_d = exponent(peak_d)
    top = max(e_d, e_r)
    d_top = times_pow2(d, -top)
    err = _norm(d_top - times_pow2(rec, total - top), ops)
    ref = _norm(d_top, ops) if top - e_d < _STEP else _ldexp(_norm(times_pow2(d, -e_d), ops), e_d - top)
    return err / ref


def _plain_if_safe(fmt, d, arrays, e_d, exps, ops) -> float | None:
    """The plain formula where no product or square can leave the range (data of ordinary scale), else None.

    ``exps`` holds the exponent of each operand's largest entry (a tied factor once per use). Safe when
    ``d`` and every factor have largest entries within ``2**±L``, ``L`` a quarter of the dtype's
    exponent range divided among the factors, and the residual is not so small that its squares underflow.
    """
    low, high = _exponent_range(d.dtype, ops)
    bound = min(-low, high) // 4
    if abs(e_d) > bound or sum(abs(e) for e in exps) > bound:
        return None
    rec = contract(fmt.equation, *(arrays[n] for n in fmt.operand_names), ops=ops).reshape(d.shape)
    err, ref = ops.norm(d - rec), ops.norm(d)
    if ref == 0 or not math.isfinite(err) or (err and exponent(err) <= low // 2 + _STEP // 4):
        return None
    return err / ref


def _norm(x, ops) -> float:
    """Euclidean norm of ``x`` with entries of magnitude about 1 or below; rescaled where squares would underflow."""
    value = ops.norm(x)
    low, _ = _exponent_range(x.dtype, ops)
    if value == 0 or exponent(value) > low // 2 + _STEP // 4:
        return value
    k = exponent(max_abs(x, ops))
    return _ldexp(ops.norm(times_pow2(x, -k)), k)


def _ldexp(value: float, k: int) -> float:
    try:
        return math.ldexp(value, k)
    except OverflowError:
        return math.inf


def check_fit_kwargs(fmt, kwargs) -> None:
    """Validate the options a closed-form fit takes by keyword and ignores (`n_iter_max`, `tol`, `seed`, `init`)."""
    if "n_iter_max" in kwargs:
        check_n_iter_max(kwargs["n_iter_max"])
    if "tol" in kwargs:
        check_tol(kwargs["tol"])
    if "seed" in kwargs:
        check_seed(kwargs["seed"])
    if kwargs.get("init") is not None:
        check_init(fmt, kwargs["init"])
