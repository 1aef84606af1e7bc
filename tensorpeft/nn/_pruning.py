"""LoRA²'s rank pruner: importance scores on λ and the inner planes, a cubic budget, masked λ."""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from ..decomp.validate import check_fraction, check_int_at_least

__all__ = ["RankPruner"]


class RankPruner:
    r"""LoRA²'s importance-based rank pruning of every LoRA² (``OrthogonalConfig``) adapter of a model.

    Each LoRA² slice is :math:`\Delta W = U_1 U_2 \operatorname{diag}(\lambda) V_2 V_1`; its rank is the
    number of non-zero :math:`\lambda_i`. The pruner scores every *triplet*
    :math:`(\lambda_i, U_2[:, i], V_2[i, :])` of every slice of every LoRA² stack, and on a cubic
    schedule sets the :math:`\lambda_i` of the lowest-scored triplets to zero, across the whole model
    (one global cut: important layers keep more rank), until the total rank reaches the target.

    Parameters
    ----------
    model : peft.PeftModel or TensorPeftModel
        A model with at least one LoRA² stack (``tp.LoRA2Config`` / ``OrthogonalConfig``): what
        :func:`~tensorpeft.get_peft_model` returns, its tuner, or a ``DistributedDataParallel``
        wrapping either (its ``.module``). The pruner works on the stacks of the adapter active when it
        is built whose format names its ``rank_components`` (:class:`~tensorpeft.decomp.TensorNetwork`;
        λ, ``U2``, ``V2`` for LoRA²); other stacks, and other adapters, are left alone.
    target_rank : int
        Average rank per adapted matrix at the end: the target budget is
        ``b_T = target_rank · num_matrices`` non-zero λ entries in total (AdaLoRA's ``target_r``).
    total_steps : int
        ``T``, the number of optimizer steps of the run.
    warmup_steps : int
        ``t_i``: no pruning while ``step <= t_i`` (importance is accumulated from step 0).
    final_steps : int
        ``t_f >= 1``: the last ``t_f`` steps, ``T − t_f .. T − 1``, train at the target budget with the
        final mask fixed (with steps counted from 0, ``t_f = 0`` would never reach the target).
        ``warmup_steps + final_steps < total_steps``.
    interval : int
        ``ΔT``: between ``t_i`` and ``T − t_f`` the mask is updated at steps divisible by ``interval``.
    initial_rank : int, optional
        Average rank per matrix at the start, ``b_0 = initial_rank · num_matrices``; default the
        adapters' ``rank`` (every λ entry). At most the smallest ``rank`` of the LoRA² stacks and at
        least ``target_rank``; when below the adapters' rank, the first cut after warm-up also removes
        the entries beyond ``b_0``.
    beta1, beta2 : float
        Smoothing of the sensitivity and of its uncertainty, in ``[0, 1)`` (LoRA²: 0.85, 0.85).

    Attributes
    ----------
    model : TensorPeftModel
        The tuner of ``model`` (``model.base_model`` of a ``peft.PeftModel``).
    adapter_name : str
        The adapter whose LoRA² stacks are pruned (the active one when the pruner was built).
    num_matrices : int
        Number of adapted matrices (LoRA² slices) in the model.
    initial_budget, target_budget : int
        ``b_0`` and ``b_T``, total non-zero λ entries.
    masks : dict[str, torch.Tensor]
        Per LoRA² stack name, a bool tensor of λ's shape: True where λ is kept.

    Raises
    ------
    TypeError
        If ``model`` holds no TensorPeftModel, or an argument has the wrong type.
    ValueError
        If ``model`` has no LoRA² stack, a LoRA² stack of fused slices (``stack_by="input"``: one rank
        shared by several matrices), or the schedule is inconsistent (the message names the argument).

    Notes
    -----
    Importance (:meth:`update_and_allocate`, every step up to ``T − t_f``), elementwise on λ, ``U2``
    and ``V2`` only — LoRA²'s saving over AdaLoRA, which also scores the outer factors:

    .. math::

        I = |w \cdot \partial L / \partial w|, \quad
        \bar I \leftarrow \beta_1 \bar I + (1 - \beta_1) I, \quad
        \bar U \leftarrow \beta_2 \bar U + (1 - \beta_2) |I - \bar I|, \quad
        s = \bar I \cdot \bar U,

    (:math:`\bar U` uses the freshly updated :math:`\bar I`, as AdaLoRA and LoRA²'s code), and per
    triplet :math:`S_i = s(\lambda_i) + \operatorname{mean}_j s(U_2[j, i]) + \operatorname{mean}_j s(V_2[i, j])`.

    Budget (:meth:`budget`), total non-zero λ entries at step ``t``:

    .. math::

        b(t) = \begin{cases}
        b_0 & t \le t_i \\
        b_T + \left\lfloor (b_0 - b_T) \left(1 - \frac{t - t_i}{T - t_i - t_f}\right)^3 \right\rfloor
            & t_i < t < T - t_f \\
        b_T & t \ge T - t_f
        \end{cases}

    computed in exact rational arithmetic, so ``b(T − t_f) = b_T`` exactly. The mask is updated at
    steps divisible by ``interval`` in the middle phase and at the first call with ``t >= T − t_f``: the
    ``b(t)`` highest-scored triplets *among those still kept* stay (ties broken by position), so
    the total rank never grows, and equals ``b_T`` from ``T − t_f`` on. Unlike AdaLoRA, a pruned λ is
    never revived: with :math:`\lambda_i = 0` the gradients of ``U2[:, i]`` and ``V2[i, :]`` vanish
    (except for the orthogonality penalty's), so its score would only reflect that penalty.

    Every call of :meth:`update_and_allocate` also sets the pruned λ entries (and their gradients) to
    zero: called after ``optimizer.step()``, as below, they are exactly zero in every forward pass.
    Under DistributedDataParallel the gradients are already averaged when it runs, so every process
    computes the same scores and the same masks.

    References
    ----------
    Zhang et al., "LoRA²: Multi-Scale Low-Rank Approximations for Fine-Tuning Large Language Models",
    arXiv:2408.06854. Zhang et al., "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient
    Fine-Tuning", ICLR 2023 (the schedule and the smoothed importance).

    Examples
    --------
    Two LoRA² layers of rank 8 pruned to an average rank 2 over 10 steps:

    >>> import torch, tensorpeft as tp
    >>> _ = torch.manual_seed(0)
    >>> base = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
    >>> model = tp.get_peft_model(base, tp.LoRA2Config(rank=8, target_modules=["0", "2"]))
    >>> pruner = tp.RankPruner(model, target_rank=2, total_steps=10, warmup_steps=2, final_steps=3, interval=1)
    >>> [pruner.budget(t) for t in range(10)]
    [16, 16, 16, 10, 6, 4, 4, 4, 4, 4]
    >>> opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    >>> x = torch.randn(32, 8)
    >>> for step in range(10):
    ...     loss = (model(x) - x).pow(2).mean() + 0.1 * model.orthogonality_loss()
    ...     loss.backward()
    ...     opt.step()
    ...     rank = pruner.update_and_allocate(step)
    ...     opt.zero_grad()
    >>> rank, sum(pruner.rank_pattern().values())
    (4, 4)
    """

    def __init__(
        self,
        model,
        *,
        target_rank: int,
        total_steps: int,
        warmup_steps: int,
        final_steps: int,
        interval: int,
        initial_rank: int | None = None,
        beta1: float = 0.85,
        beta2: float = 0.85,
    ):
        from ._model import tuner_of

        peft = tuner_of(model)
        # the formats that name their rank components (decomp.TensorNetwork.rank_components): LoRA²'s
        components = {
            name: dict(stack.format.rank_components)
            for name, stack in peft.tensor_adapters.items()
            if stack.format.rank_components
        }
        stacks = {name: peft.tensor_adapters[name] for name in components}
        if not stacks:
            raise ValueError(
                "`model` has no LoRA² (OrthogonalProjection) adapter to prune (no stack whose format names "
                "`rank_components`); build it with tp.LoRA2Config, "
                f"got stacks of {sorted({type(s.format).__name__ for s in peft.tensor_adapters.values()})}."
            )
        fused = [p.name for p in peft.plans if p.name in stacks and p.rows is not None]
        if fused:
            raise ValueError(
                f"`model` has LoRA² stacks {fused} of fused slices (stack_by='input'), which RankPruner does not "
                "support: a fused slice's rank is shared by several layers (q, k, v), so per-matrix budgets and "
                "rank_pattern() would be wrong; build the adapter with another `stack_by`."
            )
        self._components = components
        self._gates = {name: next(iter(c)) for name, c in components.items()}
        self.total_steps = check_int_at_least(total_steps, "total_steps", 1)
        self.warmup_steps = check_int_at_least(warmup_steps, "warmup_steps", 0)
        self.final_steps = check_int_at_least(final_steps, "final_steps", 1)
        self.interval = check_int_at_least(interval, "interval", 1)
        if self.warmup_steps + self.final_steps >= self.total_steps:
            raise ValueError(
                f"`warmup_steps` + `final_steps` = {self.warmup_steps} + {self.final_steps} must be less than "
                f"`total_steps`={self.total_steps}: the budget needs at least one step to decrease."
            )
        max_rank = min(s.format.factor_shapes[self._gates[n]][-1] for n, s in stacks.items())
        initial = max_rank if initial_rank is None else check_int_at_least(initial_rank, "initial_rank", 1)
        if initial > max_rank:
            raise ValueError(
                f"`initial_rank`={initial} exceeds the rank of the LoRA² adapters ({max_rank}); "
                f"it must be <= {max_rank}."
            )
        target = check_int_at_least(target_rank, "target_rank", 1)
        if target > initial:
            raise ValueError(f"`target_rank`={target} exceeds `initial_rank`={initial}; it must be <= {initial}.")
        self.beta1 = check_fraction(beta1, "beta1")
        self.beta2 = check_fraction(beta2, "beta2")

        self.model = peft
        self.adapter_name = peft._active_name  # the adapter of peft.tensor_adapters
        self._plans = list(peft.plans)  # this adapter's, even after a set_adapter
        self._stacks = stacks
        self.num_matrices = sum(s.format.num_slices for s in stacks.values())
        self.initial_rank, self.target_rank = initial, target
        self.initial_budget = initial * self.num_matrices
        self.target_budget = target * self.num_matrices
        self.masks = {name: torch.ones_like(self._gate(name), dtype=torch.bool) for name in stacks}
        self._avg_ipt: dict[str, dict[str, torch.Tensor]] = {}
        self._avg_unc: dict[str, dict[str, torch.Tensor]] = {}
        self._final_done = False

    def _gate(self, name: str) -> torch.Tensor:
        """The gate factor of stack ``name`` (λ for LoRA²)."""
        return getattr(self._stacks[name], self._gates[name])

    # ------------------------------------------------------------------ schedule
    def budget(self, step: int) -> int:
        """The total number of non-zero λ entries the schedule allows at ``step`` (see the Notes).

        Parameters
        ----------
        step : int
            The optimizer step, ``>= 0``.

        Returns
        -------
        int
            ``b(step)``, between ``target_budget`` and ``initial_budget``.

        Examples
        --------
        See :class:`RankPruner`.
        """
        t = check_int_at_least(step, "step", 0)
        t_i, t_f, total = self.warmup_steps, self.final_steps, self.total_steps
        if t <= t_i:
            return self.initial_budget
        if t >= total - t_f:
            return self.target_budget
        remaining = 1 - Fraction(t - t_i, total - t_i - t_f)
        return self.target_budget + math.floor((self.initial_budget - self.target_budget) * remaining**3)

    def _masks_now(self, step: int) -> bool:
        if step >= self.total_steps - self.final_steps:
            return not self._final_done
        return step > self.warmup_steps and step % self.interval == 0

    # ------------------------------------------------------------------ importance
    @torch.no_grad()
    def _update_importance(self) -> None:
        params = {name: stack.factors() for name, stack in self._stacks.items()}
        if all(params[n][f].grad is None for n in params for f in self._components[n]):
            raise RuntimeError(
                "RankPruner.update_and_allocate found no gradient on any λ, U2 or V2: call it after "
                "loss.backward() and before optimizer.zero_grad()."
            )
        b1, b2 = self.beta1, self.beta2
        for name, factors in params.items():
            ipt_avg = self._avg_ipt.setdefault(name, {})
            unc_avg = self._avg_unc.setdefault(name, {})
            for f in self._components[name]:
                p = factors[f]
                ipt = (p * p.grad).abs() if p.grad is not None else torch.zeros_like(p)
                if f not in ipt_avg:
                    ipt_avg[f], unc_avg[f] = torch.zeros_like(p), torch.zeros_like(p)
                ipt_avg[f].mul_(b1).add_(ipt, alpha=1 - b1)
                unc_avg[f].mul_(b2).add_((ipt - ipt_avg[f]).abs(), alpha=1 - b2)

    @torch.no_grad()
    def scores(self) -> dict[str, torch.Tensor]:
        r"""Triplet scores :math:`S_i` per LoRA² stack, each of λ's shape ``(*stack, rank)``.

        Returns
        -------
        dict[str, torch.Tensor]
            Stack name → scores (zeros before the first :meth:`update_and_allocate`).

        Examples
        --------
        See :class:`RankPruner`.
        """
        out = {}
        for name in self._stacks:
            if name not in self._avg_ipt:
                out[name] = torch.zeros_like(self._gate(name)).detach()
                continue
            gate = self._gates[name]
            total = self._avg_ipt[name][gate] * self._avg_unc[name][gate]
            for f, axis in self._components[name].items():
                if f != gate:  # mean over the axis that is not the components' one
                    s = self._avg_ipt[name][f] * self._avg_unc[name][f]
                    total = total + s.mean(dim=-2 if axis == -1 else -1)
            out[name] = total
        return out

    # ------------------------------------------------------------------ masking
    @torch.no_grad()
    def _mask_to(self, budget: int) -> None:
        names = list(self._stacks)
        scores = self.scores()
        flat_scores = torch.cat([scores[n].reshape(-1).float().cpu() for n in names])
        flat_mask = torch.cat([self.masks[n].reshape(-1).cpu() for n in names])
        if int(flat_mask.sum()) <= budget:
            return
        ranked = torch.where(flat_mask, flat_scores, torch.full_like(flat_scores, -math.inf))
        order = torch.sort(ranked, descending=True, stable=True).indices
        keep = torch.zeros_like(flat_mask)
        keep[order[:budget]] = True
        start = 0
        for n in names:
            size = self.masks[n].numel()
            self.masks[n] = keep[start : start + size].reshape(self.masks[n].shape).to(self.masks[n].device)
            start += size

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Set the pruned λ entries, and their gradients if present, to zero.

        :meth:`update_and_allocate` calls it every step; call it yourself after loading a checkpoint
        or after any update that bypasses :meth:`update_and_allocate`.

        Examples
        --------
        See :class:`RankPruner`.
        """
        for name in self._stacks:
            lam = self._gate(name)
            pruned = ~self.masks[name]
            lam.masked_fill_(pruned, 0.0)
            if lam.grad is not None:
                lam.grad.masked_fill_(pruned, 0.0)

    def update_and_allocate(self, step: int) -> int:
        """Update the importance scores, prune on schedule, and zero the pruned λ.

        Call once per optimizer step, after ``optimizer.step()`` and before ``optimizer.zero_grad()``
        (the gradients must still be there), as AdaLoRA's ``update_and_allocate``::

            loss.backward()
            optimizer.step()
            pruner.update_and_allocate(step)
            optimizer.zero_grad()

        Parameters
        ----------
        step : int
            The index of the optimizer step just taken, ``0 .. total_steps - 1``; later steps keep
            the final mask.

        Returns
        -------
        int
            The total number of kept λ entries after this call (the model's total LoRA² rank).

        Raises
        ------
        RuntimeError
            If no λ, ``U2`` or ``V2`` has a gradient (called before ``backward`` or after ``zero_grad``)
            while scores are still being updated.

        Examples
        --------
        See :class:`RankPruner`.
        """
        t = check_int_at_least(step, "step", 0)
        final = t >= self.total_steps - self.final_steps
        if not (final and self._final_done):
            self._update_importance()
        if self._masks_now(t):
            self._mask_to(self.budget(t))
            self._final_done = self._final_done or final
        self.apply_mask()
        return self.total_rank

    # ------------------------------------------------------------------ reporting
    @property
    def total_rank(self) -> int:
        """Number of kept λ entries over all LoRA² slices (the sum of :meth:`rank_pattern`)."""
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def rank_pattern(self) -> dict[str, int]:
        """Kept rank of every adapted layer, by module name (the base model's names).

        Returns
        -------
        dict[str, int]
            Module name → number of kept λ entries of its slice.

        Examples
        --------
        See :class:`RankPruner`.
        """
        out = {}
        for plan in self._plans:
            if plan.name in self._stacks:
                for module, index in plan.members:
                    out[module] = int(self.masks[plan.name][index].sum())
        return out

    def state_dict(self) -> dict:
        """The masks and smoothed importances, to resume a run (``torch.save`` it with the optimizer).

        Returns
        -------
        dict
            ``{"masks", "avg_ipt", "avg_unc", "final_done"}`` (tensors cloned).

        Examples
        --------
        >>> import torch, tensorpeft as tp
        >>> base = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> model = tp.get_peft_model(base, tp.LoRA2Config(rank=2, target_modules=["0"]))
        >>> pruner = tp.RankPruner(model, target_rank=1, total_steps=4, warmup_steps=0, final_steps=1, interval=1)
        >>> sorted(pruner.state_dict())
        ['avg_ipt', 'avg_unc', 'final_done', 'masks']
        """

        def clone(d):
            return {k: {f: t.clone() for f, t in v.items()} for k, v in d.items()}

        return {
            "masks": {k: m.clone() for k, m in self.masks.items()},
            "avg_ipt": clone(self._avg_ipt),
            "avg_unc": clone(self._avg_unc),
            "final_done": self._final_done,
        }

    def _check_state(self, state) -> None:
        """Raise unless ``state`` has this pruner's keys, stacks, shapes and types (see :meth:`load_state_dict`)."""
        keys = {"masks", "avg_ipt", "avg_unc", "final_done"}
        if not isinstance(state, dict) or set(state) != keys:
            got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"`state` must be a dict from RankPruner.state_dict() (keys {sorted(keys)}), got {got}.")
        masks = state["masks"]
        if not isinstance(masks, dict) or set(masks) != set(self.masks):
            got = sorted(map(str, masks)) if isinstance(masks, dict) else type(masks).__name__
            raise ValueError(f"`state['masks']` must have the LoRA² stacks {sorted(self.masks)}, got {got}.")
        for k, m in masks.items():
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.shape != self.masks[k].shape:
                raise ValueError(
                    f"`state['masks'][{k!r}]` must be a bool tensor of shape {tuple(self.masks[k].shape)}, got {m!r}."
                )
        for key in ("avg_ipt", "avg_unc"):
            self._check_importances(state[key], key)
        if not isinstance(state["final_done"], bool):
            raise TypeError(f"`state['final_done']` must be a bool, got {state['final_done']!r}.")

    def _importances_on_device(self, value: dict) -> dict:
        """Copies of saved importances on the device of their stack's factors."""
        out = {}
        for k, v in value.items():
            device = self._gate(k).device
            out[k] = {f: t.detach().clone().to(device) for f, t in v.items()}
        return out

    def _check_importances(self, value, key: str) -> None:
        if not isinstance(value, dict):
            raise TypeError(f"`state[{key!r}]` must be a dict of stacks, got {type(value).__name__}.")
        for k, v in value.items():
            if k not in self._stacks:
                raise ValueError(f"`state[{key!r}]` has importances of unknown stack {k!r}.")
            shapes, dtype = self._stacks[k].format.factor_shapes, self._stacks[k].dtype
            scored = list(self._components[k])
            if not isinstance(v, dict) or set(v) != set(scored):
                raise ValueError(f"`state[{key!r}][{k!r}]` must be a dict of tensors {scored}, got {v!r}.")
            for f in scored:
                t = v[f]
                if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != tuple(shapes[f]):
                    raise ValueError(
                        f"`state[{key!r}][{k!r}][{f!r}]` must be a {dtype} tensor of shape {tuple(shapes[f])}, "
                        f"got {t!r}."
                    )

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (checked against this model's LoRA² stacks), then :meth:`apply_mask`.

        Parameters
        ----------
        state : dict
            From :meth:`state_dict` of a pruner of the same model.

        Raises
        ------
        TypeError, ValueError
            If the keys, stacks, shapes, dtypes or types differ from this pruner's (masks must be bool
            tensors, importances tensors of the factors' dtype); nothing is changed then.

        Examples
        --------
        >>> import torch, tensorpeft as tp
        >>> base = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> model = tp.get_peft_model(base, tp.LoRA2Config(rank=2, target_modules=["0"]))
        >>> pruner = tp.RankPruner(model, target_rank=1, total_steps=4, warmup_steps=0, final_steps=1, interval=1)
        >>> pruner.load_state_dict(pruner.state_dict())
        """
        self._check_state(state)
        masks = state["masks"]
        self.masks = {k: m.clone().to(self.masks[k].device) for k, m in masks.items()}
        self._avg_ipt = self._importances_on_device(state["avg_ipt"])
        self._avg_unc = self._importances_on_device(state["avg_unc"])
        self._final_done = state["final_done"]
        self.apply_mask()
