"""WeLore on a real decoder LLM: compress SmolLM2-135M-Instruct, then fine-tune its low-rank components only.

WeLore's paper (Jaiswal et al., arXiv:2407.11239) compresses LLaMA-2-7B with one global threshold on the
normalized singular values, keeps the matrices that lose more than half their spectrum as low-rank factor
pairs (the LRCs) and fine-tunes those alone, against LoRA on the uncompressed model. This script makes that
table at 135M scale on the decoder job of ``tensorpeft compare --model smollm2`` (Rotten Tomatoes
instruction tuning, the same prompts, answer-only loss, exact-match greedy answers, split seed 0):

- ``uncompressed zero-shot`` and ``LoRA r=8`` (q, k, v, o; the job's default rate) on the uncompressed model;
- per reduction: ``compress_low_rank(model, reduction)`` over every linear layer but ``lm_head``, then its
  zero-shot accuracy, then the LRC factors fine-tuned (every other weight frozen) with the job's steps and
  batch, at ``--lrc-lr``.

Run:  python benchmarks/welore_llm.py [--reductions 0.1,0.3] [--steps 40] [--n-test 150] [--quick]
Writes benchmarks/results/welore_llm.json.
"""

from __future__ import annotations

import sys
import time

import _common

import tensorpeft as tp
from tensorpeft.cli import LLM_BATCH, LLM_N_TEST, LLM_STEPS, LLM_TARGETS
from tensorpeft.experiments import TrainSettings, load_causal_lm, load_dataset
from tensorpeft.experiments import _instruct as inst
from tensorpeft.experiments._compare import DEFAULT_LLM_LR


def _task(tokenizer, n_test: int, n_train: int | None, max_length: int):
    data = load_dataset("rotten_tomatoes", n_test=n_test, n_train=n_train)
    words = inst.label_words(data.labels)
    question = inst.QUESTIONS["rotten_tomatoes"]
    train, answers = inst.encode_instructions(tokenizer, data.train_texts, words, question, max_length)
    test, _ = inst.encode_instructions(tokenizer, data.test_texts, words, question, max_length)
    return {
        "words": words,
        "answers": answers,
        "train": train,
        "train_labels": [int(v) for v in data.train_labels],
        "test": test,
        "test_labels": [int(v) for v in data.test_labels],
    }


def _evaluate(model, tokenizer, task, batch_size: int) -> tuple[float, float]:
    accuracy, valid, _, _ = inst.evaluate_generation(
        model, tokenizer, task["test"], task["test_labels"], task["words"], task["answers"], batch_size=batch_size
    )
    return accuracy, valid


def _train(model, tokenizer, task, settings) -> float:
    _, per_step = inst.train_instruct(
        model, task["train"], task["train_labels"], task["answers"], settings, pad_id=tokenizer.pad_token_id
    )
    return per_step


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main(argv=None) -> int:
    """Run the table; print it; write JSON."""
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--reductions", default="0.1,0.3", help="comma-separated parameter reductions (default 0.1,0.3)")
    p.add_argument("--steps", type=int, default=LLM_STEPS)
    p.add_argument("--n-test", type=int, default=LLM_N_TEST)
    p.add_argument("--lrc-lr", type=float, default=1e-4, help="learning rate of the LRC factors (default 1e-4)")
    args = p.parse_args(argv)
    reductions = [float(r) for r in args.reductions.split(",")]
    steps, n_test, n_train, batch = args.steps, args.n_test, None, LLM_BATCH
    if args.quick:
        reductions, steps, n_test, n_train, batch = reductions[:1], 2, 8, 64, 2
    env = _common.environment()
    _common.print_environment(env)
    start = time.time()
    base, tokenizer = load_causal_lm("smollm2")
    task = _task(tokenizer, n_test, n_train, TrainSettings().max_length)
    eval_batch = TrainSettings().eval_batch_size
    rows = []

    def add(name, model, *, reduction=None, params=None, per_step=None, extra=None):
        accuracy, valid = _evaluate(model, tokenizer, task, eval_batch)
        row = {"method": name, "reduction": reduction, "model_params": params, "trainable": _trainable(model)}
        row.update(accuracy=accuracy, valid=valid, seconds_per_step=per_step, **(extra or {}))
        rows.append(row)
        print(f"{name}: accuracy {100 * accuracy:.1f}, valid {100 * valid:.1f}% ({time.time() - start:.0f} s)")

    total = sum(p.numel() for p in base.parameters())
    for p_ in base.parameters():
        p_.requires_grad_(False)
    add("uncompressed, zero-shot", base, reduction=0.0, params=total)
    settings = TrainSettings(steps=steps, batch_size=batch, lr=DEFAULT_LLM_LR["lora"], seed=0)
    lora = tp.get_peft_model(
        base, tp.LoRAConfig(rank=8, alpha=16, target_modules=list(LLM_TARGETS), task_type="CAUSAL_LM")
    )
    per_step = _train(lora, tokenizer, task, settings)
    add("uncompressed + LoRA r=8 (q,k,v,o)", lora, reduction=0.0, params=total, per_step=per_step)
    del lora, base

    for reduction in reductions:
        model, _ = load_causal_lm("smollm2")
        report = tp.compress_low_rank(model, reduction=reduction)
        params = sum(p.numel() for p in model.parameters())
        lrcs = sum(1 for m in report.matrices.values() if m.is_low_rank)
        extra = {"lrc_matrices": lrcs, "matrices": len(report.matrices), "achieved_reduction": report.reduction}
        add(f"WeLore {reduction:.0%}, zero-shot", model, reduction=reduction, params=params, extra=extra)
        settings = TrainSettings(steps=steps, batch_size=batch, lr=args.lrc_lr, seed=0)
        per_step = _train(model, tokenizer, task, settings)
        add(f"WeLore {reduction:.0%} + LRC fine-tuning", model, reduction=reduction, params=params,
            per_step=per_step, extra=extra)  # fmt: skip
        del model
    headers = ["method", "model params", "trainable", "accuracy %", "valid %", "s/step"]
    table = [
        [r["method"], r["model_params"], r["trainable"], 100 * r["accuracy"], 100 * r["valid"], r["seconds_per_step"]]
        for r in rows
    ]
    _common.print_table(headers, table, title=f"WeLore on SmolLM2-135M-Instruct, {n_test} test examples")
    print(f"\n{time.time() - start:.0f} s")
    if not args.no_json:
        payload = {"environment": env, "steps": steps, "batch": batch, "n_test": n_test, "lrc_lr": args.lrc_lr}
        name = "welore_llm_quick" if args.quick else "welore_llm"
        print(f"wrote {_common.write_json(name, payload | {'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
