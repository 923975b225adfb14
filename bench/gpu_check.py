"""The CUDA paths checked in one command: one JSON line per check on stdout.

    python bench/gpu_check.py                          # every check, sized for under 10 minutes on one H100/H200
    python bench/gpu_check.py --only logprob,generate  # the checks whose names start with these
    python bench/gpu_check.py --list                   # the check names

Each line is {"check": name, "ok": bool, "parity": bool, ...figures, "seconds": s}; the last line is
{"check": "summary", ...}. A parity check compares a result with a reference or asserts a placement;
a figure check measures (speed, memory, kernels, host syncs) against an expected range. Figures with
an expected range sit under "expect": {what: bool}. A check that raises gives a line with "error",
and the other checks still run. Exit code: 0 when every parity check passed and none raised, 1
otherwise, 2 without CUDA (one line saying so; nothing else runs). A missed figure expectation is
listed in the summary but does not change the exit code. Everything the code under test prints goes
to stderr, so stdout holds only the JSON lines.

What each check does and the figures to expect: docs/gpu-check.md.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [p for p in (REPO, HERE) if p not in sys.path]

import quiet_threads  # noqa: E402,F401  (first: OpenMP reads its settings when torch loads)

import argparse  # noqa: E402
import copy  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from contextlib import nullcontext, redirect_stdout  # noqa: E402

import torch  # noqa: E402

import sample  # noqa: E402

TINY = os.path.join(REPO, "assets", "tiny-countdown")

# Qwen2.5-0.5B's config.json sizes (Hugging Face Qwen/Qwen2.5-0.5B), for a model with random weights
QWEN05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
               num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
               rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)

# Fused log-probs: Qwen's vocab, an odd token count, and 512-row backward chunks (so 3 chunks)
LOGPROB_N, LOGPROB_V, LOGPROB_CHUNK_ROWS = 1531, 151936, 512
# max |error| of log-probs and entropies, and max |error| / max |reference| of the gradients, against
# an fp64 computation on the same inputs (bf16: the logit gradients are stored in bf16)
LOGPROB_TOL = {torch.float32: dict(value=1e-3, grad=1e-3), torch.bfloat16: dict(value=2e-2, grad=2e-2)}
# greedy decodes may part only where the referee's logits for the two tokens are this close (rounding)
TIE_TOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2}
PLAN_RANGE = (0.75, 1.15)  # measured peak memory / memory.plan's estimate
# one RL step on the tiny model: 16 rollouts, 2 minibatches x 2 epochs (later minibatches see updated weights)
RL_FLAGS = ["--steps", "1", "--prompts-per-step", "4", "--group-size", "4", "--ppo-epochs", "2",
            "--minibatch-size", "8", "--eval-interval", "0", "--no-progress"]

FIGURES = {}   # results a later check compares (bf16 vs fp32 RL steps and log-prob times)
_FOLDERS = {}  # model folders made once per run, removed at the end


# -----------------------------------------------------------------------------
# Output: JSON lines, running a check, the summary and the exit code


def clean(x):
    """A JSON-safe copy: floats to 4 significant digits (NaN and inf -> null), tensors to numbers or
    lists, anything else unknown (devices, dtypes) to its str."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [clean(v) for v in x]
    if isinstance(x, torch.Tensor):
        return clean(x.item() if x.numel() == 1 else x.tolist())
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return float(f"{x:.4g}") if math.isfinite(x) else None
    return str(x)


def line(result: dict) -> str:
    """One JSON line: check, ok and parity first, then the figures in the order given."""
    head = {k: result[k] for k in ("check", "ok", "parity") if k in result}
    return json.dumps(clean({**head, **result}))


def one_line(e: BaseException) -> str:
    """The exception as one line: its type and its first three non-empty lines of text."""
    text = [x.strip() for x in str(e).splitlines() if x.strip()][:3]
    return f"{type(e).__name__}: {' | '.join(text)}"[:400]


def run_check(name, fn, out=None) -> dict:
    """Run one check (fn() -> its result dict), print its line on `out` (stdout) and return it. What
    the code under test prints goes to stderr; an exception becomes a failed line of its own."""
    out = out or sys.stdout
    t0 = time.time()
    try:
        with redirect_stdout(sys.stderr):
            result = fn()
    except (Exception, SystemExit) as e:  # train.main exits with one line on bad input
        traceback.print_exc(file=sys.stderr)
        result = {"ok": False, "parity": True, "error": one_line(e)}
    result = {"check": name, **result, "seconds": round(time.time() - t0, 1)}
    print(line(result), file=out, flush=True)
    return result


def summarize(results: list, seconds: float) -> tuple:
    """-> (the summary line's dict, the exit code): 1 if a parity check failed or any check raised."""
    failed = [r["check"] for r in results if r.get("parity") and not r.get("ok")]
    errors = [r["check"] for r in results if "error" in r]
    missed = [f"{r['check']}.{k}" for r in results for k, v in (r.get("expect") or {}).items() if not v]
    skipped = [r["check"] for r in results if r.get("skipped")]
    code = 1 if failed or errors else 0
    return {"check": "summary", "ok": code == 0, "checks": len(results), "parity_failed": failed, "errors": errors,
            "expectations_missed": missed, "skipped": skipped, "seconds": round(seconds, 1)}, code


# -----------------------------------------------------------------------------
# Shared pieces: the device, timing, host-sync counting, model folders, greedy parity


def cuda() -> torch.device:
    """The indexed device `--device auto` picks (distributed.pick_device): cuda:N, never bare cuda."""
    return torch.device("cuda", torch.cuda.current_device())


def timed(fn, repeats=1):
    """(best seconds over `repeats` calls, the last result), the GPU drained around each call."""
    best, out = float("inf"), None
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak_extra(fn) -> tuple:
    """(bytes allocated at the peak of fn() above what was allocated before, fn's result)."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, out


class SyncCount:
    """`with SyncCount() as s: ...` -> s.n host syncs in the block, as torch.cuda.set_sync_debug_mode
    ("warn") reports them (one warning per synchronizing call: .item(), D2H copies, nonzero, ...)."""

    def __enter__(self):
        torch.cuda.synchronize()
        self._catch = warnings.catch_warnings(record=True)
        self._caught = self._catch.__enter__()
        warnings.simplefilter("always")  # every call, not the first per line
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)
        self.n = sum("synchronizing CUDA operation" in str(w.message) for w in self._caught)
        return False


def qwen05b_folder() -> str:
    """A Qwen2.5-0.5B-shaped model with random weights (transformers' own init), saved once per run
    as a Hugging Face folder (fp32 safetensors), loaded by model.Qwen.from_pretrained and transformers."""
    if "qwen05b" not in _FOLDERS:
        import transformers
        path = tempfile.mkdtemp(prefix="gpu_check_qwen05b_")
        _FOLDERS["qwen05b"] = path
        torch.manual_seed(0)
        with torch.device(cuda()):  # initialising 0.5B weights is seconds on the GPU, a minute on the CPU
            hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**QWEN05B))
        hf.save_pretrained(path)
        del hf
    return _FOLDERS["qwen05b"]


def train_folder() -> str:
    """The random 0.5B model with the tiny model's tokenizer, so train.py can run it (the sampled ids
    past the tokenizer's 342 decode to nothing; rollouts run to --max-new-tokens)."""
    if "train" not in _FOLDERS:
        src = qwen05b_folder()
        path = tempfile.mkdtemp(prefix="gpu_check_train_")
        _FOLDERS["train"] = path
        os.symlink(os.path.join(src, "model.safetensors"), os.path.join(path, "model.safetensors"))
        shutil.copy(os.path.join(src, "config.json"), path)
        for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(os.path.join(TINY, f), path)
    return _FOLDERS["train"]


def load_ours(path, dtype):
    from model import Qwen
    return Qwen.from_pretrained(path, dtype=dtype, device=cuda())


def load_hf(path, dtype):
    import transformers
    transformers.logging.set_verbosity_error()
    return transformers.Qwen2ForCausalLM.from_pretrained(path, dtype=dtype).to(cuda()).eval()


def random_prompts(lengths, vocab, seed=0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def ours_greedy(model, prompts, new, compile=False) -> list:
    ro = sample.generate(model, prompts, max_new_tokens=new, temperature=0.0, compile=compile)
    return ro.tokens.tolist()


def hf_greedy(hf, prompts, new) -> list:
    """transformers' greedy generate, exactly `new` tokens per row (no stop token); rows of unequal
    lengths one at a time (no padding, so no position or mask conventions to match)."""
    if len({len(p) for p in prompts}) > 1:
        return [hf_greedy(hf, [p], new)[0] for p in prompts]
    ids = torch.tensor(prompts, device=cuda())
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                          min_new_tokens=new, eos_token_id=None, pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def next_logits_of(model, hf=False):
    """ids -> the fp32 logits [V] of the token after them (a plain forward, no cache): the referee."""
    def next_logits(ids):
        with torch.no_grad():
            x = torch.tensor([ids], device=cuda())
            return (model(x).logits if hf else model(x))[0, -1].float()
    return next_logits


def greedy_parity(prompts, a, b, next_logits, tol) -> dict:
    """Two greedy decodes of the same prompts, row by row. A row passes when both are the same, or
    when at their first difference the referee's logits (next_logits(prompt + common prefix) -> [V])
    for the two tokens are within tol: a near-tie that rounding may break either way."""
    identical, firsts, margin, length_mismatch = 0, [], 0.0, 0
    for p, x, y in zip(prompts, a, b):
        t = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), None)
        if t is None:
            identical += len(x) == len(y)
            length_mismatch += len(x) != len(y)
            continue
        z = next_logits(list(p) + list(x[:t]))
        margin = max(margin, abs(float(z[x[t]]) - float(z[y[t]])))
        firsts.append(t)
    return dict(ok=margin <= tol and not length_mismatch and len(a) == len(b) == len(prompts), rows=len(prompts),
                identical=identical, first_divergence=min(firsts, default=None), tie_margin=margin, tie_tol=tol,
                length_mismatch=length_mismatch)


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far (each compile or recompile adds one)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


pow2 = sample.bucket  # the next power of two >= max(x, smallest): the compiled decode's shape buckets


# -----------------------------------------------------------------------------
# 0. The machine and the code under test


def check_env() -> dict:
    props = torch.cuda.get_device_properties(cuda())
    versions = {}
    for name in ("triton", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"ok": True, "parity": False, "gpu": props.name, "gpus": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}", "memory_gib": props.total_memory / 2**30,
            "torch": torch.__version__, "cuda": torch.version.cuda, **versions, "commit": commit,
            "sample_sync_every": sample.SYNC_EVERY}


# -----------------------------------------------------------------------------
# 1. One RL step (train.py, in this process): every model on the GPU after each phase


def rl_run(flags, hook) -> tuple:
    """train.main(flags + --out TMP) with train.py's phase hook: hook(phase, "start" | "end", models,
    data) around each phase a step times (train.Timer: generate, judge, verify, update; data: the
    rollout prompts for generate) -> (the run's train.Models, its metrics.jsonl lines)."""
    import train
    out = tempfile.mkdtemp(prefix="gpu_check_rl_")
    seen = {"models": None}

    def watch(phase, when, models, data):
        seen["models"] = models
        hook(phase, when, models, data)

    try:
        train.main([*flags, "--out", out], hook=watch)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return seen["models"], [json.loads(x) for x in f]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def model_devices(models) -> dict:
    """{role: sorted device names of its parameters and buffers} for a run's train.Models."""
    roles = dict(policy=models.policy, sampler=models.sampler, reference=models.reference,
                 judge=models.judge.model if models.judge is not None else None)
    return {role: sorted({str(t.device) for t in (*m.parameters(), *m.buffers())})
            for role, m in roles.items() if m is not None}


def misplaced(placements: dict, device) -> list:
    """'phase/role: devices' for every model not wholly on `device` (compared by name: cuda:0, not cuda)."""
    return [f"{phase}/{role}: {','.join(devs)}" for phase, roles in placements.items()
            for role, devs in roles.items() if devs != [str(device)]]


def check_rl_step(dtype: str, extra=()) -> dict:
    placements = {}

    def hook(phase, when, models, data):
        if when == "end":
            placements[phase] = model_devices(models)

    models, lines = rl_run(["--device", "auto", "--dtype", dtype, *RL_FLAGS, *extra], hook)
    placements["after_step"] = model_devices(models)
    dtypes = {role: dtype_name(getattr(models, role).output_weight.dtype) for role in ("policy", "sampler")}
    del models
    bad = misplaced(placements, cuda())
    last = lines[-1]
    FIGURES[("rl_step", dtype, tuple(extra))] = last
    keys = ("reward_mean", "loss", "approx_kl", "kl", "clip_frac", "grad_norm", "sampler_logp_err",
            "time_generate", "time_judge", "time_update", "time_step")
    return {"ok": not bad, "parity": True, "device": cuda(), "misplaced": bad,
            "phases": list(placements), "models": list(placements["after_step"]), "dtypes": dtypes,
            **{k: last.get(k) for k in keys}}


def check_rl_bf16_vs_fp32() -> dict:
    """PPO moves the policy about as far in bf16 as in fp32 (with an autocast weight cache that outlives
    optimizer.step(), later minibatches see the old weights and approx_kl collapses ~100x)."""
    a, b = FIGURES.get(("rl_step", "bf16", ())), FIGURES.get(("rl_step", "fp32", ()))
    if not a or not b:
        return {"ok": True, "parity": False, "skipped": "needs rl_step_bf16 and rl_step_fp32"}
    kl16, kl32 = a.get("approx_kl") or 0.0, b.get("approx_kl") or 0.0
    ratio = kl16 / kl32 if kl32 else None
    expect = {"both_moved": kl16 > 0 and kl32 > 0, "same_order": ratio is not None and 0.2 <= ratio <= 5}
    return {"ok": all(expect.values()), "parity": False, "approx_kl_bf16": kl16, "approx_kl_fp32": kl32,
            "ratio": ratio, "expect": expect}


# -----------------------------------------------------------------------------
# 2. Fused log-probs (Triton) against the naive [N, V] reference at Qwen's vocab


def dtype_name(dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}.get(dtype, str(dtype))


def max_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    return max_err(a, b) / max(float(b.double().abs().max()), 1e-30)


def check_logprob(d: int, dtype) -> dict:
    from ppo import naive_token_logprobs, token_logprobs
    dev, N, V = cuda(), LOGPROB_N, LOGPROB_V
    g = torch.Generator(device=dev).manual_seed(d)
    h = torch.randn(N, d, device=dev, generator=g).to(dtype)
    W = (torch.randn(V, d, device=dev, generator=g) * d ** -0.5).to(dtype)
    t = torch.randint(0, V, (N,), device=dev, generator=g)
    g_logp, g_ent = torch.randn(N, device=dev, generator=g), torch.randn(N, device=dev, generator=g)
    chunk_bytes = LOGPROB_CHUNK_ROWS * V * dtype.itemsize  # the backward's [rows, V] block of logit gradients

    def run(fn, as_dtype=None, grad=True):
        """(logp, entropy, dh, dW) of fn on (h, W) (cast to as_dtype first), loss = logp.g + entropy.g'."""
        hh = (h if as_dtype is None else h.to(as_dtype)).detach().requires_grad_(grad)
        WW = (W if as_dtype is None else W.to(as_dtype)).detach().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            logp, ent = fn(hh, WW)
            if grad:
                (logp * g_logp + ent * g_ent).sum().backward()
        return logp.detach(), ent.detach(), hh.grad, WW.grad

    def fused(hh, WW):
        return token_logprobs(hh, WW, t, 1.0, True, backend="triton", chunk_bytes=chunk_bytes)

    def naive(hh, WW):
        return naive_token_logprobs(hh, WW, t, 1.0, True)

    run(fused)  # warm-up: Triton compiles its kernels for this dtype
    extra, got = peak_extra(lambda: run(fused))
    naive_extra, _ = peak_extra(lambda: run(naive))
    ref = run(naive, as_dtype=torch.float64)  # exact up to fp64 rounding, on the same (dtype-rounded) inputs
    tol = LOGPROB_TOL[dtype]
    errors = dict(logp_err=max_err(got[0], ref[0]), entropy_err=max_err(got[1], ref[1]),
                  dh_rel_err=rel_err(got[2], ref[2]), dw_rel_err=rel_err(got[3], ref[3]))
    del ref, got
    t_fwd, _ = timed(lambda: run(fused, grad=False), repeats=3)
    t_fused, _ = timed(lambda: run(fused), repeats=3)
    t_naive, _ = timed(lambda: run(naive), repeats=2)
    FIGURES[("logprob", d, dtype)] = dict(fwd=t_fwd, fwdbwd=t_fused)
    plan = chunk_bytes + 4 * V * d + 4 * N * d  # memory.plan's "head" term, at this chunk size
    ok = (errors["logp_err"] <= tol["value"] and errors["entropy_err"] <= tol["value"]
          and errors["dh_rel_err"] <= tol["grad"] and errors["dw_rel_err"] <= tol["grad"])
    return {"ok": ok, "parity": True, "N": N, "d": d, "V": V, "dtype": dtype_name(dtype),
            "chunks": -(-N // LOGPROB_CHUNK_ROWS), **errors, "tol": tol, "fwd_ms": 1e3 * t_fwd,
            "fwdbwd_ms": 1e3 * t_fused, "naive_fwdbwd_ms": 1e3 * t_naive,
            "extra_mib": extra / 2**20, "naive_extra_mib": naive_extra / 2**20, "head_plan_mib": plan / 2**20,
            "expect": {"memory_below_naive": extra < naive_extra, "memory_within_plan": extra <= 1.2 * plan}}


def check_logprob_speed() -> dict:
    """bf16 inputs run the kernels on tensor cores; fp32 ones take the exact (ieee) fp32 path."""
    out, expect = {}, {}
    for d in (896, 4096):
        a, b = FIGURES.get(("logprob", d, torch.bfloat16)), FIGURES.get(("logprob", d, torch.float32))
        if a and b:
            out[f"d{d}_fwd_fp32_over_bf16"] = b["fwd"] / a["fwd"]
            out[f"d{d}_fwdbwd_fp32_over_bf16"] = b["fwdbwd"] / a["fwdbwd"]
            expect[f"d{d}_bf16_2x_faster"] = b["fwdbwd"] / a["fwdbwd"] >= 2
    if not expect:
        return {"ok": True, "parity": False, "skipped": "needs the logprob_* checks"}
    return {"ok": all(expect.values()), "parity": False, **out, "expect": expect}


# -----------------------------------------------------------------------------
# 3. The attention kernel behind each scaled_dot_product_attention call


SDPA_OPS = {"_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
            "_scaled_dot_product_flash_attention": "flash",
            "_scaled_dot_product_efficient_attention": "efficient",
            "_scaled_dot_product_cudnn_attention": "cudnn",
            "_scaled_dot_product_attention_math": "math",
            "_scaled_dot_product_fused_attention_overrideable": "overrideable"}


def sdpa_backend(op_name: str):
    """The SDPA kernel an aten op name stands for (forward or backward), None for any other op."""
    name = op_name.removeprefix("aten::")
    for key in sorted(SDPA_OPS, key=len, reverse=True):  # longest first: ..._for_cpu before ..._flash_attention
        if name.startswith(key):
            return SDPA_OPS[key]
    return None


def attention_backends(model, sample_dtype=None) -> dict:
    """{phase: sorted SDPA backends} from the profiler's aten op names, eager: "training" (a forward of
    the fp32 model, under bf16 autocast on CUDA as ppo_update runs it) and its "training_backward";
    prefill and decode of sample.generate for prompts of equal lengths and of different lengths."""
    from torch.profiler import ProfilerActivity, profile, record_function
    device = model.output_weight.device
    V = model.config.vocab_size
    sampler = model if sample_dtype is None else copy.deepcopy(model).to(sample_dtype)  # the bf16 rollout copy
    inner = sampler.forward

    def tagged(input_ids, *args, **kwargs):  # a prompt pass (T > 1) or a decode step (T == 1)
        with record_function("gpu_check:" + ("prefill" if input_ids.shape[1] > 1 else "decode")):
            return inner(input_ids, *args, **kwargs)

    ids = torch.tensor(random_prompts([48] * 4, V, seed=1), device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False) if device.type == "cuda"
                else nullcontext())
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("gpu_check:training"):
            with autocast:
                hidden = model(ids, return_hidden=True)
        hidden.float().square().mean().backward()  # backward runs on autograd's thread: untagged
        sampler.forward = tagged
        try:
            for name, lengths in (("equal", [24] * 4), ("ragged", [9, 24, 17, 5])):
                with record_function(f"gpu_check:{name}"):
                    sample.generate(sampler, random_prompts(lengths, V, seed=2), max_new_tokens=3, temperature=0.0)
        finally:
            del sampler.forward  # the class's forward again
    model.zero_grad(set_to_none=True)
    found = {}
    for evt in prof.events():
        backend = sdpa_backend(evt.name)
        if backend is None:
            continue
        tags, parent = [], evt.cpu_parent
        while parent is not None:
            if parent.name.startswith("gpu_check:"):
                tags.append(parent.name.split(":", 1)[1])
            parent = parent.cpu_parent
        phase = "_".join(tags) or ("training_backward" if "backward" in evt.name else "untagged")
        found.setdefault(phase, set()).add(backend)
    return {phase: sorted(b) for phase, b in sorted(found.items())}


def check_attention() -> dict:
    model = load_ours(qwen05b_folder(), torch.float32).train()
    found = attention_backends(model, sample_dtype=torch.bfloat16)
    del model
    fused = {"flash", "cudnn", "efficient"}
    expect = {f"{phase}_not_math": "math" not in backends for phase, backends in found.items()}
    expect["training_fused"] = set(found.get("training", [])) <= fused and bool(found.get("training"))
    expect["prefill_fused"] = all(set(b) <= fused for p, b in found.items() if p.startswith("prefill"))
    return {"ok": all(expect.values()), "parity": False, "backends": found, "expect": expect}


# -----------------------------------------------------------------------------
# 4. sample.generate: eager vs compiled vs transformers on a 24-layer Qwen2.5-0.5B-shaped model


def check_generate_fp32() -> dict:
    """Greedy parity with transformers in fp32 (TF32 off), prompts of different lengths (masked decode)."""
    path = qwen05b_folder()
    ours, hf = load_ours(path, torch.float32), load_hf(path, torch.float32)
    prompts, new = random_prompts([5, 17, 9, 33, 24, 40], QWEN05B["vocab_size"], seed=3), 40
    a, b = ours_greedy(ours, prompts, new), hf_greedy(hf, prompts, new)
    parity = greedy_parity(prompts, a, b, next_logits_of(hf, hf=True), TIE_TOL[torch.float32])
    return {"ok": parity.pop("ok"), "parity": True, "new_tokens": new, **parity}


def check_generate_speed(batch: int) -> dict:
    """bf16, `batch` prompts of 32 tokens, 128 new: eager, compiled and transformers, greedy parity of
    compiled and transformers against eager (fp32 referee), tokens/s, graphs compiled."""
    path = qwen05b_folder()
    ours, hf, referee = load_ours(path, torch.bfloat16), load_hf(path, torch.bfloat16), load_ours(path, torch.float32)
    prompts, new = random_prompts([32] * batch, QWEN05B["vocab_size"], seed=4 + batch), 128
    tokens = batch * new
    ours_greedy(ours, prompts, 4)  # warm-up: kernels, allocator
    t_eager, eager = timed(lambda: ours_greedy(ours, prompts, new), repeats=2)
    g0 = compiled_graphs()
    t_first, compiled = timed(lambda: ours_greedy(ours, prompts, new, compile=True))  # compiles this shape
    g1 = compiled_graphs()
    t_compiled, _ = timed(lambda: ours_greedy(ours, prompts, new, compile=True), repeats=2)
    g2 = compiled_graphs()
    hf_greedy(hf, prompts, 4)
    t_hf, theirs = timed(lambda: hf_greedy(hf, prompts, new))  # one run: transformers is the slow one
    judge, tol = next_logits_of(referee), TIE_TOL[torch.bfloat16]
    vs_compiled = greedy_parity(prompts, eager, compiled, judge, tol)
    vs_hf = greedy_parity(prompts, eager, theirs, judge, tol)
    expect = {"compiled_faster_than_eager": t_compiled * (2 if batch == 1 else 1) <= t_eager,
              "eager_not_slower_than_hf": t_eager <= 1.25 * t_hf, "no_recompile_on_rerun": g2 == g1}
    return {"ok": vs_compiled["ok"] and vs_hf["ok"], "parity": True, "batch": batch, "new_tokens": new,
            "eager_tok_s": tokens / t_eager, "compiled_tok_s": tokens / t_compiled, "hf_tok_s": tokens / t_hf,
            "compile_s": t_first - t_compiled, "graphs_first_call": g1 - g0, "graphs_reruns": g2 - g1,
            "compiled_vs_eager": vs_compiled, "hf_vs_eager": vs_hf, "expect": expect}


def compile_shapes(n_shapes=10, seed=0) -> list:
    """(prompt lengths, new tokens) of n calls that all fall in one compiled bucket: 33..64 rows of
    8..40 tokens, 129..256 cache slots (sample.py pads rows and lengths up to powers of two)."""
    rng = random.Random(seed)
    shapes = []
    for _ in range(n_shapes):
        lengths = [rng.randint(8, 40) for _ in range(rng.randint(33, 64))]
        new = max(rng.randint(100, 128), 129 - max(lengths))
        shapes.append((lengths, new))
    return shapes


def check_generate_compile_shapes() -> dict:
    """`generate(compile=True)` over 10 (rows, lengths) shapes: greedy parity with eager each time, no
    recompile-limit failure, and no more graphs than shape buckets."""
    path = qwen05b_folder()
    ours, referee = load_ours(path, torch.bfloat16), load_ours(path, torch.float32)
    judge, tol = next_logits_of(referee), TIE_TOL[torch.bfloat16]
    shapes = compile_shapes()
    buckets = {(pow2(len(lengths)), pow2(max(lengths) + new, 64)) for lengths, new in shapes}
    g0, results = compiled_graphs(), []
    for i, (lengths, new) in enumerate(shapes):
        prompts = random_prompts(lengths, QWEN05B["vocab_size"], seed=100 + i)
        compiled = ours_greedy(ours, prompts, new, compile=True)
        results.append(greedy_parity(prompts, ours_greedy(ours, prompts, new), compiled, judge, tol))
    graphs = compiled_graphs() - g0
    ok = all(r["ok"] for r in results) and graphs <= len(buckets)
    return {"ok": ok, "parity": True, "shapes": len(shapes), "buckets": len(buckets), "graphs": graphs,
            "rows_identical": sum(r["identical"] for r in results), "rows": sum(r["rows"] for r in results),
            "tie_margin": max(r["tie_margin"] for r in results), "tie_tol": tol,
            "failed_shapes": [i for i, r in enumerate(results) if not r["ok"]]}


NOISE_SHARE_MAX = 0.05  # the fused sampling noise's share of a decode step: a few percent at most


def check_noise() -> dict:
    """bench/noise.py's noise_share on the bf16 0.5B model: the per-prompt hashed noise of a decode step
    (64 rows at 256 cached tokens, the 151,936-wide vocabulary), eager and fused (compiled), against the
    step itself; the two kinds of noise must be equal bit for bit."""
    import noise
    model = load_ours(qwen05b_folder(), torch.bfloat16).eval()
    out = noise.noise_share(model, rows=64, context=256, steps=20)
    del model
    expect = {"fused_compiled": out["fused_compiled"], "fused_faster_than_eager": out["fused_speedup"] >= 1,
              "fused_share_at_most_5pct": out["share_fused"] <= NOISE_SHARE_MAX}
    return {"ok": out["identical"], "parity": True, **out, "expect": expect}


# -----------------------------------------------------------------------------
# 5. Host syncs: the decode loop, token_logprobs, ppo_update


def decode_syncs(model, prompts, short=16, long=48, **kwargs) -> dict:
    """Host syncs of sample.generate at two lengths (no stop token: both run to the end); their
    difference per extra token is the loop's own, free of the per-call setup and copies."""
    counts = {}
    for new in (short, long):
        sample.generate(model, prompts, max_new_tokens=new, **kwargs)  # warm-up: lazy inits sync once
        with SyncCount() as s:
            sample.generate(model, prompts, max_new_tokens=new, **kwargs)
        counts[new] = s.n
    return {"per_call": counts[short], "per_token": (counts[long] - counts[short]) / (long - short)}


def check_host_syncs() -> dict:
    from config import TrainConfig
    from ppo import ppo_update, token_logprobs
    dev = cuda()
    tiny = load_ours(TINY, torch.bfloat16)
    V = tiny.config.vocab_size
    prompts = random_prompts([7, 12, 9, 15], V, seed=5)
    out = {"greedy": decode_syncs(tiny, prompts, temperature=0.0),
           "sampled": decode_syncs(tiny, prompts, n=4, temperature=1.0, seed=[1, 2, 3, 4]),  # train.rollout's way
           "compiled": decode_syncs(tiny, prompts, temperature=0.0, compile=True)}

    # token_logprobs, forward and backward, as ppo_update calls it (bf16, entropy)
    g = torch.Generator(device=dev).manual_seed(0)
    h = torch.randn(LOGPROB_N, 896, device=dev, generator=g).to(torch.bfloat16).requires_grad_()
    W = (torch.randn(LOGPROB_V, 896, device=dev, generator=g) * 896 ** -0.5).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, LOGPROB_V, (LOGPROB_N,), device=dev, generator=g)
    counts = []
    for _ in range(2):  # the first is a warm-up
        with SyncCount() as s:
            logp, ent = token_logprobs(h, W, t, 1.0, True, backend="triton")
            (logp.sum() + ent.sum()).backward()
        counts.append(s.n)
    out["token_logprobs_fwd_bwd"] = counts[-1]

    # one ppo_update on the tiny model: 8 rows in 1 micro-batch, then in 4
    policy = load_ours(TINY, torch.float32).train()
    ref = load_ours(TINY, torch.bfloat16).requires_grad_(False)
    B, T = 8, 40
    batch = {"input_ids": torch.randint(3, V, (B, T), device=dev, generator=g),
             "response_mask": (torch.arange(T, device=dev) >= 20).float().expand(B, T).contiguous(),
             "old_logp": torch.full((B, T), -3.0, device=dev),
             "advantages": torch.randn(B, device=dev, generator=g)}
    ppo = {}
    for micro in (8, 2, 8, 2):  # the first two are warm-ups (optimizer state, kernels)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=True)
        cfg = TrainConfig(micro_batch_size=micro, kl_coef=0.1)
        with SyncCount() as s:
            ppo_update(policy, optimizer, batch, cfg, ref_model=ref, value_head=None, compute_dtype=torch.bfloat16)
        ppo[B // micro] = s.n
    out["ppo_update_1_micro"], out["ppo_update_4_micro"] = ppo[1], ppo[4]
    out["ppo_update_per_micro"] = (ppo[4] - ppo[1]) / 3
    every = 1 / sample.SYNC_EVERY  # the loop asks "all rows done?" once every SYNC_EVERY tokens
    expect = {f"decode_{k}_per_token": out[k]["per_token"] <= every + 1e-9 for k in ("greedy", "sampled", "compiled")}
    expect["token_logprobs_none"] = out["token_logprobs_fwd_bwd"] == 0
    expect["ppo_update_per_micro_at_most_1"] = out["ppo_update_per_micro"] <= 1
    return {"ok": all(expect.values()), "parity": False, **out, "expect": expect}


# -----------------------------------------------------------------------------
# 6. One RL step's peak memory against memory.plan


def check_memory_plan() -> dict:
    """Two RL steps of the random 0.5B model (bf16, verifier reward, 32 rollouts of 256 tokens, micro-batch
    8); the second step's peaks (gradients and Adam states exist by then) against the plan's."""
    from unittest import mock

    import memory
    import train
    from model import QwenConfig
    rollouts, new, micro = 32, 256, 8
    flags = ["--model", train_folder(), "--task", "countdown", "--prompt-style", "compact", "--reward", "verifier",
             "--steps", "2", "--prompts-per-step", "4", "--group-size", "8", "--max-new-tokens", str(new),
             "--micro-batch-size", str(micro), "--kl-coef", "0.001", "--eval-interval", "0", "--no-progress",
             "--device", "auto", "--dtype", "bf16"]
    peaks, prompt_len = {}, [0]

    def hook(phase, when, models, data):
        if phase not in ("generate", "update"):
            return
        torch.cuda.synchronize()
        if when == "start":
            torch.cuda.reset_peak_memory_stats()
        else:
            peaks[phase] = torch.cuda.max_memory_allocated() - base  # the last step's wins
        if phase == "generate" and when == "end":
            prompt_len[0] = max(len(p) for p in data)  # the rollout prompts

    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()  # what earlier checks still hold
    with mock.patch.object(train, "save_checkpoint", lambda *a, **k: None):  # no 6 GB write per run
        models, lines = rl_run(flags, hook)
    del models
    cfg = QwenConfig.from_json(os.path.join(train_folder(), "config.json"))
    plan = memory.plan(cfg, gpus=1, rollouts=rollouts, prompt_len=prompt_len[0], new_tokens=new,
                       micro_batch=micro, fused=True, grad_ckpt=False, ref=True)
    ratio = {"generate": peaks["generate"] / plan["peak_generate"], "update": peaks["update"] / plan["peak_update"]}
    lo, hi = PLAN_RANGE
    expect = {f"{k}_within_plan_range": lo <= v <= hi for k, v in ratio.items()}
    return {"ok": all(expect.values()), "parity": False, "rollouts": rollouts, "prompt_len": prompt_len[0],
            "new_tokens": new, "longest_completion": lines[-1]["len_max"], "micro_batch": micro,
            "measured_gib": {k: v / 2**30 for k, v in peaks.items()},
            "plan_gib": {"generate": plan["peak_generate"] / 2**30, "update": plan["peak_update"] / 2**30},
            "ratio": ratio, "range": PLAN_RANGE, "expect": expect}


# -----------------------------------------------------------------------------
# 7. Two GPUs: the nccl run against one process, and a resume (tests/test_distributed.py on gloo)


NCCL_FLAGS = ["--steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "64",
              "--judge-max-new-tokens", "96", "--eval-interval", "0", "--lr", "1e-4", "--kl-coef", "0.01",
              "--dtype", "fp32", "--no-progress"]


def train_process(*args, nproc=1):
    """train.py in its own process(es): plain python, or torchrun --nproc_per_node nproc (nccl)."""
    runner = ([sys.executable] if nproc == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)])
    proc = subprocess.run([*runner, os.path.join(REPO, "train.py"), *[str(a) for a in args]], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"train.py ({nproc} process(es)) exited {proc.returncode}: "
                           f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")


def run_metrics(out) -> list:
    """metrics.jsonl without timings and sampler_logp_err (float noise by nature)."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(x).items() if not k.startswith("time_") and k != "sampler_logp_err"}
                for x in f]


def compare_metrics(a: list, b: list, rel=1e-3, abs_tol=1e-6) -> list:
    """'step s: key a != b' for every value that differs (floats beyond rel/abs_tol); [] when they agree."""
    if len(a) != len(b):
        return [f"{len(a)} lines != {len(b)} lines"]
    diffs = []
    for x, y in zip(a, b):
        for k in sorted(set(x) | set(y)):
            u, v = x.get(k), y.get(k)
            if isinstance(u, float) and isinstance(v, (int, float)):
                same = abs(u - v) <= abs_tol + rel * abs(u)
            else:
                same = u == v
            if not same:
                diffs.append(f"step {x.get('step')}: {k} {u} != {v}")
    return diffs


def weight_change(a_dir, b_dir, init_dir) -> dict:
    """How far run a moved the weights from init, and how far run b ended from run a (sums of |.|)."""
    from safetensors.torch import load_file
    init, a, b = (load_file(os.path.join(p, "model.safetensors")) for p in (init_dir, a_dir, b_dir))
    moved = sum(float((a[k].double() - init[k].double()).abs().sum()) for k in init)
    diff = sum(float((a[k].double() - b[k].double()).abs().sum()) for k in init)
    return {"moved": moved, "diff": diff}


def check_nccl() -> dict:
    n = torch.cuda.device_count()
    if n < 2:
        return {"ok": True, "parity": True, "skipped": f"needs >= 2 GPUs, found {n}"}
    root = tempfile.mkdtemp(prefix="gpu_check_nccl_")
    try:
        one, two, resumed = (os.path.join(root, x) for x in ("one", "two", "resumed"))
        train_process(*NCCL_FLAGS, "--device", "cuda:0", "--out", one)
        train_process(*NCCL_FLAGS, "--device", "cuda", "--grad-ckpt", "layer", "--out", two, nproc=2)
        equivalence = compare_metrics(run_metrics(one), run_metrics(two))
        w_equiv = weight_change(os.path.join(one, "ckpt"), os.path.join(two, "ckpt"), TINY)
        train_process(*NCCL_FLAGS, "--device", "cuda", "--grad-ckpt", "layer", "--out", resumed, "--steps", "1",
                      nproc=2)
        train_process("--resume", resumed, "--steps", "2", nproc=2)
        resume = compare_metrics(run_metrics(resumed), run_metrics(two))
        w_resume = weight_change(os.path.join(two, "ckpt"), os.path.join(resumed, "ckpt"), TINY)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ok = (not equivalence and not resume and w_equiv["moved"] > 0
          and w_equiv["diff"] <= 1e-3 * w_equiv["moved"] and w_resume["diff"] <= 1e-3 * w_resume["moved"])
    return {"ok": ok, "parity": True, "gpus": n, "equivalence_diffs": equivalence[:10], "resume_diffs": resume[:10],
            "weights_2proc_vs_1proc": w_equiv, "weights_resumed_vs_straight": w_resume}


# -----------------------------------------------------------------------------
# The command


CHECKS = [
    ("env", check_env),
    ("rl_step_bf16", functools.partial(check_rl_step, "bf16")),
    ("rl_step_fp32", functools.partial(check_rl_step, "fp32")),
    ("rl_step_bf16_frozen_judge", functools.partial(check_rl_step, "bf16", ("--judge", "frozen"))),
    ("rl_step_bf16_vs_fp32", check_rl_bf16_vs_fp32),
    ("memory_plan", check_memory_plan),  # before anything compiles: CUDA-graph pools stay allocated
    *[(f"logprob_d{d}_{n}", functools.partial(check_logprob, d, dt))
      for d in (896, 4096) for n, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32))],
    ("logprob_bf16_vs_fp32_time", check_logprob_speed),
    ("attention_backends", check_attention),
    ("host_syncs", check_host_syncs),
    ("generate_fp32_vs_hf", check_generate_fp32),
    ("generate_bf16_b1", functools.partial(check_generate_speed, 1)),
    ("generate_bf16_b64", functools.partial(check_generate_speed, 64)),
    ("generate_compile_shapes", check_generate_compile_shapes),
    ("noise_share", check_noise),
    ("nccl", check_nccl),
]


def select(only: str) -> list:
    """The checks whose names start with one of the comma-separated prefixes (all when empty)."""
    prefixes = [p.strip() for p in only.split(",") if p.strip()]
    return [(n, f) for n, f in CHECKS if not prefixes or any(n.startswith(p) for p in prefixes)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated check names or name prefixes (default: all)")
    p.add_argument("--list", action="store_true", help="print the check names and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(n for n, _ in CHECKS))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"check": "cuda", "ok": False, "error": f"CUDA is not available (torch {torch.__version__}):"
                          " no check ran; run bench/gpu_check.py on a machine with an NVIDIA GPU"}), flush=True)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references mean fp32 (also torch's default)
    torch.backends.cudnn.allow_tf32 = False
    t0, results = time.time(), []
    try:
        for name, fn in select(args.only):
            results.append(run_check(name, fn))
            gc.collect()
            torch.cuda.empty_cache()
    finally:
        for path in _FOLDERS.values():
            shutil.rmtree(path, ignore_errors=True)
        _FOLDERS.clear()
    summary, code = summarize(results, time.time() - t0)
    print(line(summary), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
