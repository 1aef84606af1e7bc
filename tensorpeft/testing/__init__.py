"""Property-test formats: hypothesis strategies and a one-call check of the whole format contract.

Users test their own formats (custom :class:`~tensorpeft.decomp.TensorNetwork` equations or
subclasses) with :func:`check_format`, and draw random instances, factors and inputs with the
strategies. Requires ``hypothesis`` (``pip install tensorpeft[test]``); torch is optional. Importing
the module registers the hypothesis profiles ``ci`` and ``thorough`` (:data:`PROFILES`) and loads the
one named by the environment variable ``HYPOTHESIS_PROFILE``, in any script as under pytest.

Examples
--------
>>> from hypothesis import given, settings
>>> from tensorpeft import testing
>>> @settings(max_examples=3)
... @given(testing.formats(max_features=4))
... def test_every_format(fmt):
...     testing.check_format(fmt, backends=("numpy",), fit_tol=1e-4, skip=("fit",))
>>> test_every_format()
"""

from ._arrays import factors, indices, inputs
from ._assert import TOLERANCES, assert_close, tolerance
from ._checks import CHECK_TOLERANCES, CHECKS, DTYPES, check_format
from ._profiles import PROFILES, load_env_profile
from ._strategies import (
    cp_formats,
    formats,
    lora_formats,
    orthogonal_formats,
    tensor_networks,
    tensor_train_formats,
    tucker2_formats,
)

__all__ = [
    "CHECKS",
    "CHECK_TOLERANCES",
    "DTYPES",
    "PROFILES",
    "TOLERANCES",
    "assert_close",
    "check_format",
    "cp_formats",
    "factors",
    "formats",
    "indices",
    "inputs",
    "lora_formats",
    "orthogonal_formats",
    "tensor_networks",
    "tensor_train_formats",
    "tolerance",
    "tucker2_formats",
]

load_env_profile()
