"""Data-parallel training of shared-factor adapters over 2 CPU processes (gloo) == one process.

The workers live in this file: the slow test runs it as a script (``python test_distributed.py OUT``),
which starts 2 processes with ``torch.multiprocessing.spawn``; each trains the adapter model on its
half of every global batch, wrapped in DistributedDataParallel and then sharded with FSDP2
(``fully_shard`` on every transformer layer, then on the root, which so owns the shared stacks), and
saves its adapter factors. The test trains the same model in-process on the whole batches and
compares. Both formats share factors across layers (and q, k, v): a factor used by many layers must
be registered, and reduced, once.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tensorpeft as tp

WORLD = 2
STEPS = 5
BATCH, SEQ = 4, 8  # global batch: BATCH sequences, BATCH // WORLD per process
FORMATS = ("tucker2", "cp")


def config(fmt):
    if fmt == "tucker2":  # A, B shared by q, k, v of every layer (stack_by="shape")
        return tp.Tucker2Config(rank=4, alpha=8, target_modules=["query", "key", "value"], stack_by="shape")
    return tp.CPConfig(rank=6, target_modules=["query", "value", "output.dense"])  # one CP over layers × kinds


def build(fmt):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return tp.get_peft_model(BertModel(cfg), config(fmt))


def global_batch(step):
    gen = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(0, 100, (BATCH, SEQ), generator=gen)
    target = torch.randn(BATCH, SEQ, 32, generator=gen)
    return ids, target


def train(model, rank=0, world=1, steps=STEPS):
    """AdamW steps on block ``rank`` of ``world`` of each global batch; returns the adapter factors after."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    per = BATCH // world
    for step in range(steps):
        ids, target = global_batch(step)
        ids, target = ids[rank * per : (rank + 1) * per], target[rank * per : (rank + 1) * per]
        loss = (model(ids).last_hidden_state - target).pow(2).mean()  # mean over the local batch
        loss.backward()
        opt.step()
        opt.zero_grad()
    inner = getattr(model, "module", model)
    state = inner.tensor_adapters.state_dict()
    # FSDP2 keeps parameters as sharded DTensors between steps
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()}


def fsdp2(model):
    """FSDP2 the documented way: every transformer layer a unit, then the root, which owns the stacks."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.get_base_model().encoder.layer:
        fully_shard(layer)
    fully_shard(model)
    return model


def worker(rank, world, init_method, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        for fmt in FORMATS:
            model = DistributedDataParallel(build(fmt))  # default find_unused_parameters=False
            torch.save(train(model, rank, world), Path(out_dir) / f"ddp-{fmt}-rank{rank}.pt")
            torch.save(train(fsdp2(build(fmt)), rank, world), Path(out_dir) / f"fsdp2-{fmt}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def main(out_dir):
    import torch.multiprocessing as mp

    init_method = (Path(out_dir) / "rendezvous").resolve().as_uri()  # file://, no port to pick
    mp.spawn(worker, args=(WORLD, init_method, out_dir), nprocs=WORLD, join=True)


@pytest.mark.slow  # 25-65 s: three fresh Python processes import torch and transformers
def test_ddp_and_fsdp2_two_processes_equal_single_process_on_the_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=900, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for fmt in FORMATS:
        start = {k: v.detach().clone() for k, v in build(fmt).tensor_adapters.state_dict().items()}
        reference = train(build(fmt))
        for wrapper in ("ddp", "fsdp2"):
            ranks = [torch.load(tmp_path / f"{wrapper}-{fmt}-rank{r}.pt") for r in range(WORLD)]
            assert ranks[0].keys() == reference.keys() == start.keys()
            for name, ref in reference.items():
                where = (wrapper, fmt, name)
                assert not torch.equal(ref, start[name]), where  # every factor was trained
                assert torch.equal(ranks[0][name], ranks[1][name]), where  # replicas stay identical
                assert float((ranks[0][name] - ref).abs().max()) <= 1e-6, where


@contextlib.contextmanager
def one_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=(tmp_path / "rendezvous").as_uri(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_accepts_shared_factors_in_one_process(tmp_path):
    """World size 1 in this process: DDP takes the model (every trainable factor gets a gradient)."""
    from torch.nn.parallel import DistributedDataParallel

    reference = train(build("tucker2"), steps=3)
    with one_process_group(tmp_path):
        got = train(DistributedDataParallel(build("tucker2")), steps=3)  # an unused factor fails at step 2
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in got)


def test_rank_pruner_on_a_ddp_wrapped_model(tmp_path):
    from torch.nn.parallel import DistributedDataParallel

    with one_process_group(tmp_path):
        model = DistributedDataParallel(
            tp.get_peft_model(build("tucker2").unload(), tp.LoRA2Config(rank=4, target_modules=["query", "value"]))
        )
        pruner = tp.RankPruner(model, target_rank=1, total_steps=4, warmup_steps=0, final_steps=1, interval=1)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for step in range(4):
            ids, target = global_batch(step)
            (model(ids).last_hidden_state - target).pow(2).mean().backward()
            opt.step()
            pruner.update_and_allocate(step)
            opt.zero_grad()
    assert pruner.model is model.module.base_model  # the tuner inside the PeftModel inside DDP
    assert pruner.total_rank == pruner.target_budget == 4
    for name, stack in model.module.tensor_adapters.items():
        assert torch.all(getattr(stack, "lambda")[~pruner.masks[name]] == 0)


if __name__ == "__main__":
    main(sys.argv[1])
