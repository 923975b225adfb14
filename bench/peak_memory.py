"""Measured peak memory of one PPO update against the memory plan (memory.py), on the CPU, as one JSON line.

    python bench/peak_memory.py                                   # three shapes: ~2 min of CPU time
    python bench/peak_memory.py --shapes 1:151936:bf16:4x64+192   # layers:vocab:dtype:ROWSxPROMPT+NEW, comma-separated

Each shape runs in a fresh process: a random Qwen2.5-0.5B-wide model (d 896, 14 / 2 heads, MLP 4864) with
few layers, laid out as train.py does on one GPU -- fp32 master weights under fused AdamW, a bf16 sampler
copy (bf16 runs) and a reference in the compute dtype -- runs ppo.ppo_update once on 1 row (so AdamW's
states and the gradients exist, as from the second step on), then once on ROWS x (PROMPT + NEW) tokens in
one micro-batch (the reference pass, the training forward, backward, AdamW).

Measured: the peak of the bytes held by live tensors, from torch.profiler's allocation and free events
(profile_memory) summed in order from before the models exist -- the CPU's counterpart of CUDA's
max_memory_allocated, which the plan models; the process's peak RSS over its size after importing torch
is given as well (it also holds allocator slack and the interpreter). Planned: memory.plan's update peak
for the same shape (1 GPU, reference resident, fused log-probs at ppo.CHUNK_BYTES, the CPU's block size).
"""

import argparse
import copy
import dataclasses
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import TrainConfig  # noqa: E402
from memory import GiB, MODELS, plan  # noqa: E402
from model import Qwen, QwenConfig  # noqa: E402
from ppo import CHUNK_BYTES, ppo_update  # noqa: E402

DEFAULT_SHAPES = "1:151936:bf16:4x64+192,2:16384:bf16:8x64+448,2:16384:fp32:16x32+224"


def parse_shape(text: str) -> dict:
    """"layers:vocab:dtype:ROWSxPROMPT+NEW" -> its fields."""
    layers, vocab, dtype, rest = text.split(":")
    rows, lengths = rest.split("x")
    prompt, new = lengths.split("+")
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype must be bf16 or fp32, got {dtype!r}")
    return dict(layers=int(layers), vocab=int(vocab), dtype=dtype, rows=int(rows), prompt=int(prompt), new=int(new))


def model_config(shape: dict) -> QwenConfig:
    return QwenConfig(**{**MODELS["Qwen2.5-0.5B"], "num_hidden_layers": shape["layers"], "vocab_size": shape["vocab"]})


def rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of this process, from /proc."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def ppo_batch(vocab: int, rows: int, prompt: int, new: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(rows, prompt + new)
    mask[:, prompt:] = 1
    return dict(input_ids=torch.randint(0, vocab, (rows, prompt + new), generator=g), response_mask=mask,
                advantages=torch.randn(rows, generator=g))


def measure(shape: dict, grad_ckpt: bool = False) -> dict:
    """Peak live tensor bytes of the second PPO update at this shape (runs in the calling process)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    rss_base = rss_bytes("VmRSS")
    compute = torch.bfloat16 if shape["dtype"] == "bf16" else torch.float32
    run = dataclasses.replace(TrainConfig(), micro_batch_size=shape["rows"])  # one micro-batch, kl_coef > 0
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.manual_seed(0)
        policy = Qwen(model_config(shape))  # the fp32 master weights
        policy.grad_ckpt = grad_ckpt
        sampler = copy.deepcopy(policy).to(torch.bfloat16) if compute == torch.bfloat16 else policy  # noqa: F841
        reference = copy.deepcopy(policy).to(compute).requires_grad_(False)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6, betas=(0.9, 0.99), fused=True)
        ppo_update(policy, optimizer, ppo_batch(shape["vocab"], 1, 4, 4, seed=1), run, ref_model=reference,
                   compute_dtype=compute)
        batch = ppo_batch(shape["vocab"], shape["rows"], shape["prompt"], shape["new"], seed=2)
        with record_function("measured_update"):
            ppo_update(policy, optimizer, batch, run, ref_model=reference, compute_dtype=compute)
    events = prof.profiler.kineto_results.events()
    window = next(e for e in events if e.name() == "measured_update")
    live = peak = 0
    for e in sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        live += e.nbytes()
        if window.start_ns() <= e.start_ns() <= window.end_ns():
            peak = max(peak, live)
    return dict(measured=peak, rss_peak=rss_bytes("VmHWM") - rss_base)


def planned(shape: dict, grad_ckpt: bool = False) -> dict:
    return plan(model_config(shape), gpus=1, rollouts=shape["rows"], prompt_len=shape["prompt"],
                new_tokens=shape["new"], micro_batch=shape["rows"], fused=True, grad_ckpt=grad_ckpt, ref="shard",
                dtype=shape["dtype"], chunk_bytes=CHUNK_BYTES)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated layers:vocab:dtype:ROWSxPROMPT+NEW")
    p.add_argument("--grad-ckpt", action="store_true", help="--grad-ckpt layer in the model and the plan")
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure this one shape
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(parse_shape(args.one), args.grad_ckpt)))
        return
    results = []
    for text in args.shapes.split(","):
        shape = parse_shape(text)
        cmd = [sys.executable, os.path.abspath(__file__), "--one", text] + (["--grad-ckpt"] if args.grad_ckpt else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"error: shape {text} failed:\n{proc.stderr[-2000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        parts = planned(shape, args.grad_ckpt)
        results.append(dict(shape=text, **shape, tokens=shape["rows"] * (shape["prompt"] + shape["new"]),
                            measured_gib=round(got["measured"] / GiB, 3),
                            planned_gib=round(parts["peak_update"] / GiB, 3),
                            ratio=round(got["measured"] / parts["peak_update"], 3),
                            rss_peak_gib=round(got["rss_peak"] / GiB, 3),
                            plan_parts_gib={k: round(parts[k] / GiB, 3) for k in
                                            ("master", "grads", "adam", "reference", "weights", "act", "head")}))
    ratios = [r["ratio"] for r in results]
    print(json.dumps(dict(bench="peak_memory", device="cpu", torch=torch.__version__, grad_ckpt=args.grad_ckpt,
                          ratio_min=min(ratios), ratio_max=max(ratios), shapes=results)))
    return results


if __name__ == "__main__":
    main()
