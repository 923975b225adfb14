"""GPU memory plan of an RLSR run (train.py) for Qwen2.5 / Qwen3 models on 1 and 8 GPUs, as one JSON line.

    python bench/memory_plan.py                     # the JSON line
    python bench/memory_plan.py --markdown          # also the table of docs/multi-gpu.md (stdout, before the JSON)
    python bench/memory_plan.py --rollouts 128 --new-tokens 2048 --micro-batch 4 --gpu-gib 141

Computed from each model's config.json numbers (copied below from the public Hugging Face files),
not measured. Bytes per GPU (GiB = 2**30 bytes), P = parameters, n = GPUs (FSDP2 shards over all n):

  weights    2P        bf16 weights for generation: one process keeps a bf16 sampler copy; under
                       torchrun each rank gathers the full bf16 weights while it generates
  master     4P / n    fp32 master weights (the FSDP shards)
  grads      4P / n    fp32 gradients (reduced in fp32, kept until the next step's zero_grad)
  adam       8P / n    AdamW's fp32 m and v
  reference  2P / n    bf16 frozen copy for the KL (--ref-placement shard; cpu: 0 resident, 2P while in use)
  kv_cache   R x (prompt + new) x 2 (k, v) x layers x kv_heads x head_dim x 2 bytes: R rollouts per GPU
             (prompts per rank x G), the static cache sample.generate preallocates
  act        activations one micro-batch of M rows x (prompt + new) tokens saves for backward, per layer
             and token 26d + 4 q_dim + 4 kv_dim + 8I + 8 head_dim + 4 heads bytes (+ 6 (q_dim + kv_dim)
             for Qwen3's q/k norms): the fp32 residual stream and norms, bf16 inputs of each projection,
             q, k, v, the attention output and its logsumexp, the MLP's three I-wide tensors -- counted
             from the tensors autograd saves under bf16 autocast (tests/test_memory_plan.py checks it
             within 3% on Qwen2.5/Qwen3 shapes); --grad-ckpt layer keeps each layer's fp32 input (4d)
             plus one layer's worth during its recompute
  head       the log-prob pass's lm_head part for the M x new response tokens N: naive 12 N V bytes
             (fp32 logits, their log-softmax and its gradient, [N, V] each); fused (ppo.token_logprobs)
             one 256 MiB block of logit gradients + fp32 dW [V, d] + fp32 dh [N, d]

Peak = max(generation phase: weights + master + grads + adam + reference + kv_cache,
           update phase: master + grads + adam + reference + act + head + on 1 GPU 4P (the bf16
           sampler copy, and autocast's bf16 casts of the weights, cached for the whole update) or
           under FSDP one gathered layer).
"fits" means peak <= 90% of --gpu-gib (room for the CUDA context, allocator fragmentation and the
temporaries not modelled here).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model import QwenConfig  # noqa: E402
from ppo import TRITON_CHUNK_BYTES  # noqa: E402

# config.json numbers of the public checkpoints (Qwen/<name> on Hugging Face)
MODELS = {
    "Qwen2.5-0.5B": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Qwen2.5-1.5B": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Qwen2.5-3B": dict(model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Qwen2.5-7B": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "Qwen3-0.6B": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       tie_word_embeddings=True),
    "Qwen3-1.7B": dict(model_type="qwen3", hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       tie_word_embeddings=True),
    "Qwen3-4B": dict(model_type="qwen3", hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     tie_word_embeddings=True),
    "Qwen3-8B": dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     tie_word_embeddings=False),
}
GiB = 2**30


def config(name) -> QwenConfig:
    return QwenConfig(**MODELS[name])


def count_params(cfg: QwenConfig) -> int:
    """Exactly the parameters of model.Qwen(cfg) (tests check it against a meta-device build)."""
    d, I, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if cfg.attention_bias else 0)
    attn += 2 * hd if cfg.model_type == "qwen3" else 0  # q_norm, k_norm
    layer = attn + 3 * d * I + 2 * d  # + the MLP and the two RMSNorms
    embed = cfg.vocab_size * d
    return embed + cfg.num_hidden_layers * layer + d + (0 if cfg.tie_word_embeddings else embed)


def layer_act_bytes(cfg: QwenConfig, tokens: int) -> int:
    """Bytes one decoder layer saves for backward under bf16 autocast (see the module docstring)."""
    d, I, hd, H = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_attention_heads
    q, kv = H * hd, cfg.num_key_value_heads * hd
    per_token = 26 * d + 4 * q + 4 * kv + 8 * I + 8 * hd + 4 * H
    if cfg.model_type == "qwen3":  # q_norm / k_norm: fp32 inputs and their outputs
        per_token += 6 * (q + kv)
    return tokens * per_token


def plan(cfg: QwenConfig, gpus: int, rollouts: int, prompt_len: int, new_tokens: int, micro_batch: int,
         fused: bool, grad_ckpt: bool, ref: bool = True) -> dict:
    """Bytes per GPU of each part, and the peak (see the module docstring)."""
    P, n, L = count_params(cfg), gpus, cfg.num_hidden_layers
    d, V = cfg.hidden_size, cfg.vocab_size
    T = prompt_len + new_tokens
    tokens, N = micro_batch * T, micro_batch * new_tokens  # the forward's tokens, the head's response tokens
    b = dict(params=P, weights=2 * P, master=4 * P / n, grads=4 * P / n, adam=8 * P / n,
             reference=2 * P / n if ref else 0,
             kv_cache=rollouts * T * 2 * L * cfg.num_key_value_heads * cfg.head_dim * 2)
    if grad_ckpt:
        b["act"] = L * 4 * tokens * d + layer_act_bytes(cfg, tokens)
    else:
        b["act"] = L * layer_act_bytes(cfg, tokens)
    b["head"] = TRITON_CHUNK_BYTES + 4 * V * d + 4 * N * d if fused else 12 * N * V
    states = b["master"] + b["grads"] + b["adam"] + b["reference"]
    gathered = 2 * b["weights"] if n == 1 else b["weights"] / L  # 1 GPU: sampler + autocast casts; FSDP: a layer
    b["peak_generate"] = states + b["weights"] + b["kv_cache"]
    b["peak_update"] = states + gathered + b["act"] + b["head"]
    b["peak"] = max(b["peak_generate"], b["peak_update"])
    return b


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
    budget = 0.9 * args.gpu_gib * GiB
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
                 f"micro-batch {args.micro_batch} rows; ✗: over {0.9 * args.gpu_gib:.0f} GiB (90% of "
                 f"{args.gpu_gib:g}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
