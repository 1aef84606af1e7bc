"""tensorpeft as a PEFT method: the ``PeftType.TENSORPEFT`` member and ``register_peft_method``.

PEFT (≥ 0.15) lets a library add a method with ``peft.utils.register_peft_method(name, config_cls,
model_cls, prefix)``, but only for a ``name`` that is already a member of the ``peft.PeftType`` enum.
This module adds the one member ``TENSORPEFT`` (value ``"TENSORPEFT"``, the ``peft_type`` tensorpeft has
always written into ``adapter_config.json``) and registers the config and tuner classes under it. It is
the only place that touches PEFT's enum.

One method for all formats, not one per format: PEFT refuses ``add_adapter`` across methods
("Cannot combine adapters with different peft types"), and adapters of different formats on one base
are a supported use. The format of each adapter is its config's ``format`` field.

:func:`register` is idempotent and runs when :mod:`tensorpeft.nn` is imported; importing ``peft``
after ``import tensorpeft`` also triggers it (see :mod:`tensorpeft._peft_hook`), so
``peft.PeftModel.from_pretrained`` finds tensorpeft adapters in either import order.
"""

from __future__ import annotations

import enum

__all__ = ["MIN_PEFT", "PEFT_NAME", "PEFT_PREFIX", "PEFT_TYPE", "peft_type_member", "register"]

PEFT_NAME = "tensorpeft"
"""The method's name for ``register_peft_method`` (PEFT wants lower case)."""
PEFT_TYPE = "TENSORPEFT"
"""The ``PeftType`` member and the ``peft_type`` of every tensorpeft ``adapter_config.json``."""
PEFT_PREFIX = "tensorpeft_"
"""The parameter-name prefix PEFT associates with the method (no base model parameter contains it)."""
MIN_PEFT = (0, 15)
"""The first PEFT release with ``register_peft_method``."""


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _check_peft():
    """The ``peft`` module, or ImportError saying which version tensorpeft needs."""
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - peft is a dependency of tensorpeft.nn
        raise ImportError(f"tensorpeft.nn needs peft >= {'.'.join(map(str, MIN_PEFT))}: pip install peft") from exc
    version = getattr(peft, "__version__", "0")
    if _version_tuple(version) < MIN_PEFT:
        raise ImportError(
            f"tensorpeft.nn needs peft >= {'.'.join(map(str, MIN_PEFT))} (for peft.utils.register_peft_method), "
            f"found peft {version}; upgrade with: pip install -U peft"
        )
    return peft


def peft_type_member():
    """``peft.PeftType.TENSORPEFT``, added to the enum on first call (the same member afterwards).

    ``PeftType`` is a ``str`` enum; the member is built the way ``enum`` builds members (a ``str``
    instance of the class with ``_name_``/``_value_``) and entered in the three tables ``enum`` reads:
    ``_member_map_`` (``PeftType["TENSORPEFT"]``, attribute access), ``_value2member_map_``
    (``PeftType("TENSORPEFT")``, which is how PEFT parses ``peft_type`` from JSON) and
    ``_member_names_`` (iteration, which ``register_peft_method`` uses to check the name).

    Raises
    ------
    RuntimeError
        If ``PeftType`` is not an enum this can extend (a PEFT release that changed it).
    """
    from peft.utils.peft_types import PeftType

    existing = PeftType.__members__.get(PEFT_TYPE)
    if existing is not None:
        return existing
    if not (isinstance(PeftType, enum.EnumMeta) and issubclass(PeftType, str)):
        raise RuntimeError("peft.PeftType is not a str enum in this PEFT release; tensorpeft cannot register.")
    member = str.__new__(PeftType, PEFT_TYPE)
    member._name_ = PEFT_TYPE
    member._value_ = PEFT_TYPE
    member.__objclass__ = PeftType
    PeftType._member_map_[PEFT_TYPE] = member
    PeftType._value2member_map_[PEFT_TYPE] = member
    PeftType._member_names_.append(PEFT_TYPE)
    type.__setattr__(PeftType, PEFT_TYPE, member)
    if PeftType(PEFT_TYPE) is not member or PeftType[PEFT_TYPE] is not member:  # pragma: no cover
        raise RuntimeError("could not add TENSORPEFT to peft.PeftType in this PEFT release.")
    return member


def register() -> None:
    """Register tensorpeft with PEFT: the enum member, then ``register_peft_method`` (once).

    Afterwards ``peft.get_peft_model(model, tp.Tucker2Config(...))`` builds a tensorpeft adapter,
    ``peft.PeftConfig.from_pretrained(dir)`` and ``peft.PeftModel.from_pretrained(base, dir)`` read
    tensorpeft adapter directories, and ``peft.AutoPeftModelFor*`` load them.

    Raises
    ------
    ImportError
        On a PEFT older than :data:`MIN_PEFT`, naming the version found.
    """
    peft = _check_peft()
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    from ._config import AdapterConfig
    from ._model import TensorPeftModel

    member = peft_type_member()
    if PEFT_TYPE_TO_CONFIG_MAPPING.get(member) is AdapterConfig:
        return
    peft.utils.register_peft_method(
        name=PEFT_NAME, config_cls=AdapterConfig, model_cls=TensorPeftModel, prefix=PEFT_PREFIX
    )
