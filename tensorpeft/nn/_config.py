"""Adapter configurations: ``peft.PeftConfig`` dataclasses, validated at construction, JSON round-trip.

One class per format of :mod:`tensorpeft.decomp`, with aliases named after the papers, all of PEFT's
method ``TENSORPEFT`` (see :mod:`._peft_registry`); the ``format`` field says which. A config only
describes *what* to adapt and *how*; :func:`tensorpeft.get_peft_model` turns it, per stack of matched
layers, into a format object via :meth:`AdapterConfig.build_format`.

A config built from data (a file, :meth:`AdapterConfig.from_dict`, PEFT's ``PeftConfig.from_pretrained``)
carries its ``peft_type``; a :class:`CustomConfig` built that way never imports its factory unless the
caller trusted it (:func:`trusting`), whichever library parsed the file.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
import inspect
import json
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from peft import PeftConfig

from .. import decomp
from ..decomp.validate import check_fraction, check_int_or_tuple, check_seed
from ._factories import builtin_factory, check_trusted, factory_path, resolve_factory, trusted_factories
from ._fields import (
    _alpha,
    _check_peft_fields,
    _choice,
    _int_tuple,
    _json_rank,
    _names,
    _refuse_constant,
    _size,
)
from ._selector import module_selector

__all__ = [  # the configs (with the papers' names): tensorpeft.nn and tensorpeft export exactly these
    "AdapterConfig",
    "CPConfig",
    "CustomConfig",
    "LoRA2Config",
    "LoRAConfig",
    "LoRTAConfig",
    "LoTRConfig",
    "OrthogonalConfig",
    "TTLoRAConfig",
    "TensorTrainConfig",
    "Tucker2Config",
]

STACK_BY = ("name", "shape", "module", "input")
INITS = ("zero", "svd")
# {format name: config class}, filled by AdapterConfig.__init_subclass__ as the classes are defined.
_CONFIG_CLASSES: dict[str, type] = {}
# The factory strings a config parsed from data may import (set by from_dict / from_pretrained only).
_TRUSTED: contextvars.ContextVar[frozenset | bool] = contextvars.ContextVar("tensorpeft_trusted", default=frozenset())


@contextlib.contextmanager
def trusting(trusted):
    """Within the block, configs built from data may import the factories in ``trusted`` (or any: True)."""
    token = _TRUSTED.set(trusted if trusted is True else frozenset(trusted or ()))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


@dataclass(kw_only=True)
class AdapterConfig(PeftConfig):
    """Fields shared by every adapter format (keyword-only); a ``peft.PeftConfig``.

    Parameters
    ----------
    target_modules : list of str, str
        Which ``nn.Linear`` / transformers ``Conv1D`` layers to adapt: a list of name suffixes (``"query"``
        matches ``encoder.layer.0.attention.self.query``, as in PEFT), a regex string that must match the
        full module name, or ``"all-linear"`` (every linear layer except the output embedding).
        Every list entry must match at least one module.
    rank : int
        Rank of the format (see each subclass), at most ``2**31`` (as every size of a config). A rank
        whose factors do not fit in memory is refused by :func:`~tensorpeft.get_peft_model` before
        anything is allocated.
    alpha : float
        Numerator of the scaling; the update added to a layer is ``scaling · ΔW x``. Finite, with
        ``|alpha| <= 1e6``, so ``|scaling| <= 1e6`` for every format (in use: 0.5 to 64). Merging adds
        ``scaling · ΔW`` to the fp32 weight ``W0`` and unmerging subtracts it, which gives ``W0`` back up
        to the round-off of the merged weight, about ``6e-8 · |scaling · ΔW|``: measured on a 64×64 LoRA
        of rank 8 with factor entries of 0.01 (a trained size), ``W0`` comes back to 1e-7 relative at
        ``alpha = 1e4``, 1e-5 at ``1e6``, 1e-3 at ``1e8`` and is lost (error ≈ ``|W0|``) from ``1e12``.
    dropout : float
        Dropout probability on the adapter's input (as PEFT's ``lora_dropout``), ``0 <= p < 1``.
    exclude_modules : list of str, str, optional
        Layers never adapted, same syntax as ``target_modules`` (no ``"all-linear"``).
    stack_by : {"name", "shape", "module", "input"}
        How matched layers are grouped into stacks that share factors: ``"name"`` — by module name
        across layers (all ``query`` layers form one stack ``(layers,)``); ``"shape"`` — every matched
        layer of one ``(out, in)`` shape in one stack, ``(layers, kinds)`` when every layer has every
        kind, otherwise flat; ``"module"`` — one stack per layer, no sharing; ``"input"`` — the
        projections of one module that read the same input (``q_proj``/``k_proj``/``v_proj``,
        ``gate_proj``/``up_proj``, ``query``/``key``/``value``, ``w1``/``w3``, matched on the last
        name component, with the same parent module and ``in_features``) form one *fused
        slice* of ``out = q + k + v`` rows, as a fused ``qkv`` layer, and the fused slices of one kind
        across layers one stack ``(layers,)``; every other layer is grouped as ``"name"``. The input side
        of the format (Tucker-2's ``B``, CP's ``in``, LoRA's ``A``) is then shared by the projections of a
        layer even when their output sizes differ (grouped-query attention, where ``"shape"`` cannot
        group q with k and v), and during the model's forward ``x·B`` and the slice's core are computed
        once per layer and each projection multiplies by its rows of the output factor. Exact: each
        projection gets exactly its rows of the fused slice's update, in forward, merge and export.
        Apart from fused slices, layers of different shapes never share a stack (nothing is padded).
    init : {"zero", "svd"}
        ``"zero"``: the format's own init (random factors, one factor zero). ``"svd"``: the factors are
        fitted to the pretrained weights of the stack with the format's ``fit`` (dominant singular
        subspaces), then the format's zero factor is set to zero and every other factor rescaled to
        the Frobenius norm it has under ``"zero"``. Either way ΔW starts at exactly zero.
    seed : int
        Seed of the initialization, in ``[0, 2**63 - 1]``; stack ``k`` uses ``(seed + k) mod 2**63``.
    modules_to_save : list of str, optional
        Modules trained in full and saved with the adapter (PEFT's field), e.g. ``["classifier"]``;
        ``task_type="SEQ_CLS"`` adds ``classifier`` and ``score`` as in PEFT. They are never adapted.
    task_type : str, optional
        PEFT's task (``"SEQ_CLS"``, ``"CAUSAL_LM"``, ...): ``peft.get_peft_model`` then returns the task's
        ``PeftModel`` subclass.
    inference_mode : bool
        PEFT's: the adapter is frozen (set when loading without ``is_trainable``).
    base_model_name_or_path, revision : str, optional
        PEFT's: the base model the adapter was trained on (filled by ``get_peft_model`` when known).
    peft_type : str
        Always ``"TENSORPEFT"`` (``peft.PeftType.TENSORPEFT``); a config built from data passes it.
    peft_version : str, optional
        PEFT's: the PEFT version that wrote the config (filled in).
    auto_mapping : dict, optional
        PEFT's hint for ``AutoPeftModel`` (the base model class), written by ``save_pretrained``.
    format : str
        The format's name (``"Tucker2"`` for :class:`Tucker2Config`), set by the class; written to JSON
        so that a file says which class reads it.
    tensorpeft : dict, optional
        File metadata (version, stack plans, checksum) read back with a saved config; not compared.

    Notes
    -----
    ``peft_type`` is always ``"TENSORPEFT"``: one PEFT method for every format, so adapters of
    different formats can share a base model (``add_adapter``).

    Examples
    --------
    Build a concrete subclass; the base class holds the JSON round-trip:

    >>> import tensorpeft as tp
    >>> cfg = tp.CPConfig(rank=4, target_modules=["query", "value"])
    >>> cfg.stack_by, cfg.scaling
    ('shape', 4.0)
    >>> tp.AdapterConfig.from_json(cfg.to_json()) == cfg
    True
    """

    format_name: ClassVar[str] = ""
    target_modules: Any = None
    rank: Any = 8
    alpha: float = 8.0
    dropout: float = 0.0
    exclude_modules: Any = None
    stack_by: str = "module"
    init: str = "zero"
    seed: int = 0
    modules_to_save: Any = None
    format: Any = None
    tensorpeft: Any = field(default=None, compare=False, repr=False)  # file metadata, see _serialization

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__signature__ = None  # not the base class's (see below): inspect reads the subclass's __init__
        if "format_name" in cls.__dict__ and cls.format_name:
            _CONFIG_CLASSES[cls.format_name] = cls  # a new format's config registers itself

    def __new__(cls, *args, **kwargs):
        # PEFT builds a config from JSON as ``AdapterConfig(**fields)`` (the class registered for the
        # TENSORPEFT type): pick the concrete class from the ``format`` field.
        if cls is AdapterConfig:
            name = kwargs.get("format")
            classes = _CONFIG_CLASSES
            if name not in classes:
                raise TypeError(
                    "AdapterConfig is abstract; use LoRAConfig, Tucker2Config, CPConfig, ... or pass "
                    f"`format`= one of {sorted(classes)} (got {name!r})."
                )
            cls = classes[name]
        return super().__new__(cls)

    def __post_init__(self):
        from ._peft_registry import peft_type_member

        parsed = self.peft_type is not None  # built from data (a file): see CustomConfig
        if self.peft_type is not None and (not isinstance(self.peft_type, str) or self.peft_type != "TENSORPEFT"):
            raise ValueError(f"`peft_type` must be 'TENSORPEFT' for a tensorpeft config, got {self.peft_type!r}.")
        self.peft_type = peft_type_member()
        _check_peft_fields(self)
        super().__post_init__()  # PEFT: peft_version
        if self.format is not None and (not isinstance(self.format, str) or self.format != self.format_name):
            raise ValueError(f"`format` of {type(self).__name__} must be {self.format_name!r}, got {self.format!r}.")
        self.format = self.format_name
        if self.target_modules is None:
            raise TypeError(
                f"{type(self).__name__} needs `target_modules` (a list of layer names, a regex, 'all-linear')."
            )
        if self.modules_to_save is not None:
            self.modules_to_save = _names(self.modules_to_save, "modules_to_save")
        self._parsed = parsed
        self.target_modules = module_selector(self.target_modules, "target_modules", allow_all_linear=True)
        if self.exclude_modules is not None:
            self.exclude_modules = module_selector(self.exclude_modules, "exclude_modules", allow_all_linear=False)
        self.alpha = _alpha(self.alpha)
        self.dropout = check_fraction(self.dropout, "dropout")
        self.stack_by = _choice(self.stack_by, STACK_BY, "stack_by")
        self.init = _choice(self.init, INITS, "init")
        self.seed = check_seed(self.seed)
        self._check_format_fields()

    # ------------------------------------------------------------------ per format
    def _check_format_fields(self) -> None:
        self.rank = _size(self.rank, "rank")

    @property
    def scaling(self) -> float:
        """Factor applied to ``ΔW x``: ``alpha / rank`` unless the format says otherwise."""
        return self.alpha / self.rank

    def format_kwargs(self, out_features: int, in_features: int, heads: int | None) -> dict:
        """Keyword arguments of the format besides ``stack``/``out_features``/``in_features``."""
        return {"rank": self.rank}

    def resolve_heads(self, out_features: int, model_heads: dict | None) -> int | None:
        """Number of output heads of a stack (only CP splits heads)."""
        return None

    def build_format(self, stack, out_features: int, in_features: int, heads: int | None = None):
        """The :mod:`tensorpeft.decomp` format of one stack of ``prod(stack)`` layers ``out × in``."""
        cls = getattr(decomp, self.format_name)
        return cls(
            stack=tuple(stack),
            out_features=out_features,
            in_features=in_features,
            **self.format_kwargs(out_features, in_features, heads),
        )

    # ------------------------------------------------------------------ serialization
    def to_dict(self) -> dict:
        """JSON-safe dict of every field (PEFT's and ours); ``"format"`` names the config class."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "tensorpeft" and value is None:
                continue
            if isinstance(value, tuple | set):
                value = list(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            out[f.name] = value
        return out

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Write ``adapter_config.json`` into ``save_directory`` (PEFT calls this after the weights).

        As PEFT's, plus what a load checks: the stack plans of the model it was saved from and the
        SHA-256 of the ``adapter_model.safetensors`` already written beside it (see
        :mod:`tensorpeft.nn._serialization`). Written atomically (a temporary file renamed).
        """
        from ._serialization import write_config

        write_config(self, save_directory, auto_mapping=kwargs.get("auto_mapping_dict"))

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, subfolder=None, *, trust_custom_factories=False, **kwargs
    ) -> AdapterConfig:
        """Read a local adapter directory's config, strictly (PEFT calls this in ``PeftModel.from_pretrained``).

        Parameters
        ----------
        pretrained_model_name_or_path : str or PathLike
            A local directory (nothing is downloaded; hub arguments in ``kwargs`` are ignored).
        subfolder : str, optional
            A subdirectory of it (PEFT's multi-adapter layout).
        trust_custom_factories : bool or list
            As in :meth:`from_dict`.

        Raises
        ------
        TypeError, ValueError
            As :func:`tensorpeft.nn.load_adapter` for the config file.
        """
        from ._serialization import read_config

        path = (
            os.path.join(os.fspath(pretrained_model_name_or_path), subfolder)
            if subfolder
            else pretrained_model_name_or_path
        )
        config = read_config(path, trust_custom_factories)
        if cls is not AdapterConfig and not isinstance(config, cls):
            raise ValueError(f"{path} holds a {type(config).__name__}, not a {cls.__name__}.")
        return config

    def to_json(self) -> str:
        """The config as a JSON string (see :meth:`from_json`)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(data: dict, *, trust_custom_factories: bool | Sequence = False) -> AdapterConfig:
        """Rebuild (and validate) a config from :meth:`to_dict`'s output.

        Parameters
        ----------
        data : dict
            The output of :meth:`to_dict`, e.g. parsed from a file: untrusted.
        trust_custom_factories : bool or list of (callable or str)
            A :class:`CustomConfig` whose ``factory`` is not a built-in format is refused unless this is
            ``True`` (import and call whatever the data names) or a list holding that factory (the
            function or its ``"module:qualname"``). Nothing is imported before this check.

        Returns
        -------
        AdapterConfig
            The config of the class ``data["format"]`` names.

        Raises
        ------
        ValueError
            If ``"format"`` is missing or unknown, a field is unknown or invalid, or a custom factory is
            not trusted.
        """
        trusted = trusted_factories(trust_custom_factories)
        if not isinstance(data, dict):
            raise TypeError(f"`data` must be a dict, got {type(data).__name__}.")
        data = dict(data)
        name = data.get("format", None)
        classes = _CONFIG_CLASSES
        if name not in classes:
            raise ValueError(f"`data['format']` must be one of {sorted(classes)}, got {name!r}.")
        cls = classes[name]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"`data` has unknown field(s) {unknown} for {cls.__name__}; expected some of {sorted(known)}."
            )
        if cls is CustomConfig:
            check_trusted(data.get("factory"), trusted)
        with trusting(trusted):
            return cls(**data)

    @staticmethod
    def from_json(text: str, *, trust_custom_factories: bool | Sequence = False) -> AdapterConfig:
        """Inverse of :meth:`to_json`; ``trust_custom_factories`` as in :meth:`from_dict`.

        Raises
        ------
        TypeError
            If ``text`` is not a string.
        ValueError
            If ``text`` is not JSON (NaN and Infinity are refused too) or :meth:`from_dict` refuses it.
        """
        if not isinstance(text, str | bytes | bytearray):
            raise TypeError(f"`text` must be a JSON string, got {type(text).__name__}.")
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise ValueError("`text` nests JSON too deeply.") from None
        except ValueError as exc:
            raise ValueError(f"`text` is not valid JSON: {exc}.") from None
        return AdapterConfig.from_dict(data, trust_custom_factories=trust_custom_factories)


# Documented signature of the base class: its fields (``__new__`` only picks the subclass for PEFT).
AdapterConfig.__signature__ = inspect.signature(AdapterConfig.__init__).replace(
    parameters=list(inspect.signature(AdapterConfig.__init__).parameters.values())[1:]
)


@dataclass(kw_only=True)
class LoRAConfig(AdapterConfig):
    r"""Plain LoRA, one independent ``B_s A_s`` per layer (:class:`tensorpeft.decomp.LoRA`).

    Scaling :math:`\alpha / r`, as PEFT. ``stack_by`` defaults to ``"module"``; any grouping gives the
    same model (LoRA shares nothing), a stacked one just holds the factors in one tensor.

    Examples
    --------
    >>> import tensorpeft as tp
    >>> cfg = tp.LoRAConfig(rank=8, alpha=16, target_modules=["query", "value"])
    >>> cfg.scaling
    2.0
    >>> tp.AdapterConfig.from_json(cfg.to_json()) == cfg
    True
    """

    format_name: ClassVar[str] = "LoRA"


@dataclass(kw_only=True)
class Tucker2Config(AdapterConfig):
    r"""LoTR: Tucker-2 across a stack, ``ΔW_s = A G_s Bᵀ`` (:class:`tensorpeft.decomp.Tucker2`).

    ``rank`` is ``r`` or ``(r_out, r_in)``. Scaling :math:`\alpha / r_\text{in}` (LoTR's ``scale/r``;
    ``r_in`` is the width of ``x·B``, the analogue of LoRA's ``r``). ``stack_by`` defaults to ``"name"``:
    all ``query`` layers share ``A`` and ``B``. With ``stack_by="shape"`` q, k and v of one layer also
    share ``B`` and ``x·B`` is computed once for the three; with ``stack_by="input"`` they do so even when
    their shapes differ (grouped-query attention): one fused slice ``A G_s Bᵀ`` per layer whose row blocks
    are q, k and v.

    Examples
    --------
    >>> import tensorpeft as tp
    >>> cfg = tp.Tucker2Config(rank=(4, 2), alpha=8, target_modules=["query", "value"])
    >>> cfg.stack_by, cfg.scaling
    ('name', 4.0)
    """

    format_name: ClassVar[str] = "Tucker2"
    stack_by: str = "name"

    def _check_format_fields(self) -> None:
        self.rank = check_int_or_tuple(self.rank, "rank", check=_size, length=2, expected="a pair (r_out, r_in)")

    @property
    def scaling(self) -> float:
        """``alpha / r_in``."""
        r_in = self.rank if isinstance(self.rank, int) else self.rank[1]
        return self.alpha / r_in


@dataclass(kw_only=True)
class CPConfig(AdapterConfig):
    r"""LoRTA: one CP decomposition of a whole stack (:class:`tensorpeft.decomp.CP`).

    Parameters
    ----------
    heads : int, "auto" or None
        Split each layer's output into heads (head-major blocks). ``"auto"``: for stacks whose
        ``out_features`` is a whole attention projection of the model's config — ``n_heads``,
        ``n_kv_heads`` or ``n_heads + 2·n_kv_heads`` (fused qkv) heads of ``head_dim`` — and no split
        elsewhere. An int applies to every stack (it must divide each ``out_features``).

    Notes
    -----
    Scaling :math:`\alpha / R` (LoRTA uses α = 16, the default here). ``stack_by`` defaults to
    ``"shape"``: every matched layer of one shape in one stack, ``(layers, matrix kinds)`` as LoRTA.

    Examples
    --------
    >>> import tensorpeft as tp
    >>> cfg = tp.CPConfig(rank=4, target_modules=["query", "value"])
    >>> cfg.stack_by, cfg.scaling
    ('shape', 4.0)
    """

    format_name: ClassVar[str] = "CP"
    alpha: float = 16.0
    stack_by: str = "shape"
    heads: Any = "auto"

    def _check_format_fields(self) -> None:
        super()._check_format_fields()
        if self.heads is None or (isinstance(self.heads, str) and self.heads == "auto"):
            return
        if isinstance(self.heads, bool) or not isinstance(self.heads, numbers.Integral):
            raise TypeError(
                f"`heads` must be a positive integer, 'auto' or None, got {self.heads!r} ({type(self.heads).__name__})."
            )
        self.heads = _size(self.heads, "heads")

    def resolve_heads(self, out_features, model_heads):
        """See the class docstring."""
        if self.heads is None:
            return None
        if self.heads != "auto":
            return self.heads
        if not model_heads:
            return None
        hd, n, n_kv = model_heads["head_dim"], model_heads["heads"], model_heads["kv_heads"]
        if out_features in {n * hd, n_kv * hd, (n + 2 * n_kv) * hd}:
            return out_features // hd
        return None

    def format_kwargs(self, out_features, in_features, heads):
        """``rank`` and the resolved ``heads``."""
        return {"rank": self.rank, "heads": heads}


@dataclass(kw_only=True)
class TensorTrainConfig(AdapterConfig):
    r"""TT-LoRA: a tensor train per layer, or across a stack (:class:`tensorpeft.decomp.TensorTrain`).

    Parameters
    ----------
    rank : int or tuple of int
        Bond ranks (an int is capped at each bond's bound; a tuple must fit every stack).
    in_modes, out_modes : tuple of int, optional
        Feature factorizations; default balanced. Given modes must match every stack's features.
    share_stack : bool
        With ``stack_by`` other than ``"module"``: one train over the stack modes too (MetaTT).

    Notes
    -----
    Scaling: plain :math:`\alpha` (TT-LoRA), default 1: the cores are drawn so that each contraction
    step keeps unit scale. ``stack_by`` defaults to ``"module"`` (one train per matrix, as TT-LoRA).

    Examples
    --------
    >>> import tensorpeft as tp
    >>> cfg = tp.TensorTrainConfig(rank=2, target_modules=["query", "value"])
    >>> cfg.stack_by, cfg.scaling
    ('module', 1.0)
    """

    format_name: ClassVar[str] = "TensorTrain"
    alpha: float = 1.0
    in_modes: Any = None
    out_modes: Any = None
    share_stack: bool = True

    def _check_format_fields(self) -> None:
        self.rank = check_int_or_tuple(self.rank, "rank", check=_size, expected="a tuple of bond ranks")
        for name in ("in_modes", "out_modes"):
            if getattr(self, name) is not None:
                setattr(self, name, _int_tuple(getattr(self, name), name))
        if not isinstance(self.share_stack, bool):
            raise TypeError(f"`share_stack` must be a bool, got {self.share_stack!r}.")

    @property
    def scaling(self) -> float:
        """``alpha`` (TT-LoRA's plain α)."""
        return self.alpha

    def format_kwargs(self, out_features, in_features, heads):
        """``rank``, modes and ``share_stack``."""
        return {
            "rank": self.rank,
            "in_modes": self.in_modes,
            "out_modes": self.out_modes,
            "share_stack": self.share_stack,
        }


@dataclass(kw_only=True)
class OrthogonalConfig(AdapterConfig):
    r"""LoRA²: ``ΔW = U1 U2 diag(λ) V2 V1`` per layer (:class:`tensorpeft.decomp.OrthogonalProjection`).

    ``rank`` is ``r`` (entries of λ), ``inner`` the plane width ``k`` (default ``r``). Scaling
    :math:`\alpha / r`. ``stack_by`` defaults to ``"module"``. Use
    :meth:`TensorPeftModel.orthogonality_loss` as LoRA²'s regularizer.

    Parameters
    ----------
    rank : int
        ``r``, the number of entries of λ.
    inner : int, optional
        The plane width ``k >= rank`` (default ``rank``).

    Examples
    --------
    >>> import tensorpeft as tp
    >>> cfg = tp.OrthogonalConfig(rank=2, inner=4, target_modules=["query", "value"])
    >>> cfg.stack_by, cfg.scaling, cfg.format_kwargs(16, 16, 1)
    ('module', 4.0, {'rank': 2, 'inner': 4})
    """

    format_name: ClassVar[str] = "OrthogonalProjection"
    inner: Any = None

    def _check_format_fields(self) -> None:
        super()._check_format_fields()
        if self.inner is not None:
            self.inner = _size(self.inner, "inner")
            if self.inner < self.rank:
                raise ValueError(f"`inner`={self.inner} must be >= `rank`={self.rank}.")

    def format_kwargs(self, out_features, in_features, heads):
        """``rank`` and ``inner``."""
        return {"rank": self.rank, "inner": self.inner}


@dataclass(kw_only=True)
class CustomConfig(AdapterConfig):
    r"""Any :class:`tensorpeft.decomp.TensorNetwork` built by a user factory.

    Parameters
    ----------
    factory : callable or str
        ``factory(stack, out_features, in_features, rank) -> TensorNetwork`` whose ``shape`` is
        ``(*stack, out_features, in_features)``; a module-level function (stored as
        ``"module:qualname"`` in JSON) or that string. A format class of :mod:`tensorpeft.decomp` is
        stored by its public name (``"tensorpeft.decomp:LoRA"``) and never imported from a path.
    rank : Any JSON value
        Passed to ``factory`` (tuples as lists). Every number in it must be a positive, finite size
        (ints at most ``2**31``; bools, zero, negative and non-finite numbers are refused).

    Notes
    -----
    Scaling: plain :math:`\alpha` (default 1). ``stack_by`` defaults to ``"name"``.

    A string written in your own code is imported when the config is built: that is your choice. A
    config parsed from data (:meth:`AdapterConfig.from_dict`, :meth:`~AdapterConfig.from_json`,
    :meth:`TensorPeftModel.from_pretrained`, and PEFT's ``PeftConfig.from_pretrained`` /
    ``PeftModel.from_pretrained``, recognized by the ``peft_type`` field every file has) is untrusted: a
    factory other than a built-in format is refused, and nothing is imported, unless the caller passes
    ``trust_custom_factories=True`` or an allow-list ``trust_custom_factories=[my_formats.fact_tk]``
    (through PEFT: read the config with ``tp.AdapterConfig.from_pretrained(dir, trust_custom_factories=...)``
    and pass it as ``PeftModel.from_pretrained(base, dir, config=config)``).

    Examples
    --------
    Any module-level function with that signature works; a format class such as
    :class:`tensorpeft.decomp.LoRA` does too:

    >>> import tensorpeft as tp
    >>> from tensorpeft import decomp
    >>> cfg = tp.CustomConfig(factory=decomp.LoRA, rank=2, target_modules=["query"])
    >>> cfg.factory
    'tensorpeft.decomp:LoRA'
    >>> fmt = cfg.build_format((3,), 16, 8)
    >>> type(fmt).__name__, fmt.shape, fmt.num_params
    ('LoRA', (3, 16, 8), 144)
    """

    format_name: ClassVar[str] = "Custom"
    alpha: float = 1.0
    stack_by: str = "name"
    factory: Any = None

    def _check_format_fields(self) -> None:
        if self.factory is None:
            raise TypeError("`factory` is required: a function (stack, out_features, in_features, rank) -> format.")
        if isinstance(self.factory, str):
            builtin = builtin_factory(self.factory)
            if builtin is not None:
                self.factory = factory_path(builtin)  # old files name a private module
            else:
                if self._parsed:  # from data: import only what the caller trusted (see `trusting`)
                    check_trusted(self.factory, _TRUSTED.get())
                resolve_factory(self.factory)
        elif callable(self.factory):
            path = factory_path(self.factory)
            if resolve_factory(path) is not self.factory:
                raise ValueError(f"`factory` {self.factory!r} is not reachable at {path!r}; define it at module level.")
            self.factory = path
        else:
            raise TypeError(f"`factory` must be a callable or a 'module:qualname' string, got {self.factory!r}.")
        self.rank = _json_rank(self.rank, "rank")

    @property
    def scaling(self) -> float:
        """``alpha``."""
        return self.alpha

    def build_format(self, stack, out_features, in_features, heads=None):
        """Call the factory and check that the format it returns has the stack's shape."""
        fmt = resolve_factory(self.factory)(tuple(stack), out_features, in_features, self.rank)
        if not isinstance(fmt, decomp.TensorNetwork):
            raise TypeError(f"`factory` {self.factory!r} must return a decomp.TensorNetwork, got {type(fmt).__name__}.")
        expected = (*tuple(stack), out_features, in_features)
        if tuple(fmt.shape) != expected:
            raise ValueError(
                f"`factory` {self.factory!r} returned a format of shape {tuple(fmt.shape)}; expected {expected}."
            )
        return fmt


# Names after the papers: the same classes, so configs and saved adapters are interchangeable.
LoTRConfig = Tucker2Config
LoRTAConfig = CPConfig
TTLoRAConfig = TensorTrainConfig
LoRA2Config = OrthogonalConfig
