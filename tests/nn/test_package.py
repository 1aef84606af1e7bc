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


def test_help_of_the_command_line_imports_no_torch():
    code = (
        "import sys\n"
        "import tensorpeft.cli as cli\n"
        "for argv in (['--help'], ['budget', '--help'], ['compare', '--help']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "usage: tensorpeft" in result.stdout


def test_plan_stacks_is_public_and_counts_what_the_model_builds():
    import torch

    base = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    config = tp.Tucker2Config(rank=2, target_modules=["0", "2"])
    planned = tensorpeft.nn.plan_stacks(base, config)
    model = tp.get_peft_model(base, config)
    assert [plan for plan, _ in planned] == model.plans
    assert sum(fmt.num_params for _, fmt in planned) == model.get_nb_trainable_parameters()[0]
