"""memory.py: the micro-batch chosen to fit a GPU (at real Qwen2.5 shapes), its error when nothing fits,
the CUDA wrapper's budget, the run-level call, and the fp32 activation formula against what autograd saves."""

import dataclasses

import pytest
import torch

import memory
from config import TrainConfig, UsageError
from memory import GiB, MARGIN, MemoryPlanError, fit_micro_batch, model_config, plan
from model import QwenConfig
from test_memory_plan import saved_bytes

# train.py's defaults (8 prompts x G = 8, 256 new tokens) with a 128-token prompt, 1 GPU, bf16, reference resident
ROWS, PROMPT, NEW = 64, 128, 256


def peak(cfg, micro):
    return plan(cfg, 1, ROWS, PROMPT, NEW, micro, fused=True, grad_ckpt=False)["peak"]


@pytest.mark.parametrize("name", ["Qwen2.5-0.5B", "Qwen2.5-1.5B"])
def test_the_fewest_passes_that_fit_split_evenly(name):
    """The chosen micro-batch's plan fits; one pass fewer does not fit; the rows are split evenly over the
    passes; the peak returned is the plan's. Monotone in the memory."""
    cfg = model_config(name)
    chosen = []
    for gib in (20, 24, 32, 40, 48, 64, 80, 96, 141):
        budget = gib * GiB
        try:
            micro, planned = fit_micro_batch(cfg, ROWS, PROMPT, NEW, budget)
        except MemoryPlanError:
            assert peak(cfg, 1) > MARGIN * budget
            chosen.append(0)
            continue
        passes = -(-ROWS // micro)
        assert planned == int(peak(cfg, micro)) <= MARGIN * budget
        assert micro == -(-ROWS // passes)  # even: no pass shorter than the others by more than a row
        if passes > 1:  # one pass fewer means ceil(ROWS / (passes - 1)) rows each: over the limit
            assert peak(cfg, -(-ROWS // (passes - 1))) > MARGIN * budget
        chosen.append(micro)
    assert chosen == sorted(chosen) and chosen[-1] == ROWS


def test_real_shapes_at_80_and_24_gib():
    """Qwen2.5-1.5B's whole 64-row minibatch plans 109 GiB (76 GiB of it activations): on 80 GB three
    passes of 22 rows; with --grad-ckpt layer all 64 rows at once. Qwen2.5-0.5B: 64 rows on 80 GB, 16 on
    24 GB. 1.5B on 24 GB: its fp32 weights, gradients and AdamW states alone (16 bytes x 1.54B) do not fit."""
    small, large = model_config("Qwen2.5-0.5B"), model_config("Qwen2.5-1.5B")
    whole = plan(large, 1, ROWS, PROMPT, NEW, ROWS, fused=True, grad_ckpt=False)
    assert round(whole["act"] / GiB) == 77 and round(whole["peak"] / GiB) == 110
    assert fit_micro_batch(large, ROWS, PROMPT, NEW, 80 * GiB)[0] == 22
    assert fit_micro_batch(large, ROWS, PROMPT, NEW, 80 * GiB, grad_ckpt=True)[0] == 64
    assert fit_micro_batch(small, ROWS, PROMPT, NEW, 80 * GiB)[0] == 64
    assert fit_micro_batch(small, ROWS, PROMPT, NEW, 24 * GiB)[0] == 16
    with pytest.raises(MemoryPlanError):
        fit_micro_batch(large, ROWS, PROMPT, NEW, 24 * GiB, grad_ckpt=True)


def test_too_small_a_device_is_one_line():
    with pytest.raises(MemoryPlanError) as e:
        fit_micro_batch(model_config("Qwen2.5-1.5B"), ROWS, PROMPT, NEW, 24 * GiB)
    msg = str(e.value)
    assert isinstance(e.value, UsageError)  # train.py prints a UsageError as "error: <one line>"
    assert "\n" not in msg and "1 row" in msg and "24.0 GiB" in msg and "torchrun" in msg


def test_cuda_budget_is_free_memory_plus_what_torch_holds(monkeypatch):
    """The models already loaded are in the plan: the allocator's reserved bytes count as room, with the free ones."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (50 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * GiB)
    cfg = model_config("Qwen2.5-1.5B")
    assert memory.cuda_micro_batch(cfg, ROWS, PROMPT, NEW, "cuda:0") == fit_micro_batch(cfg, ROWS, PROMPT, NEW,
                                                                                        80 * GiB)


def test_run_micro_batch_reads_the_run(monkeypatch):
    """train.py's call: rows per rank from the run's settings, the reference as it is placed."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    cfg = model_config("Qwen2.5-1.5B")
    run = TrainConfig(prompt_style="full")
    assert memory.run_micro_batch(run, cfg, 1, PROMPT, "cuda:0", torch.bfloat16) == (22, fit_micro_batch(
        cfg, ROWS, PROMPT, NEW, 80 * GiB)[1])
    seen = []
    monkeypatch.setattr(memory, "fit_micro_batch", lambda *a, **kw: seen.append((a, kw)) or (1, 0))
    memory.run_micro_batch(dataclasses.replace(run, grad_ckpt="layer", ref_placement="cpu", minibatch_size=32),
                           cfg, 2, PROMPT, "cuda:0", torch.float32)
    (args, kw), = seen
    assert args[1:4] == (16, PROMPT, NEW) and kw == dict(rollouts=32, gpus=2, dtype=torch.float32, grad_ckpt=True,
                                                         ref="cpu")
    seen.clear()
    memory.run_micro_batch(dataclasses.replace(run, kl_coef=0.0), cfg, 1, PROMPT, "cuda:0", torch.bfloat16)
    assert seen[0][1]["ref"] is None


def test_fp32_and_reference_placements():
    cfg = model_config("Qwen2.5-0.5B")
    P = memory.count_params(cfg)
    bf16 = plan(cfg, 1, ROWS, PROMPT, NEW, 8, fused=True, grad_ckpt=False)
    fp32 = plan(cfg, 1, ROWS, PROMPT, NEW, 8, fused=True, grad_ckpt=False, dtype=torch.float32)
    assert fp32["weights"] == 0 and fp32["reference"] == 4 * P and fp32["kv_cache"] == 2 * bf16["kv_cache"]
    assert fp32["peak_update"] == 20 * P + fp32["act"] + fp32["head"]  # no sampler copy, no autocast casts
    cpu = plan(cfg, 1, ROWS, PROMPT, NEW, 8, fused=True, grad_ckpt=False, ref="cpu")
    assert cpu["reference"] == 0 and cpu["peak_update"] == bf16["peak_update"] - 2 * P
    assert cpu["peak_reference"] == 16 * P + 2 * P + 2 * P + memory.layer_act_bytes(cfg, 8 * (PROMPT + NEW))
    assert plan(cfg, 1, ROWS, PROMPT, NEW, 8, fused=True, grad_ckpt=False, ref=None)["reference"] == 0


def test_fp32_activation_bytes_match_what_autograd_saves():
    """One fp32 decoder layer's saved tensors (2 layers minus 1) against the fp32 per-layer formula."""
    for name in ("Qwen2.5-0.5B", "Qwen3-0.6B"):
        over = {**memory.MODELS[name], "vocab_size": 512}
        one, two = (QwenConfig(**{**over, "num_hidden_layers": n}) for n in (1, 2))
        measured = saved_bytes(two) - saved_bytes(one)
        planned = memory.layer_act_bytes(one, 2 * 128, torch.float32)
        assert abs(measured / planned - 1) < 0.03, (name, measured, planned)
