"""GPU memory plan of an RLSR run (train.py) for Qwen2.5 / Qwen3 models on 1 and 8 GPUs, as one JSON line.

    python bench/memory_plan.py                     # the JSON line
    python bench/memory_plan.py --markdown          # also the table of docs/multi-gpu.md (stdout, before the JSON)
    python bench/memory_plan.py --rollouts 128 --new-tokens 2048 --micro-batch 4 --gpu-gib 141

Computed by the project's memory plan (memory.py, whose docstring has every formula) from each model's
config.json numbers (memory.MODELS, copied from the public Hugging Face files), not measured. GiB = 2**30
bytes. "fits" means peak <= 90% of --gpu-gib (room for the CUDA context, allocator fragmentation and the
temporaries not modelled here).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from memory import GiB, MARGIN, MODELS, count_params, layer_act_bytes, plan  # noqa: E402,F401  (tests use them from here)
from memory import model_config as config  # noqa: E402
from model import QwenConfig  # noqa: E402,F401


def gib(x) -> float:
    return round(x / GiB, 2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rollouts", type=int, default=64, help="rollouts per GPU: prompts per rank x G (8 x 8)")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=1024, help="generated tokens per rollout (--max-new-tokens)")
    p.add_argument("--micro-batch", type=int, default=8, help="rows per forward/backward (--micro-batch-size)")
    p.add_argument("--gpu-gib", type=float, default=80, help="memory of one GPU, GiB")
    p.add_argument("--markdown", action="store_true", help="also print the markdown table of docs/multi-gpu.md")
    args = p.parse_args(argv)
    budget = MARGIN * args.gpu_gib * GiB
    rows = []
    for name in MODELS:
        cfg = config(name)
        for gpus in (1, 8):
            variants = {"fused_ckpt": (True, True), "fused": (True, False), "naive": (False, False)}
            parts = {k: plan(cfg, gpus, args.rollouts, args.prompt_len, args.new_tokens, args.micro_batch, *v)
                     for k, v in variants.items()}
            base = parts["fused_ckpt"]
            rows.append(dict(model=name, gpus=gpus, params=base["params"],
                             **{k: gib(base[k]) for k in ("weights", "master", "grads", "adam", "reference",
                                                          "kv_cache")},
                             act_gib={k: gib(v["act"]) for k, v in parts.items()},
                             head_gib={k: gib(v["head"]) for k, v in parts.items()},
                             peak_gib={k: gib(v["peak"]) for k, v in parts.items()},
                             fits={k: v["peak"] <= budget for k, v in parts.items()}))
    if args.markdown:
        print(markdown(rows, args))
    print(json.dumps(dict(bench="memory_plan", rollouts_per_gpu=args.rollouts, prompt_len=args.prompt_len,
                          new_tokens=args.new_tokens, micro_batch=args.micro_batch, gpu_gib=args.gpu_gib,
                          fits_below_gib=round(budget / GiB, 1), rows=rows)))
    return rows


def markdown(rows, args) -> str:
    head = ("| model | GPUs | params | bf16 weights | fp32 master | grads | Adam m+v | reference | KV cache "
            "| act: ckpt / none | head: fused / naive | peak: fused+ckpt / fused / naive |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        def peak(k):
            return f"{r['peak_gib'][k]:.1f}" + ("" if r["fits"][k] else " ✗")
        lines.append(f"| {r['model']} | {r['gpus']} | {r['params'] / 1e9:.2f}B | {r['weights']:.2f} | "
                     f"{r['master']:.2f} | {r['grads']:.2f} | {r['adam']:.2f} | {r['reference']:.2f} | "
                     f"{r['kv_cache']:.2f} | {r['act_gib']['fused_ckpt']:.2f} / {r['act_gib']['fused']:.2f} | "
                     f"{r['head_gib']['fused']:.2f} / {r['head_gib']['naive']:.2f} | "
                     f"{peak('fused_ckpt')} / {peak('fused')} / {peak('naive')} |")
    lines.append(f"\nGiB per GPU; {args.rollouts} rollouts per GPU of {args.prompt_len} + {args.new_tokens} tokens, "
                 f"micro-batch {args.micro_batch} rows; ✗: over {MARGIN * args.gpu_gib:.0f} GiB ({MARGIN:.0%} of "
                 f"{args.gpu_gib:g}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
