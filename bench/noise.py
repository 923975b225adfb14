"""The sampling noise's share of a decode step, hashed per-prompt noise eager vs fused (sample.Noise): one JSON line.

    python bench/noise.py                      # CPU, a small shape: 2 layers, 8 rows, Qwen's 151,936 vocabulary
    python bench/noise.py --device cuda --dtype bf16 --layers 24 --rows 64 --context 256   # Qwen2.5-0.5B on a GPU

Times, per decode step of `rows` rows at `context` cached tokens: the noise [rows, vocab] of sample.Noise's
hashed path eagerly (~19 elementwise passes) and fused (its integer part compiled into one kernel, then
eager's log), and the step without the noise (the model's one-token forward against the KV cache and
sample_next's draw). share = noise / (step + noise). The model is random, Qwen2.5-0.5B-wide (d 896, 14 / 2
heads, MLP 4864). noise_share() is the same measure for a model already built (bench/gpu_check.py).
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sample  # noqa: E402
from memory import MODELS  # noqa: E402
from model import Qwen, QwenConfig  # noqa: E402


def _seconds_per_call(fn, calls: int, device) -> float:
    """Mean wall seconds of fn() over `calls` calls, the device synchronised around them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / calls


@torch.no_grad()
def noise_share(model, rows: int = 64, context: int = 256, steps: int = 20) -> dict:
    """The hashed sampling noise's time against a decode step's, for `model` on its own device and dtype.

    rows: B*n rows decoding together (a training step's 8 prompts x 8); context: tokens already in the KV
    cache; steps: timed calls of each part. -> dict of milliseconds per step (noise_eager_ms,
    noise_fused_ms, decode_step_ms), the shares of the step they would take, the first fused call's
    seconds (it compiles), whether it did compile (fused_compiled; false: sample fell back to eager),
    and whether eager and fused noise are equal bit for bit over the timed steps.
    """
    device, vocab = model.output_weight.device, model.output_weight.shape[0]
    prompts = rows // 8 or 1
    seeds = list(range(prompts))
    n = rows // prompts
    rows = prompts * n
    eager = sample.Noise(seeds, n, vocab, steps + 1, device, hashed=True, fused=False)
    fused = sample.Noise(seeds, n, vocab, steps + 1, device, hashed=True, fused=True)
    t0 = time.perf_counter()
    first = fused.next(rows)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    compile_s = time.perf_counter() - t0
    identical = torch.equal(first, eager.next(rows))
    for _ in range(steps):  # the same steps from both: the timed calls are compared too
        identical &= torch.equal(eager.next(rows), fused.next(rows))
    eager_s = _seconds_per_call(lambda: eager.next(rows), steps, device)
    fused_s = _seconds_per_call(lambda: fused.next(rows), steps, device)

    cache = model.new_cache(rows, context + steps + 2)
    ids = torch.randint(0, vocab, (rows, context), generator=torch.Generator().manual_seed(0)).to(device)
    model(ids, cache=cache, return_hidden=True)  # prefill: the cache holds `context` tokens
    noise = fused.next(rows)
    tokens = ids[:, -1:]
    position = [context]

    def decode_step():  # one token per row and its draw, the noise already made
        logits = sample._decode_step(model, tokens, position[0], cache)
        sample.sample_next(logits, 1.0, 0, 1.0, noise=noise)
        position[0] += 1

    decode_step()  # warm-up (first-call allocations)
    step_s = _seconds_per_call(decode_step, steps, device)
    return dict(rows=rows, vocab=vocab, context=context, layers=model.config.num_hidden_layers,
                dtype=str(model.output_weight.dtype).replace("torch.", ""), device=str(device),
                noise_eager_ms=eager_s * 1e3, noise_fused_ms=fused_s * 1e3, decode_step_ms=step_s * 1e3,
                share_eager=eager_s / (step_s + eager_s), share_fused=fused_s / (step_s + fused_s),
                fused_speedup=eager_s / fused_s, fused_compile_s=compile_s,
                fused_compiled=sample._FUSED_UNIFORM.get("fn") is not sample.hashed_uniform, identical=bool(identical))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--layers", type=int, default=2, help="decoder layers (Qwen2.5-0.5B: 24)")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--rows", type=int, default=8, help="rows decoding together (a training step: 64)")
    p.add_argument("--context", type=int, default=64, help="tokens in the KV cache")
    p.add_argument("--steps", type=int, default=5, help="timed calls of each part")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = QwenConfig(**{**MODELS["Qwen2.5-0.5B"], "num_hidden_layers": args.layers, "vocab_size": args.vocab})
    model = Qwen(cfg).to(device=device, dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32).eval()
    result = noise_share(model, rows=args.rows, context=args.context, steps=args.steps)
    result = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    print(json.dumps(dict(bench="noise", torch=torch.__version__, threads=torch.get_num_threads(), **result)))
    return result


if __name__ == "__main__":
    main()
