"""Hypothesis profiles of the property tests, loaded from ``HYPOTHESIS_PROFILE`` in any process."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["PROFILES", "load_env_profile"]

#: Settings of the hypothesis profiles that :mod:`tensorpeft.testing` registers: ``ci`` (fast, the
#: default of the project's tests) and ``thorough`` (many more examples, for local runs).
PROFILES = {
    "ci": {"max_examples": 25, "deadline": None, "suppress_health_check": [HealthCheck.too_slow]},
    "thorough": {"max_examples": 500, "deadline": None},
}

_loaded: str | None = None
_registered = False


def load_env_profile() -> str | None:
    """Register :data:`PROFILES` and load the one named by ``HYPOTHESIS_PROFILE``, if that is set.

    Runs when :mod:`tensorpeft.testing` is imported and again at every :func:`check_format` call, so a
    user's script (no pytest, no conftest) honors the variable like the project's tests do. The profiles
    are registered once (hypothesis's own ``ci`` is replaced, as the project's ``conftest.py`` does) and
    a profile is loaded once per name, so a ``settings.load_profile`` of the script's own after that
    stays in force.

    Returns
    -------
    str or None
        The name of the profile loaded by this call, or None (the variable unset, or already loaded).

    Raises
    ------
    ValueError
        If ``HYPOTHESIS_PROFILE`` names a profile hypothesis does not know (neither one of
        :data:`PROFILES` nor one registered by the user).
    """
    global _loaded, _registered
    if not _registered:  # once: a profile the user registers under the same name afterwards is theirs
        for profile, values in PROFILES.items():
            settings.register_profile(profile, **values)
        _registered = True
    name = os.environ.get("HYPOTHESIS_PROFILE")
    if not name or name == _loaded:
        return None
    try:
        settings.load_profile(name)
    except Exception as err:  # hypothesis.errors.InvalidArgument
        raise ValueError(
            f"environment variable `HYPOTHESIS_PROFILE` must name a hypothesis profile ({sorted(PROFILES)} "
            f"or one registered with settings.register_profile), got {name!r}."
        ) from err
    _loaded = name
    return name
