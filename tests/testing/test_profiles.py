"""``HYPOTHESIS_PROFILE`` is honored in a user's script, without the project's conftest (in a subprocess)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import os
from hypothesis import given, settings
from tensorpeft import decomp, testing

print("import", settings.default.max_examples)
count = 0

@given(testing.inputs(decomp.LoRA((), 2, 2, rank=1)))
def draw(x):
    global count
    count += 1

draw()
print("examples", count)
os.environ["HYPOTHESIS_PROFILE"] = "ci"  # set after the import: check_format loads it
testing.check_format(decomp.LoRA((), 2, 2, rank=1), backends=("numpy",), skip=("fit", "errors"))
print("after check_format", settings.default.max_examples)
"""


def _run(profile, code=SCRIPT):
    env = {k: v for k, v in os.environ.items() if k not in ("HYPOTHESIS_PROFILE", "CI")}
    if profile is not None:
        env["HYPOTHESIS_PROFILE"] = profile
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)


def test_thorough_profile_in_a_plain_script():
    result = _run("thorough")
    assert result.returncode == 0, result.stderr
    lines = dict(line.rsplit(" ", 1) for line in result.stdout.strip().splitlines())
    assert lines["import"] == "500"
    assert 25 < int(lines["examples"]) <= 500  # more than the ci profile's 25, and not hypothesis's default
    assert lines["after check_format"] == "25"


def test_unset_profile_leaves_hypothesis_defaults():
    code = "from hypothesis import settings\nimport tensorpeft.testing\nprint(settings.default.max_examples)"
    result = _run(None, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "100"


@pytest.mark.parametrize("profile", ["nonsense"])
def test_unknown_profile_names_the_variable(profile):
    result = _run(profile, "import tensorpeft.testing")
    assert result.returncode != 0
    assert "environment variable `HYPOTHESIS_PROFILE` must name a hypothesis profile" in result.stderr
    assert "got 'nonsense'" in result.stderr


def test_profiles_match_the_project_conftest():
    # the root conftest.py registers its own profiles for the project's tests: the two must agree
    conftest = Path(__file__).resolve().parents[2] / "conftest.py"
    code = f"""
from hypothesis import settings
exec(compile(open({str(conftest)!r}).read(), "conftest.py", "exec"))
theirs = {{name: settings.get_profile(name) for name in ("ci", "thorough")}}
from tensorpeft.testing import PROFILES
for name, values in PROFILES.items():
    for key, value in values.items():
        got = getattr(theirs[name], key)
        assert (set(got) == set(value)) if isinstance(value, list) else got == value, (name, key, got, value)
print("same")
"""
    result = _run(None, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "same"
