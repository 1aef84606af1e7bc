"""Fine-tune a sentence encoder + linear head on a text-classification split, and measure it.

The classifier is the pretrained encoder, masked mean pooling (as sentence-transformers pools
all-MiniLM-L6-v2) and a linear head. Only the head and the adapter factors train. Batches are
length-bucketed (random chunks sorted by length) so padding does not dominate CPU time.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["SentenceClassifier", "TrainResult", "TrainSettings", "train_and_evaluate"]


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters shared by every method of a comparison."""

    steps: int = 150
    batch_size: int = 16
    max_length: int = 48
    lr: float = 1e-3
    head_lr: float = 1e-2
    weight_decay: float = 0.0
    warmup: float = 0.1
    eval_batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "max_length", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"`weight_decay` must be a finite number >= 0, got {self.weight_decay!r}.")
        if not 0 <= self.warmup <= 1:
            raise ValueError(f"`warmup` must be in [0, 1], got {self.warmup!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"`seed` must be an integer >= 0, got {self.seed!r}.")


@dataclass
class TrainResult:
    """What one training run measured."""

    accuracy: float
    trainable_params: int
    adapter_params: int
    seconds_per_step: float
    train_seconds: float
    eval_seconds: float
    peak_memory_mb: float
    final_loss: float
    losses: list = field(default_factory=list)


class SentenceClassifier(nn.Module):
    """Encoder → masked mean pooling → linear head."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden_size, num_labels)

    def embed(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids, attention_mask):
        return self.head(self.embed(input_ids, attention_mask))


def _batches(lengths: np.ndarray, batch_size: int, steps: int, rng: np.random.Generator):
    """``steps`` batches of indices, each drawn from a random chunk sorted by length.

    Chunks hold 8 batches; a training set smaller than that is one chunk (its last batch may be short).
    """
    if len(lengths) == 0:
        raise ValueError("no training examples to draw batches from")
    chunk = min(batch_size * 8, len(lengths))
    out: list[np.ndarray] = []
    while len(out) < steps:
        order = rng.permutation(len(lengths))
        for start in range(0, len(order) - chunk + 1, chunk):
            block = order[start : start + chunk]
            block = block[np.argsort(lengths[block], kind="stable")]
            parts = [block[i : i + batch_size] for i in range(0, chunk, batch_size)]
            out.extend(parts[k] for k in rng.permutation(len(parts)))
    return out[:steps]


def _pad(encoded: list[list[int]], idx, pad_id: int):
    rows = [encoded[i] for i in idx]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, : len(r)] = torch.tensor(r)
        mask[k, : len(r)] = 1
    return ids, mask


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def train_and_evaluate(
    model: SentenceClassifier,
    train_encoded: list[list[int]],
    train_labels: np.ndarray,
    test_encoded: list[list[int]],
    test_labels: np.ndarray,
    settings: TrainSettings,
    *,
    pad_id: int,
    adapter_params: int,
    progress=None,
) -> TrainResult:
    """Train the trainable parameters of ``model`` for ``settings.steps`` steps, then evaluate accuracy.

    ``progress`` is an optional tqdm-like object with ``update(n)`` and ``set_postfix``.
    """
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    head_params = list(model.head.parameters())
    head_ids = {id(p) for p in head_params}
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head_params, "lr": settings.head_lr}]
    if other:
        groups.append({"params": other, "lr": settings.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    scheduler = warmup_decay(optimizer, settings)
    lengths = np.fromiter((len(e) for e in train_encoded), dtype=np.int64)
    labels = torch.as_tensor(train_labels)
    losses, times = [], []
    model.train()
    schedule_batches = _batches(lengths, settings.batch_size, settings.steps, rng)
    # Head only: the frozen encoder's pooled features never change, so compute each once; that time
    # is spread over the steps in `seconds_per_step`.
    start = time.perf_counter()
    features = _frozen_features(model, train_encoded, schedule_batches, pad_id) if not other else None
    feature_seconds = time.perf_counter() - start if features is not None else 0.0
    for idx in schedule_batches:
        ids, mask = _pad(train_encoded, idx, pad_id)

        def loss_of_batch(idx=idx, ids=ids, mask=mask):
            logits = model.head(features[idx]) if features is not None else model(ids, mask)
            return nn.functional.cross_entropy(logits, labels[idx])

        train_step(loss_of_batch, optimizer, scheduler, losses, times, progress)
    accuracy, eval_seconds = evaluate(model, test_encoded, test_labels, settings.eval_batch_size, pad_id)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return TrainResult(
        accuracy=accuracy,
        trainable_params=int(trainable),
        adapter_params=int(adapter_params),
        seconds_per_step=float(np.median(times)) + feature_seconds / settings.steps,
        train_seconds=float(np.sum(times)) + feature_seconds,
        eval_seconds=eval_seconds,
        peak_memory_mb=_peak_rss_mb(),
        final_loss=float(np.mean(losses[-20:])) if losses else float("nan"),
        losses=losses,
    )


def warmup_decay(optimizer, settings: TrainSettings):
    """Both jobs' learning-rate schedule: linear warm-up over ``settings.warmup`` of the steps, then linear decay."""
    warmup = max(1, int(settings.warmup * settings.steps))

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (settings.steps - step) / max(1, settings.steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def train_step(loss_fn, optimizer, scheduler, losses: list, times: list, progress=None) -> None:
    """One optimizer step on ``loss_fn()``: its loss and seconds appended to ``losses``/``times``.

    Raises
    ------
    FloatingPointError
        If the loss is not finite.
    """
    start = time.perf_counter()
    loss = loss_fn()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    times.append(time.perf_counter() - start)
    losses.append(loss.item())
    if not math.isfinite(losses[-1]):
        raise FloatingPointError(f"training loss became {losses[-1]} at step {len(losses)}")
    if progress is not None:
        progress.update(1)
        progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")


@torch.no_grad()
def _frozen_features(model, encoded, batches, pad_id):
    """Pooled encoder features of every example the batches use (rows of other examples stay zero)."""
    used = np.unique(np.concatenate(batches))
    out = torch.zeros((len(encoded), model.head.in_features))
    model.eval()
    order = used[np.argsort([len(encoded[i]) for i in used], kind="stable")]
    for i in range(0, len(order), 64):
        idx = order[i : i + 64]
        out[idx] = model.embed(*_pad(encoded, idx, pad_id))
    model.train()
    return out


@torch.no_grad()
def evaluate(model, encoded, labels, batch_size: int, pad_id: int) -> tuple[float, float]:
    """Accuracy on ``encoded`` (batches sorted by length), and the seconds it took."""
    model.eval()
    start = time.perf_counter()
    order = np.argsort([len(e) for e in encoded], kind="stable")
    correct = 0
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        ids, mask = _pad(encoded, idx, pad_id)
        pred = model(ids, mask).argmax(-1).numpy()
        correct += int((pred == labels[idx]).sum())
    model.train()
    return correct / len(order), time.perf_counter() - start
