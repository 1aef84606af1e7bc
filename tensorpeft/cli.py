"""Command line: ``tensorpeft compare`` (the main job) and ``tensorpeft budget`` (the planner).

Bad arguments end with a one-line error on stderr and exit status 2, an unexpected internal error with
one line and status 1, never a traceback (unless ``TENSORPEFT_DEBUG=1`` asks for it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import sys
import time
from pathlib import Path

__all__ = ["main"]


DEBUG_ENV = "TENSORPEFT_DEBUG"
EPILOG = (
    "Bad arguments end with a one-line error and exit status 2; an unexpected internal error with a one-line "
    f"error and exit status 1. Set {DEBUG_ENV}=1 to get the traceback instead."
)
# Upper bounds of the integer options: far above any sensible run, low enough that nothing overflows
# or allocates a schedule for ever.
_MAX_STEPS = 10**6
_MAX_BATCH = 2**16
_MAX_EXAMPLES = 10**7
_MAX_THREADS = 1024
_MAX_JOBS = 64  # each run holds a whole model: more would exhaust memory before it saved time
_MAX_SEED = 2**32 - 1
_MAX_LR = 10.0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message):
        """Print ``message`` as one line and exit with status 2."""
        message = re.sub(r"^argument ([^:]+): ", r"`\1` ", " ".join(str(message).split()))
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _names(text: str) -> list[str]:
    names = _csv(text)
    if not names:
        raise argparse.ArgumentTypeError(f"must be a non-empty comma-separated list, got {text!r}")
    return names


def _int(text: str, lo: int, hi: int | None = None) -> int:
    """``text`` as an integer in ``[lo, hi]`` (``hi`` None: no upper bound); else an argparse error."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo:,} and {hi:,}"
        raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
    return value


def _bounded(lo: int, hi: int | None = None):
    """An argparse type: an integer in ``[lo, hi]`` (``hi`` None: no upper bound)."""

    def parse(text: str) -> int:
        return _int(text, lo, hi)

    return parse


def _positive(text: str) -> int:
    return _bounded(1)(text)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None


def _seeds(text: str) -> tuple[int, ...]:
    seeds = tuple(_int(t, 0, _MAX_SEED) for t in _names(text))
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"must not repeat a seed, got {text!r}")
    return seeds


def _lr(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= _MAX_LR:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number in (0, {_MAX_LR:g}], got {text!r}")
    return value


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a path, got {text!r}")
    return text


def _is_data_file(text: str) -> bool:
    """Whether a ``--dataset`` value names a data file (``tensorpeft.experiments``' rule, one copy)."""
    from .experiments import is_data_file

    return is_data_file(text)


def _dataset(text: str) -> str:
    from .experiments import DATASETS

    if text in DATASETS or _is_data_file(text):
        return text
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(DATASETS)} or a .csv, .jsonl or .json file, got {text!r}"
    )


def _column(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be a column name, got {text!r}")
    return text


def _choice(options):
    """An argparse type: one of ``options``."""

    def parse(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(options)}, got {text!r}")
        return text

    return parse


def _parser() -> argparse.ArgumentParser:
    from .experiments import DATASETS, DEFAULT_LLM_METHODS, DEFAULT_METHODS, SHAPES

    parser = _Parser(prog="tensorpeft", description=__doc__.splitlines()[0], epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)

    cmp = sub.add_parser(
        "compare",
        help="fine-tune a pretrained encoder with LoRA and every tensor format at matched budgets",
        description="Fine-tune a sentence encoder for text classification with each method and compare "
        "accuracy, trainable parameters, time per step and peak memory.",
        epilog=EPILOG,
    )
    cmp.add_argument(
        "--model",
        type=_path,
        help="the model: a local encoder checkpoint directory (default: the embedded all-MiniLM-L6-v2; trains a "
        "classification head), or a decoder LLM — 'smollm2' (the embedded SmolLM2-135M-Instruct), a local "
        "causal-LM checkpoint directory or a .gguf file — which is instruction-tuned to answer with the label",
    )
    cmp.add_argument(
        "--dataset",
        type=_dataset,
        default="rotten_tomatoes",
        metavar="NAME|PATH",
        help=f"{' or '.join(DATASETS)} (default: rotten_tomatoes), or your own data file: any other value that "
        "ends in .csv, .jsonl or .json or names an existing path. A .csv has a header row; a .jsonl/.json file "
        "holds one JSON object per line (UTF-8, at most 1 GiB). Labels are strings or integers; class ids "
        "follow their sorted string forms. The split is the built-in one: one shuffle with seed 0, the test "
        "set first (--n-test), then --validation, then training (--n-train)",
    )
    cmp.add_argument(
        "--text-column", type=_column, metavar="COLUMN", help="column of the texts in a --dataset file (default: text)"
    )
    cmp.add_argument(
        "--label-column",
        type=_column,
        metavar="COLUMN",
        help="column of the labels in a --dataset file (default: label)",
    )
    cmp.add_argument(
        "--methods",
        type=_names,
        help="comma-separated family[/grouping]:budget specs; families lora, tucker2, cp, tt, lora2 and the "
        "baselines head (encoder) and zero-shot (decoder); budgets rN (LoRA rank N's parameter count), tiny (a "
        "quarter of LoRA r=1's) or an integer; grouping a stack_by value, e.g. tucker2/input:r1 "
        f"(default: {','.join(DEFAULT_METHODS)}; for a decoder {','.join(DEFAULT_LLM_METHODS)})",
    )
    cmp.add_argument("--budgets", type=_names, help="replace the budgets of the tensor families, e.g. r2,tiny,5000")
    cmp.add_argument(
        "--targets",
        type=_names,
        help="target module suffixes, or all-linear (default: query,value; for a decoder q_proj,k_proj,v_proj,o_proj)",
    )
    cmp.add_argument("--seeds", type=_seeds, default=(0,), help="comma-separated seeds (default: 0)")
    steps = _bounded(1, _MAX_STEPS)
    cmp.add_argument(
        "--steps", type=steps, help=f"training steps per method (default 150, decoder {LLM_STEPS}; 8 or 4 with --quick)"
    )
    cmp.add_argument(
        "--batch-size", type=_bounded(1, _MAX_BATCH), help=f"examples per step (default 16, decoder {LLM_BATCH})"
    )
    cmp.add_argument("--lr", type=_lr, help="adapter learning rate for every method (default: tuned per family)")
    cmp.add_argument("--head-lr", type=_lr, help="learning rate of the classification head (default 1e-2)")
    examples = _bounded(1, _MAX_EXAMPLES)
    cmp.add_argument("--n-train", type=examples, help="training examples (default: all but the test set)")
    cmp.add_argument(
        "--n-test", type=examples, help=f"test examples (default 1000, decoder {LLM_N_TEST}; 128 or 16 with --quick)"
    )
    cmp.add_argument(
        "--validation",
        type=_bounded(0, _MAX_EXAMPLES),
        default=0,
        metavar="N",
        help="hold N examples out of training and report accuracy on them, not on the test set "
        "(to choose learning rates or ranks without looking at the test set)",
    )
    cmp.add_argument(
        "--output", "-o", type=_path, default="runs/compare", help="output directory (default: %(default)s)"
    )
    cmp.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (< 2 minutes, decoder < 3): few methods and steps, small test set",
    )
    cmp.add_argument(
        "--jobs",
        type=_bounded(1, _MAX_JOBS),
        help="runs at a time, each in its own process (default: 2 on two or more cores, else 1)",
    )
    cmp.add_argument(
        "--threads",
        type=_bounded(1, _MAX_THREADS),
        help="torch threads per run (default: the cores divided among the jobs)",
    )
    cmp.add_argument("--no-progress", action="store_true", help="no progress bars")

    bud = sub.add_parser(
        "budget",
        help="every format's ranks and parameters at a budget on a model's target modules",
        description="Plan ranks: for a model and target modules, the largest rank of each format within a "
        "budget, and how many times fewer parameters than LoRA at the same rank.",
        epilog=EPILOG,
    )
    src = bud.add_mutually_exclusive_group()
    src.add_argument("--model", type=_path, help="local checkpoint directory (default: the embedded all-MiniLM-L6-v2)")
    src.add_argument("--shape", type=_choice(tuple(SHAPES)), help=f"named layout: {', '.join(SHAPES)}")
    src.add_argument(
        "--dims",
        type=_ints,
        help="layout by numbers: LAYERS,HIDDEN,HEADS,KV_HEADS,INTERMEDIATE (with --arch)",
    )
    bud.add_argument("--arch", type=_choice(("bert", "llama")), help="bert or llama, for --dims (default: llama)")
    bud.add_argument(
        "--targets", type=_names, help="target module suffixes (default: query,value for BERT, q_proj,v_proj for LLaMA)"
    )
    amount = bud.add_mutually_exclusive_group()
    amount.add_argument("--budget", type=_positive, help="parameter budget")
    amount.add_argument("--lora-rank", type=_bounded(1, 2**31), help="match LoRA of this rank (default 8)")
    return parser


def _budget_model(args):
    """The model structure ``budget`` plans on, from ``--shape``, ``--dims`` or ``--model``."""
    from .experiments import SHAPES, check_shape, model_from_path, model_from_shape

    if args.arch is not None and args.dims is None:
        raise ValueError(f"`--arch` only applies to a layout given by `--dims`, got --arch {args.arch} without it.")
    if args.shape:
        return model_from_shape(*SHAPES[args.shape])
    if args.dims is not None:
        if len(args.dims) != 5:
            dims = ",".join(map(str, args.dims))
            raise ValueError(f"`--dims` needs 5 numbers LAYERS,HIDDEN,HEADS,KV_HEADS,INTERMEDIATE, got {dims}.")
        arch = args.arch or "llama"
        try:
            check_shape(arch, *args.dims)
        except ValueError as exc:
            dims = ",".join(map(str, args.dims))
            raise ValueError(f"`--dims` {dims} (LAYERS,HIDDEN,HEADS,KV_HEADS,INTERMEDIATE, {arch}): {exc}") from None
        return model_from_shape(arch, *args.dims)
    if args.model is None:
        from .experiments import default_model_path

        return model_from_path(default_model_path(), name="--model")
    return model_from_path(args.model, name="--model")


def _budget(args) -> int:
    from .experiments import budget_table, format_budget_table

    model = _budget_model(args)
    is_llama = "llama" in type(model).__name__.lower()
    targets = args.targets or (["q_proj", "v_proj"] if is_llama else ["query", "value"])
    word = str(args.budget) if args.budget else f"r{args.lora_rank or 8}"
    budget, rows = budget_table(model, targets, word)
    print(f"model: {type(model).__name__}; targets: {', '.join(targets)}")
    print(format_budget_table(budget, rows))
    return 0


QUICK_METHODS = ("head", "lora:r8", "tucker2:r1", "cp:tiny")
QUICK_LLM_METHODS = ("zero-shot", "lora:r8", "tucker2:tiny")
ENCODER_TARGETS = ("query", "value")
LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# The decoder job's defaults: its whole default run (11 methods) within 30 minutes on 2 cores (README).
LLM_STEPS, LLM_BATCH, LLM_N_TEST = 40, 8, 150


def _compare_settings(args):
    """Check every argument of ``compare`` that needs no training, and return its settings."""
    from .experiments import (
        DEFAULT_LLM_METHODS,
        DEFAULT_METHODS,
        CompareSettings,
        TrainSettings,
        default_model_path,
        model_kind,
        parse_methods,
    )

    if not _is_data_file(args.dataset):
        given = [f"--{k}-column" for k in ("text", "label") if getattr(args, f"{k}_column") is not None]
        if given:
            raise ValueError(
                f"`{given[0]}` only applies to a data file (`--dataset PATH`), got --dataset {args.dataset}."
            )
    source = args.model if args.model is not None else str(default_model_path())
    decoder = model_kind(source) == "decoder"
    if not decoder and not (Path(source) / "config.json").is_file():
        raise ValueError(f"`--model` {source!r} is not a checkpoint directory (no config.json in it).")
    if decoder and args.head_lr is not None:
        raise ValueError(f"`--head-lr` only applies to an encoder (a classification head), got --model {source}.")
    quick_methods, default_methods = (
        (QUICK_LLM_METHODS, DEFAULT_LLM_METHODS) if decoder else (QUICK_METHODS, DEFAULT_METHODS)
    )
    methods = args.methods or list(quick_methods if args.quick else default_methods)
    specs = parse_methods(methods, budgets=args.budgets)
    if decoder:
        steps, batch, n_train, n_test = (4, 2, 64, 16) if args.quick else (LLM_STEPS, LLM_BATCH, None, LLM_N_TEST)
    else:
        steps, batch, n_train, n_test = (8, 16, 512, 128) if args.quick else (150, 16, None, 1000)
    train = TrainSettings(steps=args.steps or steps, batch_size=args.batch_size or batch)
    if args.head_lr is not None:
        train = dataclasses.replace(train, head_lr=args.head_lr)
    targets = args.targets or list(LLM_TARGETS if decoder else ENCODER_TARGETS)
    return CompareSettings(
        model_path=source,
        dataset=args.dataset,
        text_column=args.text_column,
        label_column=args.label_column,
        methods=tuple(specs),
        target_modules="all-linear" if targets == ["all-linear"] else tuple(targets),
        seeds=tuple(args.seeds),
        n_train=args.n_train or n_train,
        n_test=args.n_test or n_test,
        train=train,
        lr=args.lr,
        threads=args.threads,
        jobs=args.jobs,
        n_val=args.validation,
        evaluate_on="validation" if args.validation else "test",
    )


def _compare(args) -> int:
    from .experiments import (
        check_data_sizes,
        check_methods,
        format_table,
        model_kind,
        prepare_output_dir,
        run_compare,
        write_outputs,
    )

    settings = _compare_settings(args)
    check_methods(settings, model_kind(settings.model_path))
    _check_budgets(settings)
    check_data_sizes(settings)
    out_dir = Path(args.output)
    created = prepare_output_dir(out_dir, name="--output")
    start = time.time()
    try:
        rows = run_compare(settings, progress=not args.no_progress)
    except BaseException:
        for path in created:  # nothing was written: leave the file system as it was
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    print()
    print(format_table(rows, settings.evaluate_on))  # before writing: a failed write loses no result
    paths = write_outputs(rows, settings, out_dir)
    print(f"\n{len(rows)} methods in {time.time() - start:.0f} s; results: {paths['json']}; plot: {paths['plot']}")
    return 0


def _check_budgets(settings) -> None:
    """Resolve every method on the model structure first, so a bad budget fails before any training."""
    from .experiments import FAMILIES, at_format_max, causal_lm_directory, model_from_path, model_kind, resolve_method

    if model_kind(settings.model_path) == "decoder":
        model = model_from_path(causal_lm_directory(settings.model_path), name="--model", causal=True)
    else:
        model = model_from_path(settings.model_path, name="--model")
    targets = settings.target_modules
    for spec in settings.methods:
        config, params, budget = resolve_method(spec, model, targets if isinstance(targets, str) else list(targets))
        if config is not None and budget and params < budget and at_format_max(model, config):
            print(
                f"note: {spec.label}: the budget ({budget:,}) is above the largest {FAMILIES[spec.family][1]} "
                f"on these modules; using that maximum ({params:,} parameters, rank {config.rank})."
            )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv=None) -> int:
    """Entry point of the ``tensorpeft`` console script; returns the exit status.

    Bad arguments print one line on stderr and return 2, an unexpected error one line and 1; with the
    environment variable ``TENSORPEFT_DEBUG=1`` errors raise with their traceback instead.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2), already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return {"compare": _compare, "budget": _budget}[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"tensorpeft {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, ImportError, FileNotFoundError) as exc:
        if debug:
            raise
        print(f"tensorpeft {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        print(
            f"tensorpeft {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
            f"(set {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
