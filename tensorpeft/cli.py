"""Command line: ``tensorpeft compare`` (the main job) and ``tensorpeft budget`` (the planner).

Bad arguments end with a one-line error on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    from .experiments._methods import DEFAULT_METHODS

    parser = argparse.ArgumentParser(prog="tensorpeft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    cmp = sub.add_parser(
        "compare",
        help="fine-tune a pretrained encoder with LoRA and every tensor format at matched budgets",
        description="Fine-tune a sentence encoder for text classification with each method and compare "
        "accuracy, trainable parameters, time per step and peak memory.",
    )
    cmp.add_argument("--model", help="local BERT-like checkpoint directory (default: the embedded all-MiniLM-L6-v2)")
    cmp.add_argument("--dataset", default="rotten_tomatoes", help="rotten_tomatoes (default) or bbc_news")
    cmp.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated family:budget specs; families head, lora, tucker2, cp, tt, lora2; budgets rN "
        "(LoRA rank N's parameter count), tiny (a quarter of LoRA r=1's) or an integer (default: %(default)s)",
    )
    cmp.add_argument("--budgets", type=_csv, help="replace the budgets of the tensor families, e.g. r2,tiny,5000")
    cmp.add_argument("--targets", default="query,value", help="target module suffixes (default: %(default)s)")
    cmp.add_argument("--seeds", type=_ints, default=(0,), help="comma-separated seeds (default: 0)")
    cmp.add_argument("--steps", type=_positive, help="training steps per method (default 150; 8 with --quick)")
    cmp.add_argument("--batch-size", type=_positive, default=16)
    cmp.add_argument("--lr", type=float, help="adapter learning rate for every method (default: tuned per family)")
    cmp.add_argument("--head-lr", type=float, help="learning rate of the classification head (default 1e-2)")
    cmp.add_argument("--n-train", type=_positive, help="training examples (default: all but the test set)")
    cmp.add_argument("--n-test", type=_positive, help="test examples (default 1000; 128 with --quick)")
    cmp.add_argument(
        "--validation",
        type=_positive,
        default=0,
        metavar="N",
        help="hold N examples out of training and report accuracy on them, not on the test set "
        "(to choose learning rates or ranks without looking at the test set)",
    )
    cmp.add_argument("--output", "-o", default="runs/compare", help="output directory (default: %(default)s)")
    cmp.add_argument("--quick", action="store_true", help="smoke run (< 2 minutes): few steps, small test set")
    cmp.add_argument("--threads", type=_positive, help="torch threads per run (default: all cores)")
    cmp.add_argument("--no-progress", action="store_true", help="no progress bars")

    bud = sub.add_parser(
        "budget",
        help="every format's ranks and parameters at a budget on a model's target modules",
        description="Plan ranks: for a model and target modules, the largest rank of each format within a "
        "budget, and how many times fewer parameters than LoRA at the same rank.",
    )
    src = bud.add_mutually_exclusive_group()
    src.add_argument("--model", help="local checkpoint directory (default: the embedded all-MiniLM-L6-v2)")
    src.add_argument("--shape", help="named layout: bert-base, bert-large, minilm-l6, llama-7b, llama-3.2-1b")
    src.add_argument(
        "--dims",
        type=_ints,
        help="layout by numbers: LAYERS,HIDDEN,HEADS,KV_HEADS,INTERMEDIATE (with --arch)",
    )
    bud.add_argument("--arch", default="llama", help="bert or llama, for --dims (default: %(default)s)")
    bud.add_argument(
        "--targets", help="target module suffixes (default: query,value for BERT, q_proj,v_proj for LLaMA)"
    )
    amount = bud.add_mutually_exclusive_group()
    amount.add_argument("--budget", type=_positive, help="parameter budget")
    amount.add_argument("--lora-rank", type=_positive, help="match LoRA of this rank (default 8)")
    return parser


def _budget(args) -> int:
    from .experiments._budget import SHAPES, budget_table, format_budget_table, model_from_path, model_from_shape
    from .experiments._compare import default_model_path

    if args.shape:
        if args.shape not in SHAPES:
            raise ValueError(f"`--shape` must be one of {', '.join(SHAPES)}, got {args.shape!r}.")
        model = model_from_shape(*SHAPES[args.shape])
    elif args.dims:
        if len(args.dims) != 5:
            raise ValueError(f"`--dims` needs 5 numbers LAYERS,HIDDEN,HEADS,KV_HEADS,INTERMEDIATE, got {args.dims}.")
        model = model_from_shape(args.arch, *args.dims)
    else:
        model = model_from_path(args.model or default_model_path())
    is_llama = "llama" in type(model).__name__.lower()
    targets = _csv(args.targets) if args.targets else (["q_proj", "v_proj"] if is_llama else ["query", "value"])
    word = str(args.budget) if args.budget else f"r{args.lora_rank or 8}"
    budget, rows = budget_table(model, targets, word)
    print(f"model: {type(model).__name__}; targets: {', '.join(targets)}")
    print(format_budget_table(budget, rows))
    return 0


def _compare(args) -> int:
    from .experiments._compare import (
        CompareSettings,
        default_model_path,
        format_table,
        run_compare,
        write_outputs,
    )
    from .experiments._data import DATASETS
    from .experiments._methods import parse_methods
    from .experiments._train import TrainSettings

    if args.dataset not in DATASETS:
        raise ValueError(f"`--dataset` must be one of {', '.join(DATASETS)}, got {args.dataset!r}.")
    model_path = Path(args.model) if args.model else default_model_path()
    if not (model_path / "config.json").is_file():
        raise ValueError(f"`--model` {str(model_path)!r} is not a checkpoint directory (no config.json in it).")
    methods_text = args.methods
    if args.quick and methods_text == _parser().parse_args(["compare"]).methods:
        methods_text = "head,lora:r8,tucker2:r1,cp:tiny"
    methods = parse_methods(_csv(methods_text), budgets=args.budgets)
    train = TrainSettings(steps=args.steps or (8 if args.quick else 150), batch_size=args.batch_size)
    if args.head_lr is not None:
        train = dataclasses.replace(train, head_lr=args.head_lr)
    n_test = args.n_test or (128 if args.quick else 1000)
    settings = CompareSettings(
        model_path=str(model_path),
        dataset=args.dataset,
        methods=tuple(methods),
        target_modules=tuple(_csv(args.targets)),
        seeds=tuple(args.seeds),
        n_train=args.n_train or (512 if args.quick else None),
        n_test=n_test,
        train=train,
        lr=args.lr,
        threads=args.threads,
        n_val=args.validation,
        evaluate_on="validation" if args.validation else "test",
    )
    _check_budgets(settings)
    start = time.time()
    rows = run_compare(settings, progress=not args.no_progress)
    paths = write_outputs(rows, settings, Path(args.output))
    print()
    print(format_table(rows, settings.evaluate_on))
    print(f"\n{len(rows)} methods in {time.time() - start:.0f} s; results: {paths['json']}; plot: {paths['plot']}")
    return 0


def _check_budgets(settings) -> None:
    """Resolve every method on the model structure first, so a bad budget fails before any training."""
    from .experiments._budget import model_from_path
    from .experiments._methods import resolve_method

    model = model_from_path(settings.model_path)
    for spec in settings.methods:
        resolve_method(spec, model, list(settings.target_modules))


def main(argv=None) -> int:
    """Entry point of the ``tensorpeft`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return {"compare": _compare, "budget": _budget}[args.command](args)
    except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        print(f"tensorpeft {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
