import subprocess
import sys

import tensorpeft as tp
import tensorpeft.nn


def test_public_names_are_re_exported():
    for name in tp.__all__:
        assert getattr(tp, name) is not None
    for name in tensorpeft.nn.__all__:
        obj = getattr(tensorpeft.nn, name)
        if name in tp.__all__:
            assert getattr(tp, name) is obj
    assert tp.get_peft_model is tensorpeft.nn.get_peft_model
    assert tp.nn is tensorpeft.nn


def test_core_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import tensorpeft, tensorpeft.decomp\n"
        "assert tensorpeft.decomp.Tucker2((2,), 4, 4, 2).num_params == 24\n"
        "try:\n"
        "    tensorpeft.get_peft_model\n"
        "except ImportError:\n"
        "    print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
