"""memory.py — the GPU memory plan: bytes per GPU of an RLSR run (train.py), from the model's config.

    parts = plan(cfg, gpus=1, rollouts=64, prompt_len=128, new_tokens=256, micro_batch=8, fused=True,
                 grad_ckpt=False)                                  # parts["peak"], in bytes
    micro, peak = fit_micro_batch(cfg, rows=64, prompt_len=128, new_tokens=256, budget=80 * 2**30)
    micro, peak = run_micro_batch(train_cfg, model.config, world, prompt_len, device, dtype)  # on CUDA

Computed, not measured (bench/memory_plan.py prints it for the public Qwen models; bench/peak_memory.py
and bench/gpu_check.py compare it with measured peaks). P = parameters, n = GPUs (FSDP2 shards over all
n), b = bytes of the compute dtype (2 for bf16, 4 for fp32; master weights and optimizer are fp32):

  weights    bf16: 2P, the sampler's bf16 copy on one GPU, or under torchrun the full weights each
             rank gathers while it generates; fp32: 0 on one GPU (the policy samples), 4P gathered
  master     4P / n    fp32 master weights (the FSDP shards)
  grads      4P / n    fp32 gradients (reduced in fp32, kept until the next step's zero_grad)
  adam       8P / n    AdamW's fp32 m and v
  reference  b P / n   frozen copy for the KL (ref "shard"; "cpu": 0 resident, b P while its pass runs)
  kv_cache   R x (prompt + new) x 2 (k, v) x layers x kv_heads x head_dim x b: R rollouts per GPU
             (prompts per rank x G), the cache sample.generate allocates
  act        activations one micro-batch of M rows x (prompt + new) tokens saves for backward, per layer
             and token: under bf16 autocast 26d + 4 q_dim + 4 kv_dim + 8I + 8 head_dim + 4 heads bytes
             (+ 6 (q_dim + kv_dim) for Qwen3's q/k norms): the fp32 residual stream and norms, bf16
             inputs of each projection, q, k, v, the attention output and its logsumexp, the MLP's
             three I-wide tensors; in fp32 4 (6d + 2 q_dim + 2 kv_dim + 4I + heads + 2) bytes (+ 4 (2
             q_dim + 2 kv_dim + heads + kv_heads) for Qwen3) -- both counted from the tensors autograd
             saves (tests/test_memory_plan.py and tests/test_memory.py check them within 3%);
             --grad-ckpt layer keeps each layer's fp32 input (4d) plus one layer's worth during its recompute
  head       the log-prob pass's lm_head part for the M x new response tokens N: naive 12 N V bytes
             (fp32 logits, their log-softmax and its gradient, [N, V] each); fused (ppo.token_logprobs)
             one block of logit gradients (256 MiB on CUDA) + fp32 dW [V, d] + fp32 dh [N, d]

Peak = max(generation: weights + master + grads + adam + reference + kv_cache,
           update: master + grads + adam + reference + act + head + gathered, where gathered is, on 1
           GPU in bf16, 4P (the bf16 sampler copy, and autocast's bf16 casts of the weights, saved
           for backward), in fp32 0, and under FSDP one gathered layer (b P / layers),
           reference pass (ref "cpu" only): master + grads + adam + weights + b P + one layer's act).
"""

import math

import torch

from config import UsageError
from model import QwenConfig
from ppo import TRITON_CHUNK_BYTES

GiB = 2**30
MARGIN = 0.85  # a plan fits when its peak is <= this share of the memory: allocator slack, NCCL, untracked temporaries

# config.json numbers of the public checkpoints (Qwen/<name> on Hugging Face): plans without downloading them
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


class MemoryPlanError(UsageError):
    """The run does not fit the GPU even at micro-batch 1: one line, printed by train.py."""


def model_config(name: str) -> QwenConfig:
    """The QwenConfig of a public model in MODELS ("Qwen2.5-1.5B", ...)."""
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


def dtype_bytes(dtype) -> int:
    """2 for bf16 compute ("bf16" or torch.bfloat16), 4 for fp32."""
    if dtype in ("bf16", torch.bfloat16):
        return 2
    if dtype in ("fp32", torch.float32):
        return 4
    raise ValueError(f"dtype must be bf16 or fp32, got {dtype!r}")


def layer_act_bytes(cfg: QwenConfig, tokens: int, dtype="bf16") -> int:
    """Bytes one decoder layer saves for backward over `tokens` tokens (see the module docstring)."""
    d, I, hd, H = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_attention_heads
    KVH = cfg.num_key_value_heads
    q, kv = H * hd, KVH * hd
    qwen3 = cfg.model_type == "qwen3"
    if dtype_bytes(dtype) == 2:  # bf16 autocast
        per_token = 26 * d + 4 * q + 4 * kv + 8 * I + 8 * hd + 4 * H
        per_token += 6 * (q + kv) if qwen3 else 0  # q_norm / k_norm: fp32 inputs and their outputs
    else:
        per_token = 4 * (6 * d + 2 * q + 2 * kv + 4 * I + H + 2)
        per_token += 4 * (2 * q + 2 * kv + H + KVH) if qwen3 else 0  # q_norm / k_norm inputs, normalised, rstd
    return tokens * per_token


def plan(cfg: QwenConfig, gpus: int, rollouts: int, prompt_len: int, new_tokens: int, micro_batch: int,
         fused: bool, grad_ckpt: bool, ref=True, dtype="bf16", chunk_bytes: int = TRITON_CHUNK_BYTES) -> dict:
    """Bytes per GPU of each part, and the peak (see the module docstring).

    ref: True or "shard" (resident), "cpu" (moved in for its pass), False or None (no reference).
    dtype: the compute dtype, "bf16" / torch.bfloat16 or "fp32" / torch.float32. chunk_bytes: the fused
    log-prob's block of logit gradients (ppo.TRITON_CHUNK_BYTES on CUDA, ppo.CHUNK_BYTES elsewhere).
    """
    ref = "shard" if ref is True else ref or None
    if ref not in ("shard", "cpu", None):
        raise ValueError(f"ref must be True, 'shard', 'cpu', False or None, got {ref!r}")
    b = dtype_bytes(dtype)
    P, n, L = count_params(cfg), gpus, cfg.num_hidden_layers
    d, V = cfg.hidden_size, cfg.vocab_size
    T = prompt_len + new_tokens
    tokens, N = micro_batch * T, micro_batch * new_tokens  # the forward's tokens, the head's response tokens
    parts = dict(params=P, weights=2 * P if b == 2 else (0 if n == 1 else 4 * P), master=4 * P / n,
                 grads=4 * P / n, adam=8 * P / n, reference=b * P / n if ref == "shard" else 0,
                 kv_cache=rollouts * T * 2 * L * cfg.num_key_value_heads * cfg.head_dim * b)
    layer = layer_act_bytes(cfg, tokens, dtype)
    parts["act"] = L * 4 * tokens * d + layer if grad_ckpt else L * layer
    parts["head"] = chunk_bytes + 4 * V * d + 4 * N * d if fused else 12 * N * V
    states = parts["master"] + parts["grads"] + parts["adam"] + parts["reference"]
    if n > 1:
        gathered = b * P / L  # one FSDP layer
    else:
        gathered = 2 * parts["weights"]  # bf16: the sampler copy + autocast's casts; fp32: nothing
    parts["peak_generate"] = states + parts["weights"] + parts["kv_cache"]
    parts["peak_update"] = states + gathered + parts["act"] + parts["head"]
    peaks = [parts["peak_generate"], parts["peak_update"]]
    if ref == "cpu":  # its pass: the whole copy on the GPU, a no-grad forward
        parts["peak_reference"] = states + parts["weights"] + b * P + layer
        peaks.append(parts["peak_reference"])
    parts["peak"] = max(peaks)
    return parts


def fit_micro_batch(cfg: QwenConfig, rows: int, prompt_len: int, new_tokens: int, budget: float, *,
                    rollouts: int | None = None, gpus: int = 1, dtype="bf16", grad_ckpt: bool = False,
                    ref="shard", fused: bool = True, margin: float = MARGIN) -> tuple[int, int]:
    """The micro-batch for `rows` rows per optimizer step (this rank's minibatch) whose planned peak fits
    margin x budget bytes -> (micro_batch, its planned peak in bytes).

    The fewest forward/backward passes that fit, and the rows split evenly over them: with M the largest
    micro-batch that fits, ceil(rows / ceil(rows / M)) (64 rows, M = 30: 22, three passes of <= 22 rows).
    rollouts: rows of the generation phase's KV cache (default rows). Raises MemoryPlanError (one line)
    when even 1 row does not fit.
    """
    limit = margin * budget

    def peak(m):
        return plan(cfg, gpus, rollouts or rows, prompt_len, new_tokens, m, fused, grad_ckpt, ref, dtype)["peak"]

    if peak(1) > limit:
        parts = plan(cfg, gpus, rollouts or rows, prompt_len, new_tokens, 1, fused, grad_ckpt, ref, dtype)
        phase = max(("generate", "update", "reference"), key=lambda k: parts.get(f"peak_{k}", 0))
        states = sum(parts[k] for k in ("master", "grads", "adam", "reference"))
        raise MemoryPlanError(
            f"the run does not fit the GPU: at 1 row per micro-batch the memory plan's {phase} peak is "
            f"{parts['peak'] / GiB:.1f} GiB per GPU ({states / GiB:.1f} GiB of fp32 weights, gradients"
            f"{', AdamW and reference' if parts['reference'] else ' and AdamW'} alone), over {margin:.0%} of the {budget / GiB:.1f} GiB this process can use; "
            f"more GPUs (torchrun) shard the states, --ref-placement cpu, --grad-ckpt layer and fewer "
            f"--max-new-tokens cut the rest")
    lo, hi = 1, rows  # peak() grows with the micro-batch: the largest that fits by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if peak(mid) <= limit else (lo, mid - 1)
    micro = -(-rows // -(-rows // lo))
    return micro, int(peak(micro))


def cuda_micro_batch(cfg: QwenConfig, rows: int, prompt_len: int, new_tokens: int, device, **settings):
    """fit_micro_batch against what this process can use on the CUDA device: its free memory plus what
    torch's allocator already holds (the models loaded so far are in the plan, so they count as room).
    -> (micro_batch, planned peak bytes); MemoryPlanError when 1 row does not fit."""
    free, _ = torch.cuda.mem_get_info(device)
    budget = free + torch.cuda.memory_reserved(device)
    return fit_micro_batch(cfg, rows, prompt_len, new_tokens, budget, **settings)


def run_micro_batch(run, model_cfg: QwenConfig, world: int, prompt_len: int, device, dtype) -> tuple[int, int]:
    """train.py's micro-batch on CUDA when --micro-batch-size is 0: run is its TrainConfig, prompt_len the
    longest prompt expected (tokens), dtype the compute dtype. -> (micro_batch, planned peak bytes)."""
    rollouts = run.prompts_per_step // world * run.group_size  # this rank's rollouts per step
    proposals = math.ceil(run.propose_n / world) if run.train_proposer else 0  # --train-proposer rows
    rows = run.minibatch_size // world or rollouts + proposals
    has_reference = run.kl_coef > 0 or run.judge == "frozen"
    ref = None
    if has_reference and run.ref_placement == "shard":
        ref = "shard"
    elif has_reference and run.kl_coef > 0:
        ref = "cpu"
    return cuda_micro_batch(model_cfg, rows, prompt_len, run.max_new_tokens, device, rollouts=rollouts, gpus=world,
                            dtype=dtype, grad_ckpt=run.grad_ckpt == "layer", ref=ref)
