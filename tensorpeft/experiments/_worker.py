"""One (method, seed) run of the comparison, in a process of its own: load, adapt, train, evaluate.

:func:`_worker` is what :func:`~._compare.run_compare` hands to a one-process ``spawn`` pool; its result is a
JSON-safe dict. :func:`_exit_with_parent` is that pool's initializer.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._methods import MethodSpec
    from ._train import TrainSettings


def _ranks_text(config) -> str:
    if config is None:
        return "-"
    rank = config.rank
    text = f"r={rank}"
    inner = getattr(config, "inner", None)
    if inner:
        text += f", k={inner}"
    return text


def _targets(target_modules):
    """``"all-linear"`` as it is, a tuple of names as a list (what the configs take)."""
    return target_modules if isinstance(target_modules, str) else list(target_modules)


def _load_model(model_path):
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return AutoModel.from_pretrained(model_path), AutoTokenizer.from_pretrained(model_path)


def _encode(tokenizer, texts, max_length):
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def _exit_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker when the parent process is gone.

    A worker of a ``multiprocessing`` pool outlives a parent killed by a signal (Ctrl-C twice, a CI
    timeout): it would train on, unseen, for minutes. A daemon thread polls the parent id once a
    second and exits the process when it changes (the worker was re-parented).
    """
    import threading

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker(payload: dict) -> dict:
    """Run one (method, seed) in a fresh process; returns a JSON-safe dict."""
    import warnings

    # transformers 5 deprecates a name PEFT still calls; nothing the user can act on, so not in their terminal
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
    if payload.get("task") == "instruct":
        from ._instruct import run_instruct

        return run_instruct(payload)
    import torch

    from .. import nn as tpnn
    from ._methods import resolve_method
    from ._train import SentenceClassifier, train_and_evaluate

    torch.set_num_threads(payload["threads"])
    spec: MethodSpec = payload["spec"]
    settings: TrainSettings = payload["train"]
    encoder, tokenizer = _load_model(payload["model_path"])
    for p in encoder.parameters():
        p.requires_grad_(False)
    config, params, budget = resolve_method(spec, encoder, _targets(payload["target_modules"]), seed=settings.seed)
    torch.manual_seed(settings.seed)
    if config is not None:
        encoder = tpnn.get_peft_model(encoder, config)
    model = SentenceClassifier(encoder, encoder.config.hidden_size, payload["num_labels"])
    progress = None
    if payload["progress"]:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=settings.steps,
            desc=f"{spec.label} (seed {settings.seed})",
            leave=True,
            dynamic_ncols=True,
            position=payload.get("position", 0),  # one line per concurrent run
        )
    try:
        result = train_and_evaluate(
            model,
            payload["train_encoded"],
            payload["train_labels"],
            payload["test_encoded"],
            payload["test_labels"],
            settings,
            pad_id=tokenizer.pad_token_id,
            adapter_params=params,
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.close()
    out = dataclasses.asdict(result)
    out.update(ranks=_ranks_text(config), budget=budget, config=None if config is None else config.to_dict())
    return out
