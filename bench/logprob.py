"""Naive vs fused token log-probs: peak extra memory and time, as one JSON line.

    python bench/logprob.py                      # CPU, N=4096 d=896 V=151936 fp32 (Qwen2.5-0.5B's head)
    python bench/logprob.py --device cuda --dtype bfloat16 --N 16384

Each (variant, mode) runs in its own process: the peak is that process's high-water mark over its
resident size just before the call (CPU: /proc/self/status VmHWM after resetting it; CUDA:
max_memory_allocated), so one variant's freed-but-cached memory can't hide in another's figure.
Modes: "nograd" (forward under torch.no_grad) and "fwdbwd" (forward + backward to hidden and weight).
Memory is the first run's; time the best of --repeats runs. extra_mb is MiB.
bf16_grad_error: bf16 gradients over 20 backward chunks against fp64, max |grad - ref| / max |ref|
(Triton on CUDA: token chunks; PyTorch: vocab chunks, its token chunks being 4096 rows), next to
the same figure for the fp64 gradient rounded once to bf16.
Goals: fwdbwd extra memory <= 1/10 of naive's at <= 1.3x its time; nograd <= 1/100.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak():
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args):
    import torch
    from ppo import naive_token_logprobs, token_logprobs

    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    fn = naive_token_logprobs if args.variant == "naive" else token_logprobs
    grad = args.mode == "fwdbwd"
    g = torch.Generator().manual_seed(0)
    h = torch.randn(args.N, args.d, generator=g).to(dev, dtype).requires_grad_(grad)
    W = (torch.randn(args.V, args.d, generator=g) * args.d ** -0.5).to(dev, dtype).requires_grad_(grad)
    t = torch.randint(0, args.V, (args.N,), generator=g).to(dev)
    w = torch.randn(args.N, generator=g).to(dev)  # weights of the per-token losses

    def run(n):
        with torch.set_grad_enabled(grad):
            logp = fn(h[:n], W, t[:n])
            if grad:
                (logp * w[:n]).sum().backward()
        return logp.detach()

    run(min(args.N, 256))  # warm-up: thread pools, kernels compiled, allocator primed
    h.grad = W.grad = None
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        exact = _reset_peak()
        base = _status_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    logp = run(args.N)
    sync()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else _status_kb("VmHWM") * 1024
    for _ in range(args.repeats - 1):  # time: the best of the repeats (a shared machine is noisy)
        h.grad = W.grad = None
        t0 = time.perf_counter()
        run(args.N)
        sync()
        seconds = min(seconds, time.perf_counter() - t0)
    out = dict(extra_mb=round((peak - base) / 2**20, 1), s=round(seconds, 3), logp_sum=float(logp.double().sum()))
    if dev.type == "cpu" and not exact:
        out["note"] = "VmHWM not resettable: extra includes earlier peaks"
    print(json.dumps(out))


def grad_error(args, chunks=20, N=1280, V=8192):
    """One JSON line: the bf16 dW and dH errors of token_logprobs over `chunks` backward chunks."""
    import torch
    import ppo

    dev = torch.device(args.device)
    backend = "triton" if dev.type == "cuda" and ppo.triton is not None else "torch"
    if backend == "triton":  # one BLOCK_N tile of rows per chunk of the [rows, V] logit gradients
        rows = ppo.TRITON_CONFIG["dlogits"][0]
        N, chunk_bytes = chunks * rows, rows * V * 2
    else:  # one token chunk of N rows; V / chunks columns per fp32 block
        chunk_bytes = N * (V // chunks) * 4
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, args.d, generator=g).to(dev, torch.bfloat16)
    W = (torch.randn(V, args.d, generator=g) * args.d ** -0.5).to(dev, torch.bfloat16)
    t = torch.randint(0, V, (N,), generator=g).to(dev)
    w = torch.randn(N, generator=g).to(dev)  # mixed-sign per-token loss weights, as PPO's
    grads = []
    for fn, dtype in ((lambda *a: ppo.token_logprobs(*a, backend=backend, chunk_bytes=chunk_bytes), torch.bfloat16),
                      (ppo.naive_token_logprobs, torch.float64)):
        hh, WW = (x.to(dtype, copy=True).requires_grad_() for x in (h, W))
        logp = fn(hh, WW, t)
        (logp * w.to(logp.dtype)).sum().backward()
        grads.append(dict(dw=WW.grad, dh=hh.grad))
    got, ref = grads

    def err(x, k):
        return float((x.double() - ref[k]).abs().max() / ref[k].abs().max())

    out = dict(backend=backend, chunks=chunks, N=N, V=V, d=args.d)
    for k in ("dw", "dh"):
        out[f"{k}_err"] = err(got[k], k)
        out[f"{k}_err_one_rounding"] = err(ref[k].to(torch.bfloat16), k)
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--N", type=int, default=4096)
    p.add_argument("--d", type=int, default=896)
    p.add_argument("--V", type=int, default=151936)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per variant; the best counts")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant == "grad_error":
        return grad_error(args)
    if args.variant:
        return child(args)

    res = {}
    for mode in ("nograd", "fwdbwd"):
        for variant in ("naive", "fused"):
            cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--mode", mode,
                   "--N", str(args.N), "--d", str(args.d), "--V", str(args.V), "--device", args.device,
                   "--dtype", args.dtype, "--repeats", str(args.repeats)]
            # a fixed mmap threshold: freed big blocks go back to the OS, so the warm-up's don't pad RSS
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"{variant}/{mode} failed:\n{out.stderr[-2000:]}")
            res[f"{variant}_{mode}"] = json.loads(out.stdout.strip().splitlines()[-1])
    cmd = [sys.executable, os.path.abspath(__file__), "--variant", "grad_error", "--d", str(args.d),
           "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"grad_error failed:\n{out.stderr[-2000:]}")
    grad_err = json.loads(out.stdout.strip().splitlines()[-1])

    import torch
    ratios = {f"{m}_{k}": round(res[f"fused_{m}"][q] / max(res[f"naive_{m}"][q], 1e-9), 4)
              for m in ("nograd", "fwdbwd") for k, q in (("mem", "extra_mb"), ("time", "s"))}
    goals = dict(fwdbwd_mem=ratios["fwdbwd_mem"] <= 0.1, fwdbwd_time=ratios["fwdbwd_time"] <= 1.3,
                 nograd_mem=ratios["nograd_mem"] <= 0.01)
    agree = all(abs(res[f"fused_{m}"]["logp_sum"] - res[f"naive_{m}"]["logp_sum"])
                <= 1e-4 * abs(res[f"naive_{m}"]["logp_sum"]) for m in ("nograd", "fwdbwd"))
    print(json.dumps(dict(bench="logprob", N=args.N, d=args.d, V=args.V, device=args.device, dtype=args.dtype,
                          threads=torch.get_num_threads(), repeats=args.repeats, **res, ratios=ratios,
                          goals_met=goals,
                          values_agree=agree, bf16_grad_error=grad_err)))


if __name__ == "__main__":
    main()
