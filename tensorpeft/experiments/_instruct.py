"""Instruction tuning of a decoder LLM for text classification: prompts, answer-only loss, exact-match scoring.

Each example becomes one chat turn through the tokenizer's chat template:

- **system**: :data:`SYSTEM`, "Reply with one word only." (a template such as SmolLM2's would otherwise add its
  own, longer one). Of three prompts and two system messages tried on 48 validation sentences (held out of
  training and test), this pair made SmolLM2-135M-Instruct answer with a label word most often before any
  training: 100% of answers, against 0-98% for the other five;
- **user**: the data set's question, the text, and the allowed answers (:func:`user_message`), e.g. for
  ``rotten_tomatoes``::

      What is the sentiment of this movie review?

      Text: a gorgeous , witty , seductive movie .

      Answer with one word: negative or positive.

- **assistant**: the label word (the data set's label name: ``negative``/``positive``; ``business``,
  ``entertainment``, ``politics``, ``sport``, ``tech`` for ``bbc_news``; the label strings of a data file).

The text is cut to ``max_length`` tokens before it is put in the prompt. Training sees the prompt and the
answer (the label word and the template's end-of-turn token); the loss covers the answer tokens only. The
test prediction is the greedy continuation of the prompt (the label's token count + 1 new tokens), scored by
exact match after :func:`normalize` (first line, case-folded, whitespace collapsed, punctuation stripped
from both ends); the share of predictions that are a valid label at all is reported beside it.

A tokenizer without a chat template gets a plain ``System: ... / User: ... / Assistant:`` layout.

Importing this module imports no torch (the command line reads :func:`model_kind` from it).
"""

from __future__ import annotations

import string
import time
from pathlib import Path

import numpy as np

from .._safe_io import parse_json, read_capped

__all__ = [
    "DEFAULT_QUESTION",
    "QUESTIONS",
    "SYSTEM",
    "encode_instructions",
    "evaluate_generation",
    "label_words",
    "model_kind",
    "normalize",
    "train_instruct",
    "user_message",
]

SYSTEM = "Reply with one word only."
QUESTIONS = {
    "rotten_tomatoes": "What is the sentiment of this movie review?",
    "bbc_news": "What is the topic of this news article?",
}
DEFAULT_QUESTION = "Which label fits this text?"
"""The question for a data file (``--dataset PATH``)."""

_PUNCTUATION = string.punctuation + "“”‘’«»…"
_CONFIG_BYTES = 1 << 20
# config.json ``model_type`` values of encoders: a checkpoint without ``architectures`` is judged by these
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "mpnet"}


def model_kind(source: str) -> str:
    """``"decoder"`` for a causal LM (``smollm2``, a ``.gguf`` file, a ``*ForCausalLM`` checkpoint), else ``"encoder"``.

    Reads at most 1 MiB of the checkpoint's ``config.json``; a checkpoint that names no architecture is an
    encoder if its ``model_type`` is a known encoder's, else a decoder when transformers lists it as a causal
    LM type.

    Raises
    ------
    ValueError
        If ``source`` is neither ``smollm2``, a ``.gguf`` file nor a directory with a readable ``config.json``.
    """
    if source == "smollm2" or (Path(source).suffix.lower() == ".gguf" and Path(source).is_file()):
        return "decoder"
    config = Path(source) / "config.json"
    if not config.is_file():
        raise ValueError(
            f"`--model` {source!r} is not a checkpoint directory (no config.json in it), nor 'smollm2' or a .gguf file."
        )
    try:
        data = parse_json(read_capped(config, _CONFIG_BYTES), str(config))
    except (OSError, ValueError) as exc:
        why = " ".join(str(exc).split())
        raise ValueError(f"`--model` {source!r}: its config.json cannot be read ({why}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"`--model` {source!r}: its config.json must hold a JSON object.")
    architectures = data.get("architectures") or []
    if isinstance(architectures, list) and architectures:
        return "decoder" if any(str(a).endswith("ForCausalLM") for a in architectures) else "encoder"
    model_type = data.get("model_type")
    if model_type in _ENCODER_TYPES:
        return "encoder"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return "decoder" if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "encoder"


def normalize(answer: str) -> str:
    """The comparable form of an answer: its first line, case-folded, whitespace collapsed, outer punctuation stripped.

    >>> normalize("  Positive. Because ...")
    'positive. because'
    >>> normalize("  Positive!")
    'positive'
    """
    lines = answer.strip().splitlines()
    first = " ".join(lines[0].split()) if lines else ""
    return first.strip(_PUNCTUATION + " ").casefold()


def label_words(labels) -> tuple[str, ...]:
    """The answers the model is taught: the label names, checked to stay distinct and non-empty under :func:`normalize`.

    Raises
    ------
    ValueError
        If a label is empty after normalizing, or two labels normalize to the same answer.
    """
    seen: dict[str, str] = {}
    for label in labels:
        word = normalize(str(label))
        if not word:
            raise ValueError(f"label {label!r} is no answer a model can give: it is empty after normalizing.")
        if word in seen:
            raise ValueError(f"labels {seen[word]!r} and {label!r} are the same answer after normalizing ({word!r}).")
        seen[word] = str(label)
    return tuple(" ".join(str(label).split()) for label in labels)


def user_message(question: str, text: str, words) -> str:
    """The user turn: the question, the text and the allowed answers.

    >>> print(user_message("What is the sentiment of this movie review?", "a witty movie .", ["negative", "positive"]))
    What is the sentiment of this movie review?
    <BLANKLINE>
    Text: a witty movie .
    <BLANKLINE>
    Answer with one word: negative or positive.
    """
    choices = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    return f"{question}\n\nText: {text}\n\nAnswer with one word: {choices}."


def _render(tokenizer, user: str, answer: str | None = None) -> str:
    """The prompt (``answer`` None, ending where the assistant starts) or the whole conversation."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        if answer is None:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        messages.append({"role": "assistant", "content": answer})
        return tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = f"System: {SYSTEM}\nUser: {user}\nAssistant:"
    return prompt if answer is None else f"{prompt} {answer}{tokenizer.eos_token or ''}"


def encode_instructions(tokenizer, texts, words, question: str, max_length: int):
    """Token ids of each example's prompt and of each label's answer.

    Returns ``(prompts, answers)``: ``prompts[i]`` the ids of example ``i``'s prompt (its text cut to
    ``max_length`` tokens), ``answers[k]`` the ids the assistant turn of label ``k`` adds after a prompt (the
    label word and the end-of-turn token, trailing whitespace dropped).

    Raises
    ------
    ValueError
        If the chat template does not render the prompt as a prefix of the whole conversation.
    """
    cut = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    short = tokenizer.batch_decode(cut, skip_special_tokens=True)
    prompt_texts = [_render(tokenizer, user_message(question, t, words)) for t in short]
    prompts = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
    probe = user_message(question, "x", words)
    head = _render(tokenizer, probe)
    answers = []
    for word in words:
        whole = _render(tokenizer, probe, word)
        if not whole.startswith(head):
            raise ValueError("the tokenizer's chat template does not render the prompt as a prefix of the chat.")
        answers.append(tokenizer(whole[len(head) :].rstrip(), add_special_tokens=False)["input_ids"])
    return prompts, answers


def _left_pad(rows, pad_id: int):
    """Left-padded ids, mask and position ids (counted from each row's first real token, as ``generate`` does)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        if r:
            ids[k, width - len(r) :] = torch.tensor(r)
            mask[k, width - len(r) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids, mask, positions


def _answer_loss(model, prompts, answers, pad_id: int):
    """Mean cross-entropy of the answer tokens given their prompts; the vocabulary projection runs on them only.

    Rows are left-padded, so every answer ends at the last position: ``logits_to_keep`` keeps the last
    ``K + 1`` positions (``K`` the longest answer), and tokens before a row's answer do not count.
    """
    import torch

    rows = [p + a for p, a in zip(prompts, answers, strict=True)]
    ids, mask, positions = _left_pad(rows, pad_id)
    k = max(len(a) for a in answers)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=k + 1).logits
    targets = ids[:, -k:].clone()
    for row, a in enumerate(answers):
        targets[row, : k - len(a)] = -100
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def train_instruct(model, prompts, labels, answers, settings, *, pad_id: int, progress=None):
    """Train ``model``'s trainable parameters on the answer-only loss for ``settings.steps`` steps.

    Batches are length-bucketed as in the encoder job; AdamW with linear warm-up and decay. Returns
    ``(losses, seconds per step)``.

    Raises
    ------
    FloatingPointError
        If the loss stops being finite.
    """
    import torch

    from ._train import _batches, train_step, warmup_decay

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = warmup_decay(optimizer, settings)
    lengths = np.fromiter((len(p) for p in prompts), dtype=np.int64)
    losses, times = [], []
    model.train()
    for idx in _batches(lengths, settings.batch_size, settings.steps, rng):
        batch_prompts, batch_answers = [prompts[i] for i in idx], [answers[labels[i]] for i in idx]
        train_step(lambda p=batch_prompts, a=batch_answers: _answer_loss(model, p, a, pad_id),
                   optimizer, scheduler, losses, times, progress)  # fmt: skip
    model.eval()
    return losses, float(np.median(times)) if times else 0.0


def evaluate_generation(model, tokenizer, prompts, labels, words, answers, *, batch_size: int):
    """Greedy answers to ``prompts``: ``(exact-match accuracy, share of valid labels, seconds, examples)``.

    Prompts run in batches sorted by length, left-padded; each gets ``max(len(answer)) + 1`` new tokens.
    ``examples`` holds the first five ``(prompt index, answer, label)`` for the record.
    """
    import torch
    from transformers import GenerationConfig

    wanted = [normalize(w) for w in words]
    new_tokens = max(len(a) for a in answers) + 1
    pad_id = pad_token_id(tokenizer)
    generation = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id, eos_token_id=_stop_ids(tokenizer, answers)
    )
    order = np.argsort([len(p) for p in prompts], kind="stable")
    correct = valid = 0
    shown = []
    start = time.perf_counter()
    model.eval()
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            ids, mask, _ = _left_pad([prompts[j] for j in idx], pad_id)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=generation)
            texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
            for j, text in zip(idx, texts, strict=True):
                answer = normalize(text)
                valid += answer in wanted
                correct += answer == wanted[labels[j]]
                if len(shown) < 5 and j < 5:
                    shown.append((int(j), text, words[labels[j]]))
    n = max(1, len(order))
    return correct / n, valid / n, time.perf_counter() - start, sorted(shown)


def pad_token_id(tokenizer) -> int:
    """The id rows are padded with: the tokenizer's pad token, else its EOS (LLaMA tokenizers have no pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _stop_ids(tokenizer, answers) -> list[int]:
    """The end-of-turn token(s): the last token of every answer, and the tokenizer's EOS."""
    ids = {a[-1] for a in answers if a}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def run_instruct(payload: dict) -> dict:
    """One (method, seed) of the decoder job in a worker process; a JSON-safe dict (see :func:`._worker._worker`)."""
    import torch

    from .. import nn as tpnn
    from ._llm import load_causal_lm
    from ._methods import resolve_method
    from ._train import _peak_rss_mb
    from ._worker import _ranks_text, _targets

    torch.set_num_threads(payload["threads"])
    spec, settings = payload["spec"], payload["train"]
    model, tokenizer = load_causal_lm(payload["model_path"])
    for p in model.parameters():
        p.requires_grad_(False)
    config, params, budget = resolve_method(
        spec, model, _targets(payload["target_modules"]), seed=settings.seed, task_type="CAUSAL_LM"
    )
    torch.manual_seed(settings.seed)
    if config is not None:
        model = tpnn.get_peft_model(model, config)
    pad_id = pad_token_id(tokenizer)
    losses, per_step = [], 0.0
    start = time.perf_counter()
    if config is not None:
        progress = None
        if payload["progress"]:
            from tqdm.auto import tqdm

            progress = tqdm(
                total=settings.steps,
                desc=f"{spec.label} (seed {settings.seed})",
                dynamic_ncols=True,
                position=payload.get("position", 0),  # one line per concurrent run
            )
        try:
            losses, per_step = train_instruct(
                model, payload["train_prompts"], payload["train_labels"], payload["answers"], settings,
                pad_id=pad_id, progress=progress,
            )  # fmt: skip
        finally:
            if progress is not None:
                progress.close()
    train_seconds = time.perf_counter() - start
    accuracy, valid, eval_seconds, shown = evaluate_generation(
        model, tokenizer, payload["test_prompts"], payload["test_labels"], payload["words"], payload["answers"],
        batch_size=settings.eval_batch_size,
    )  # fmt: skip
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "accuracy": accuracy,
        "valid_answers": valid,
        "trainable_params": int(trainable),
        "adapter_params": int(params),
        "seconds_per_step": per_step,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "peak_memory_mb": _peak_rss_mb(),
        "final_loss": float(np.mean(losses[-20:])) if losses else float("nan"),
        "losses": losses,
        "examples": [{"index": i, "answer": a, "label": w} for i, a, w in shown],
        "ranks": _ranks_text(config),
        "budget": budget,
        "config": None if config is None else config.to_dict(),
    }
