"""--activation-offload: the simulated save_on_cpu against torch's own hooks, the CUDA unpack rule, refusals, the
spec, the CLI and the bundle.

The independent numbers: a tiny Llama built by transformers runs its forward and loss under torch's real
``torch.autograd.graph.save_on_cpu(pin_memory=True)``, whose pack hook is wrapped to add up the bytes of every
tensor it is handed (``numel * element_size``, what ``pack_to_cpu`` allocates); the simulation's
``offloaded_bytes`` must equal that sum exactly, with and without checkpointing, full and LoRA.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from planner import catalog
from planner.errors import PlannerError
from planner.estimate.core import estimate
from planner.estimate.host_ram import pinned_size
from planner.estimate.step import ops
from planner.estimate.step.simulate import simulate_step
from planner.estimate.step.tape import Fake, Node, Param, Sim, Tape, backward
from planner.models import load_model
from planner.specs import (
    Cluster,
    LoraSpec,
    Method,
    Parallelism,
    Precision,
    TrainSpec,
    train_spec_from_dict,
    train_spec_to_dict,
)
from planner.validate.matrix import OFFLOAD_CELLS


def _packed_by_torch(cell_train: TrainSpec, model_config: dict) -> tuple[int, int]:
    """(bytes, pinned-rounded bytes) pack_to_cpu is handed in one forward + loss of the real model."""
    import torch

    from planner.profile.workload import build_model

    built = build_model(model_config, cell_train, "cpu", seed=0)
    sizes: list[int] = []
    ctx = torch.autograd.graph.save_on_cpu(pin_memory=True)
    pack = ctx.pack_hook

    def counting(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return pack(tensor)

    ctx.pack_hook = counting
    ids = torch.randint(0, model_config["vocab_size"], (cell_train.micro_batch, cell_train.seq_len))
    with ctx:
        logits = built.model(input_ids=ids, use_cache=False).logits
        # the standard loss as the profiler runs it (profile/loss_run.py, transformers ForCausalLMLoss)
        loss = built.hf_model.loss_function(logits=logits, labels=ids, vocab_size=built.hf_model.config.vocab_size)
    loss.backward()
    return sum(sizes), sum(pinned_size(n) for n in sizes)


@pytest.mark.parametrize("method,ckpt", [("full", False), ("full", True), ("lora-all", False), ("lora-all", True)])
def test_packed_bytes_are_what_save_on_cpu_copies(method, ckpt):
    base = OFFLOAD_CELLS[0]
    cell = dataclasses.replace(base, method=method, ckpt=ckpt, seq_len=32, micro_batch=2)
    train = cell.train_spec()
    got, got_pinned = _packed_by_torch(train, cell.model_config())
    step = simulate_step(cell.model_spec(), train, device="cpu")
    assert (step.offloaded_bytes, step.offloaded_pinned_bytes) == (got, got_pinned)


def _matrix_cell(family: str, method: str, ckpt: bool, precision: str, attn: str):
    from planner.validate.matrix import full_matrix

    cell = next(c for c in full_matrix() if (c.family, c.method, c.ckpt, c.precision, c.attn, c.num_ranks)
                == (family, method, ckpt, precision, attn, 1))
    return dataclasses.replace(cell, activation_offload=True, seq_len=min(cell.seq_len, 64))


# GPT-2 (Conv1D, LayerNorm weight and bias, learned positions, dropout masks, the mask passed positionally to a
# checkpointed block) and Qwen2 (QKV bias, tied embeddings). GPT-2 in fp32 only: on CPU a 16-bit LayerNorm keeps
# its mean and rstd in the input dtype, which the simulation (CUDA's fp32) does not follow (N x 2 bytes each).
@pytest.mark.parametrize("key", [("gpt2", "full", True, "fp32", "eager"), ("gpt2", "lora-all", False, "fp32", "sdpa"),
                                 ("gpt2", "lora-attn", False, "fp32", "eager"),
                                 ("qwen2", "full", False, "bf16-mixed", "sdpa"),
                                 ("qwen2", "lora-all", True, "bf16-mixed", "eager")])
def test_packed_bytes_of_other_families(key):
    cell = _matrix_cell(*key)
    train = cell.train_spec()
    step = simulate_step(cell.model_spec(), train, device="cpu")
    assert (step.offloaded_bytes, step.offloaded_pinned_bytes) == _packed_by_torch(train, cell.model_config())


def test_on_cuda_each_node_gets_a_device_copy_while_its_backward_runs():
    """x (requires grad) * W: mul saves both; under save_on_cpu the device copies of the saved tensors are
    freed (nothing else holds them) and come back for the node's backward only (torch/autograd/graph.py
    unpack_from_cpu: ``tensor.to(device)``)."""
    peaks = {}
    for device in ("cuda", "cpu"):
        sim = Sim()
        t = Tape(sim, device=device)
        t.packing = True
        w = Param((1024,), "bf16", True)
        leaf = Fake((1024,), "bf16", t.new((1024,), "bf16").st, None)
        x = Fake(leaf.shape, leaf.dtype, leaf.st, Node("leaf", [], lambda *_: [], 1), 0)
        y = ops.mul(t, x, w)
        del x, leaf
        t.packing = False
        assert sim.host == 2 * 2048 and sim.host_pinned == 2 * 2048
        # on CUDA only y is on the device; on CPU the two host copies are the run's memory too
        assert sim.live == (2048 if device == "cuda" else 3 * 2048)
        backward(t, y)
        peaks[device] = sim.peaks["backward"].live_bytes
        assert sim.host == 0
    # CUDA: y, the incoming gradient, the two device copies, the two input gradients; CPU: the two host copies
    # (no copy at unpack: ``.to("cpu")`` returns them) in place of the device copies
    assert peaks == {"cuda": 6 * 2048, "cpu": 6 * 2048}


def test_the_offloaded_device_step_is_smaller_and_host_ram_holds_the_copies():
    model = load_model("llama-3.2-1b")
    cluster = Cluster(gpu=catalog.gpu("h100-sxm-80gb"), num_gpus=8)
    plain = TrainSpec(seq_len=4096)
    off = dataclasses.replace(plain, activation_offload=True)
    a, b = estimate(model, plain, cluster), estimate(model, off, cluster)
    assert b.per_gpu.activations_bytes < a.per_gpu.activations_bytes // 10
    step = simulate_step(model, off)
    # every saved tensor is copied: at least the activations kept without offloading (a tensor saved twice is
    # copied twice, and the saved weights too)
    assert step.offloaded_bytes > simulate_step(model, plain).forward_end_saved_bytes
    # no DeepSpeed offload: host RAM is only the copies, each pinned buffer rounded up to a power of two
    assert b.cpu_bytes_per_node == b.cpu_pinned_bytes_per_node == 8 * step.offloaded_pinned_bytes
    assert step.offloaded_pinned_bytes >= step.offloaded_bytes
    assert any("save_on_cpu" in n for n in b.notes)


def test_qlora_and_moe_are_refused_in_one_sentence():
    with pytest.raises(PlannerError, match="not modelled with QLoRA"):
        TrainSpec(method=Method.QLORA, activation_offload=True)
    with pytest.raises(PlannerError, match="mixture-of-experts") as info:
        simulate_step(load_model("mixtral-8x7b-v0.1"), TrainSpec(seq_len=128, activation_offload=True))
    assert "\n" not in str(info.value)


def test_the_train_block_round_trips():
    train = TrainSpec(method=Method.LORA, lora=LoraSpec(), precision=Precision.BF16_MIXED,
                      parallelism=Parallelism.from_zero(2), activation_offload=True)
    d = train_spec_to_dict(train)
    assert d["activation_offload"] is True
    assert train_spec_from_dict(json.loads(json.dumps(d))) == train
    del d["activation_offload"]  # a block from before the field: off
    assert train_spec_from_dict(d).activation_offload is False


def test_the_cli_takes_the_flag_into_the_train_block(cli):
    on = cli("estimate", "-m", "llama-3.2-1b", "--method", "full", "--zero", "0", "--offload", "none",
             "--seq-len", "1024", "--activation-offload", "--json")
    assert on.returncode == 0, on.stderr
    off = cli("estimate", "-m", "llama-3.2-1b", "--method", "full", "--zero", "0", "--offload", "none",
              "--seq-len", "1024", "--json")
    on, off = json.loads(on.stdout), json.loads(off.stdout)
    assert on["train"]["activation_offload"] is True and off["train"]["activation_offload"] is False
    assert on["rows"][0]["cpu_bytes_per_node"] > 0 == off["rows"][0]["cpu_bytes_per_node"]
    bad = cli("estimate", "-m", "llama-3.2-1b", "--method", "qlora", "--activation-offload")
    assert bad.returncode == 1 and "QLoRA" in bad.stderr


def test_the_bundle_wraps_the_loss_in_save_on_cpu():
    import torch

    from planner.emit import render_bundle
    from tests.bundle_helpers import tiny_plan

    model, train, cluster, est, gbs = tiny_plan()
    train = dataclasses.replace(train, activation_offload=True)
    files = render_bundle(model, train, cluster, estimate(model, train, cluster), global_batch_size=gbs,
                          dataset="data.jsonl")
    script = files["train.py"]
    assert "save_on_cpu(pin_memory=True)" in script and "--activation-offload" in files["PLAN.md"]
    namespace: dict = {"__file__": "/nonexistent/bundle/train.py", "__name__": "train"}
    exec(compile(script.split("\nif __name__ ==")[0], "train.py", "exec"), namespace)  # noqa: S102
    from transformers import Trainer

    calls = []

    class Probe(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            calls.append(torch._C._autograd._top_saved_tensors_default_hooks(False) is not None)
            return torch.zeros(())

    wrapped = namespace["offloading"](Probe, True)
    assert namespace["offloading"](Probe, False) is Probe
    wrapped.compute_loss(object.__new__(wrapped), None, {})
    assert calls == [True]
