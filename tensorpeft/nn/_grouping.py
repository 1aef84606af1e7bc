"""Grouping matched layers into stacks, and the validated plan of every stack.

A *plan* is everything about a stack that depends on the base model: its member layers with their
index in the stack, its shape and its format. It is computed before anything is changed, so a bad
rank or a mismatched saved adapter fails with nothing touched; saved adapters store their plans and
loading compares them with the plans of the new base model.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from torch import nn

from ._config import AdapterConfig
from ._layer import AdapterLinear
from ._linear import linear_shape
from ._targets import find_targets

__all__ = ["SIBLING_SETS", "StackPlan", "check_not_adapted", "model_heads", "plan_stacks"]

SIBLING_SETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),  # LLaMA, Mistral, Qwen, OPT, ...
    ("gate_proj", "up_proj"),  # LLaMA-style gated MLPs
    ("query", "key", "value"),  # BERT, RoBERTa, ViT
    ("w1", "w3"),  # Mixtral-style experts
)
"""Projections that read the same input, for ``stack_by="input"``.

Matched on the last component of a module name: targeted layers of one set with the same parent module
and the same ``in_features`` form one *fused slice* (their rows stacked in module order, as a fused
``qkv`` layer), so the input side of the format (Tucker-2's ``B``, CP's ``in``, LoRA's ``A``) is shared
and ``x·B`` is computed once per parent. A set member alone in its parent, and every layer in no set, is
grouped as ``stack_by="name"`` groups it.
"""


@dataclass(frozen=True)
class StackPlan:
    """One stack: ``members`` are ``(module name, index in the stack)`` pairs, ``rows`` their output rows.

    Attributes
    ----------
    name : str
        The stack's name (its key in ``TensorPeftModel.tensor_adapters``).
    stack : tuple of int
        Sizes of the stacked modes.
    out_features, in_features : int
        Shape ``out × in`` of every slice of the stack: of every member layer, or, in a fused stack, of
        the rows of its members at one index stacked together.
    heads : int or None
        Number of output heads (CP only), else None.
    members : tuple of (str, tuple of int)
        ``(module name, index in the stack)`` of every member layer.
    rows : tuple of (int, int), optional
        ``None``: every member is a whole slice. In a fused stack (``stack_by="input"``), one
        ``(start, stop)`` per member, parallel to ``members``: the member's update is rows
        ``start:stop`` of its slice; the row ranges of one index do not overlap. Files written before
        fused stacks existed have no rows and read as ``None``.

    Examples
    --------
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> model = tp.get_peft_model(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))
    >>> plan = model.plans[0]
    >>> plan  # doctest: +NORMALIZE_WHITESPACE
    StackPlan(name='stack', stack=(2,), out_features=16, in_features=16, heads=None,
              members=(('0', (0,)), ('2', (1,))), rows=None)
    >>> tp.nn.StackPlan.from_dict(plan.to_dict()) == plan
    True
    """

    name: str
    stack: tuple[int, ...]
    out_features: int
    in_features: int
    heads: int | None
    members: tuple[tuple[str, tuple[int, ...]], ...]
    rows: tuple[tuple[int, int], ...] | None = None

    def member_rows(self) -> tuple[tuple[int, int] | None, ...]:
        """The row range of every member, parallel to ``members`` (``None``: all rows of its slice)."""
        return self.rows if self.rows is not None else (None,) * len(self.members)

    def to_dict(self) -> dict:
        """JSON-safe form (lists for tuples); ``"rows"`` only for a fused stack, so other files are unchanged."""
        out = {
            "name": self.name,
            "stack": list(self.stack),
            "out_features": self.out_features,
            "in_features": self.in_features,
            "heads": self.heads,
            "members": [[n, list(i)] for n, i in self.members],
        }
        if self.rows is not None:
            out["rows"] = [list(r) for r in self.rows]
        return out

    @staticmethod
    def from_dict(data: dict) -> StackPlan:
        """Inverse of :meth:`to_dict`; strict: every count must be a JSON integer (no ``2.7``, no ``"3"``).

        ``"rows"`` is optional (files without it are read as whole slices); when present it must hold one
        ``[start, stop]`` per member with ``0 <= start < stop <= out_features``, and the ranges of members
        at the same index must not overlap.
        """
        try:
            if not isinstance(data, dict) or not isinstance(data["name"], str):
                raise TypeError("expected a dict with a string `name`")
            out_features = _count(data["out_features"])
            members = tuple(_member(m) for m in _items(data["members"]))
            rows = data.get("rows")
            return StackPlan(
                name=data["name"],
                stack=tuple(_count(s) for s in _items(data["stack"])),
                out_features=out_features,
                in_features=_count(data["in_features"]),
                heads=None if data["heads"] is None else _count(data["heads"]),
                members=members,
                rows=None if rows is None else _rows(rows, members, out_features),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"`stacks` entry {data!r:.300} is malformed: {exc}.") from None


def _items(value) -> list:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _count(value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TypeError(f"expected an integer >= {minimum}, got {value!r}")
    return value


def _member(value) -> tuple[str, tuple[int, ...]]:
    name, index = _items(value)
    if not isinstance(name, str):
        raise TypeError(f"expected a module name, got {name!r}")
    return name, tuple(_count(k, minimum=0) for k in _items(index))


def _rows(value, members, out_features: int) -> tuple[tuple[int, int], ...]:
    """The ``rows`` entry of a plan: one non-empty, in-range ``[start, stop]`` per member, no overlap per index."""
    items = _items(value)
    if len(items) != len(members):
        raise ValueError(f"`rows` must have one [start, stop] per member ({len(members)}), got {len(items)}")
    rows = []
    for item in items:
        pair = _items(item)
        if len(pair) != 2:
            raise ValueError(f"a `rows` entry must be [start, stop], got {pair!r}")
        start, stop = _count(pair[0], minimum=0), _count(pair[1])
        if not start < stop <= out_features:
            raise ValueError(f"`rows` entry {pair!r} must satisfy 0 <= start < stop <= out_features={out_features}")
        rows.append((start, stop))
    by_index: dict = {}
    for (_, index), (start, stop) in zip(members, rows, strict=True):
        by_index.setdefault(index, []).append((start, stop))
    for index, ranges in by_index.items():
        ranges.sort()
        for (_, stop), (start, _) in itertools.pairwise(ranges):
            if start < stop:
                raise ValueError(f"`rows` of the members at index {list(index)} overlap: {[list(r) for r in ranges]}")
    return tuple(rows)


def _kind_and_layer(name: str) -> tuple[str, tuple[int, ...]]:
    """``encoder.layer.3.attention.self.query`` -> (``encoder.layer.*.attention.self.query``, (3,))."""
    parts = name.split(".")
    layer = tuple(int(p) for p in parts if p.isdigit())
    kind = ".".join("*" if p.isdigit() else p for p in parts)
    return kind, layer


def _slug(text: str) -> str:
    slug = re.sub(r"[^0-9A-Za-z]+", "_", text.replace("*", "")).strip("_")
    return slug or "stack"


def model_heads(model: nn.Module) -> dict | None:
    """``{"head_dim", "heads", "kv_heads"}`` from a transformers config, or None."""
    cfg = getattr(model, "config", None)
    heads = getattr(cfg, "num_attention_heads", None)
    hidden = getattr(cfg, "hidden_size", None)
    if not isinstance(heads, int) or not isinstance(hidden, int) or heads < 1:
        return None
    head_dim = getattr(cfg, "head_dim", None)
    if not isinstance(head_dim, int) or head_dim < 1:
        if hidden % heads:
            return None
        head_dim = hidden // heads
    kv = getattr(cfg, "num_key_value_heads", None)
    return {"head_dim": head_dim, "heads": heads, "kv_heads": kv if isinstance(kv, int) and kv > 0 else heads}


def _fused_slices(names_shapes) -> list[list[str]]:
    """The fused slices of ``stack_by="input"``: lists of >= 2 names (module order), see :data:`SIBLING_SETS`."""
    sibling_set = {member: k for k, group in enumerate(SIBLING_SETS) for member in group}
    buckets: dict = {}
    for name, (_, in_features) in names_shapes:
        parent, _, last = name.rpartition(".")
        if last in sibling_set:
            buckets.setdefault((parent, sibling_set[last], in_features), []).append(name)
    return [names for names in buckets.values() if len(names) > 1]


def _group_by_input(names_shapes):
    """``stack_by="input"``: fused slices of one kind across layers form a stack, the rest as ``"name"``."""
    shapes = dict(names_shapes)
    slice_of = {names[0]: names for names in _fused_slices(names_shapes)}
    fused = {n for names in slice_of.values() for n in names}
    groups: dict = {}
    for name, shape in names_shapes:
        if name in slice_of:
            names = slice_of[name]
            parent_kind, _ = _kind_and_layer(name.rpartition(".")[0])
            lasts = tuple(n.rpartition(".")[2] for n in names)
            key = ("input", parent_kind, lasts, tuple(shapes[n] for n in names))
            groups.setdefault(key, []).append(names)
        elif name not in fused:
            groups.setdefault(("name", _kind_and_layer(name)[0], shape), []).append(name)
    out = []
    for key, entries in groups.items():
        if key[0] == "name":
            out.append((key[1], [(n, (k,)) for k, n in enumerate(entries)], (len(entries),), None, key[2]))
            continue
        _, parent_kind, lasts, member_shapes = key
        bounds, start = [], 0
        for out_features, _ in member_shapes:
            bounds.append((start, start + out_features))
            start += out_features
        members = [(n, (k,)) for k, names in enumerate(entries) for n in names]
        rows = [r for _ in entries for r in bounds]
        label = f"{parent_kind}.{'_'.join(lasts)}" if parent_kind else "_".join(lasts)
        out.append((label, members, (len(entries),), rows, (start, member_shapes[0][1])))
    return out


def _group(names_shapes, stack_by):
    """Ordered groups ``[(label, [(name, index)], stack, rows or None, (out, in) of a slice)]``."""
    if stack_by == "input":
        return _group_by_input(names_shapes)
    groups: dict = {}
    shapes = dict(names_shapes)
    for name, shape in names_shapes:
        kind, _ = _kind_and_layer(name)
        key = {"name": (kind, shape), "shape": shape, "module": name}[stack_by]
        groups.setdefault(key, []).append(name)
    out = []
    for key, names in groups.items():
        shape = shapes[names[0]]
        if stack_by == "module":
            out.append((names[0], [(names[0], ())], (), None, shape))
            continue
        if stack_by == "name":
            out.append((key[0], [(n, (k,)) for k, n in enumerate(names)], (len(names),), None, shape))
            continue
        # "shape": a (layers, kinds) grid when every layer has every kind, else flat
        cell = {n: _kind_and_layer(n) for n in names}  # name -> (kind, layer)
        kinds = list(dict.fromkeys(k for k, _ in cell.values()))
        layers = list(dict.fromkeys(layer for _, layer in cell.values()))
        label = f"shape_{key[0]}x{key[1]}"
        full_grid = len(set(cell.values())) == len(names) == len(kinds) * len(layers)
        if len(kinds) > 1 and len(layers) > 1 and full_grid:
            members = [(n, (layers.index(cell[n][1]), kinds.index(cell[n][0]))) for n in names]
            out.append((label, members, (len(layers), len(kinds)), None, shape))
        else:
            out.append((label, [(n, (k,)) for k, n in enumerate(names)], (len(names),), None, shape))
    return out


def check_not_adapted(model: nn.Module) -> None:
    """Raise ValueError if ``model`` already contains tensorpeft adapters (an :class:`AdapterLinear`)."""
    if any(isinstance(m, AdapterLinear) for m in model.modules()):
        raise ValueError("`model` already contains tensorpeft adapters; pass the plain base model.")


def _plain_view(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``named_modules()`` with each :class:`AdapterLinear` shown as its base layer, its insides hidden."""
    out, hidden = [], []
    for name, module in model.named_modules():
        if any(name.startswith(h + ".") for h in hidden):
            continue
        if isinstance(module, AdapterLinear):
            hidden.append(name)
            module = module.base_layer
        out.append((name, module))
    return out


def plan_stacks(model: nn.Module, config, *, adapted_ok: bool = False) -> list[tuple[StackPlan, object]]:
    """Match, group and validate: the ``(plan, format)`` of every stack, in module order.

    What :class:`TensorPeftModel` would build on ``model``, computed without changing it: use it to count
    the adapter parameters of a config (``sum(fmt.num_params for _, fmt in plan_stacks(model, config))``)
    or to see how the layers are grouped before wrapping anything.

    Parameters
    ----------
    model : nn.Module
        The plain base model (not already adapted); left unchanged.
    config : AdapterConfig
        Which layers to adapt, how to stack them and with which format.
    adapted_ok : bool
        Plan another adapter on a model that already has some: adapted layers count as their base
        layers (the tuner's ``add_adapter`` path). Default: an adapted model is an error.

    Returns
    -------
    list of (StackPlan, format)
        One pair per stack: its :class:`StackPlan` and the :mod:`tensorpeft.decomp` format (e.g. a
        :class:`~tensorpeft.decomp.Tucker2`) its factors will have.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` or ``config`` not an :class:`AdapterConfig`.
    ValueError
        If ``model`` already contains tensorpeft adapters, a ``target_modules`` entry matches no linear
        layer, or a format rejects a stack (e.g. ``rank`` above a layer dimension); the message names the
        stack, its layers and their shape.

    Examples
    --------
    >>> import torch, tensorpeft as tp
    >>> base = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    >>> [(plan.name, plan.stack, fmt.num_params) for plan, fmt in
    ...  tp.nn.plan_stacks(base, tp.Tucker2Config(rank=2, target_modules=["0", "2"]))]
    [('stack', (2,), 72)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"`config` must be an AdapterConfig (e.g. Tucker2Config), got {type(config).__name__}.")
    if adapted_ok:
        named = _plain_view(model)
    else:
        check_not_adapted(model)
        named = None
    targets = find_targets(model, config, named)
    names_shapes = [(n, linear_shape(m)) for n, m in targets]
    heads_info = model_heads(model)
    used: set[str] = set()
    plans = []
    for label, members, stack, rows, (out_features, in_features) in _group(names_shapes, config.stack_by):
        name = _slug(label)
        base, k = name, 2
        while name in used or hasattr(nn.ModuleDict, name):  # ModuleDict rejects e.g. "keys"
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        fused = "" if rows is None else ", rows fused by input"
        what = f"stack {name!r} ({len(members)} layer(s) like {members[0][0]!r}, {out_features}×{in_features}{fused})"
        heads = config.resolve_heads(out_features, heads_info)
        try:
            fmt = config.build_format(stack, out_features, in_features, heads)
        except (TypeError, ValueError) as exc:
            kind = TypeError if isinstance(exc, TypeError) else ValueError  # subclasses may take other arguments
            raise kind(f"{type(config).__name__} does not fit {what}: {exc}") from None
        plan = StackPlan(
            name, tuple(stack), out_features, in_features, heads, tuple(members), None if rows is None else tuple(rows)
        )
        plans.append((plan, fmt))
    return plans
