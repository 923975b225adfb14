"""Decode speed: sample.generate vs transformers' generate on identical weights (greedy, CPU).

    python bench/decode.py            # prints one JSON line
    python bench/decode.py --compile  # also generate(compile=True): compile time, tok/s, graphs compiled

Configs: (a) tiny — d=256, 4 layers, vocab 2048; (b) Qwen2.5-0.5B-shaped layers — d=896,
14 heads / 2 kv heads, mlp 4864, vocab 151,936, tied — with 4 layers. Batch 1 and 16, 128 new
tokens from 32-token prompts, best of `--repeats` runs each. For (b) it also reports the
achieved GFLOP/s of decode against a plain [B, d] x [d, V] matmul measured in the same process.
With --compile (inductor; CUDA graphs on CUDA): the first compiled call's seconds (it compiles the
shape bucket), the compiled tok/s after it, greedy tokens equal to eager, and the graphs compiled.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model import Qwen  # noqa: E402
from sample import generate  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=2048, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen05b_4L": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=4,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}


def best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def decode_flops_per_token(cfg, context):
    """Matmul FLOPs to produce one token: 2 x (non-embedding weights + lm_head) + attention scores."""
    d, hd = cfg["hidden_size"], cfg["hidden_size"] // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    layer = d * d * 2 + d * kv * 2 + 3 * d * cfg["intermediate_size"]
    attn = 2 * cfg["num_attention_heads"] * hd * context  # q.k and p.v over the context
    return 2 * (cfg["num_hidden_layers"] * layer + d * cfg["vocab_size"]) + 2 * cfg["num_hidden_layers"] * attn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--compile", action="store_true", help="also time generate(compile=True)")
    args = ap.parse_args()
    import transformers
    transformers.logging.set_verbosity_error()

    torch.manual_seed(0)
    result = {"new_tokens": args.new_tokens, "prompt_len": args.prompt_len, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "transformers": transformers.__version__}
    for name, cfg in CONFIGS.items():
        hf_cfg = transformers.Qwen2Config(**cfg, max_position_embeddings=1024)
        hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            ours = Qwen.from_pretrained(d)
        for B in [int(b) for b in args.batches.split(",")]:
            prompts = torch.randint(0, cfg["vocab_size"], (B, args.prompt_len))

            def run_ours(compile=False):
                return generate(ours, prompts.tolist(), max_new_tokens=args.new_tokens, temperature=0,
                                compile=compile)

            def run_hf():
                with torch.no_grad():
                    return hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                       max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                       eos_token_id=None, pad_token_id=0)

            eager = run_ours()
            same = torch.equal(eager.tokens, run_hf()[:, args.prompt_len:])  # also warms up both
            t_ours, t_hf = best_time(run_ours, args.repeats), best_time(run_hf, args.repeats)
            tok = B * args.new_tokens
            key = f"{name}_b{B}"
            result[f"{key}_ours_tok_s"] = round(tok / t_ours, 1)
            result[f"{key}_hf_tok_s"] = round(tok / t_hf, 1)
            result[f"{key}_speedup"] = round(t_hf / t_ours, 2)
            result[f"{key}_same_tokens"] = same
            if args.compile:
                from torch._dynamo.utils import counters
                graphs = counters["stats"]["unique_graphs"]
                t0 = time.perf_counter()
                compiled = run_ours(compile=True)
                result[f"{key}_compile_first_call_s"] = round(time.perf_counter() - t0, 1)
                t_comp = best_time(lambda: run_ours(compile=True), args.repeats)
                result[f"{key}_compiled_tok_s"] = round(tok / t_comp, 1)
                result[f"{key}_compiled_same_tokens"] = torch.equal(compiled.tokens, eager.tokens)
                result[f"{key}_compiled_graphs"] = counters["stats"]["unique_graphs"] - graphs
            if name == "qwen05b_4L":
                flops = decode_flops_per_token(cfg, args.prompt_len + args.new_tokens // 2) * tok
                x, w = torch.randn(B, cfg["hidden_size"]), torch.randn(cfg["vocab_size"], cfg["hidden_size"])
                mm = best_time(lambda: [x @ w.T for _ in range(10)], 3) / 10
                result[f"{key}_decode_gflops"] = round(flops / t_ours / 1e9, 1)
                result[f"{key}_matmul_gflops"] = round(2 * B * cfg["hidden_size"] * cfg["vocab_size"] / mm / 1e9, 1)
                result[f"{key}_fraction_of_matmul"] = round(
                    result[f"{key}_decode_gflops"] / result[f"{key}_matmul_gflops"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
