"""Test configuration: the hypothesis profiles of ``tensorpeft.testing.PROFILES``, chosen by ``HYPOTHESIS_PROFILE``.

``ci`` (fast) is the default here; ``thorough`` is for local runs.
"""

import os

from hypothesis import settings

from tensorpeft.testing._profiles import PROFILES

for _name, _values in PROFILES.items():
    settings.register_profile(_name, **_values)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
