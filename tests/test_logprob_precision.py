"""bf16 gradients of ppo.token_logprobs against an fp64 reference, over many chunks.

The lm_head gradient dW [V, d] is a sum over token chunks and dH [N, d] one over vocab chunks (PyTorch
path); both sums are fp32, so the chunk count must not show in the error: with bf16 inputs the cast
of the result to bf16 is its rounding (PyTorch path) or that plus the rounding of the bf16 logit
gradients the tensor-core GEMMs read (Triton path). fp32 inputs stay exact to fp32.
The Triton path runs under TRITON_INTERPRET=1 in a subprocess (this file as a script).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import ppo

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_ROUNDING = 2.0 ** -8  # bf16's unit roundoff: |bf16(x) - x| <= 2^-8 |x|
FP32_EXACT = 1e-5


def gradient_errors(backend, dtype, N, V, d, chunk_bytes, entropy, seed=0):
    """max |grad - fp64 reference| / max |reference| of dW and dH (and of logp), for the loss
    sum(g * logp) (+ sum(g_ent * entropy)) with mixed-sign token weights, as PPO's are."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, d, generator=g).to(dtype)
    W = (0.5 * torch.randn(V, d, generator=g)).to(dtype)
    t = torch.randint(0, V, (N,), generator=g)
    weights, entropy_weights = torch.randn(N, generator=g), torch.randn(N, generator=g)

    def grads(fn, as_dtype):
        hh, WW = (x.to(as_dtype, copy=True).requires_grad_() for x in (h, W))
        out = fn(hh, WW, t, 1.0, entropy)
        logp, ent = out if entropy else (out, None)
        loss = (logp * weights.to(logp.dtype)).sum()
        if entropy:
            loss = loss + (ent * entropy_weights.to(ent.dtype)).sum()
        loss.backward()
        assert hh.grad.dtype == WW.grad.dtype == as_dtype
        return dict(logp=logp.detach(), dw=WW.grad, dh=hh.grad)

    got = grads(lambda *a: ppo.token_logprobs(*a, backend=backend, chunk_bytes=chunk_bytes), dtype)
    want = grads(ppo.naive_token_logprobs, torch.float64)
    return {k: float((got[k].double() - want[k]).abs().max() / want[k].abs().max()) for k in want}


# --- PyTorch path -------------------------------------------------------------------------------


def _small_chunks(N, V, chunk_bytes):
    return 16, 128  # 16-token, 128-column blocks: many token chunks (dW's sum) and vocab chunks (dH's)


@pytest.mark.parametrize("entropy", [False, True])
def test_torch_bf16_gradients_round_once_over_20_chunks(monkeypatch, entropy):
    N, V, d = 320, 2560, 32  # 20 token chunks x 20 vocab chunks
    one_chunk = gradient_errors("torch", torch.bfloat16, N, V, d, None, entropy)  # N, V fit one block
    monkeypatch.setattr(ppo, "_chunk_sizes", _small_chunks)
    chunked = gradient_errors("torch", torch.bfloat16, N, V, d, None, entropy)
    for k in ("dw", "dh"):
        assert chunked[k] <= ONE_ROUNDING, (k, chunked)  # fp32 logit gradients: the final cast is all
        assert chunked[k] <= one_chunk[k] + ONE_ROUNDING / 8, (k, chunked, one_chunk)
    fp32 = gradient_errors("torch", torch.float32, N, V, d, None, entropy)
    assert max(fp32.values()) <= FP32_EXACT, fp32


# --- Triton path (interpreter) ------------------------------------------------------------------

TILES = dict(fwd=(16, 64, 32, 4), dlogits=(16, 64, 32, 4), splits=2)
TRITON_SHAPE = dict(N=384, V=256, d=32)  # 24 backward chunks of one 16-row tile each


def triton_errors():
    """Prints {"<dtype> <entropy> <chunks>": errors} as one JSON line."""
    assert ppo.triton is not None and os.environ.get("TRITON_INTERPRET") == "1"
    ppo.TRITON_CONFIG.update(TILES)
    N, V, d = TRITON_SHAPE["N"], TRITON_SHAPE["V"], TRITON_SHAPE["d"]
    res = {}
    for dtype, chunk_rows in ((torch.bfloat16, N), (torch.bfloat16, 16), (torch.float32, 16)):
        for entropy in (False, True):
            chunk_bytes = chunk_rows * V * torch.finfo(dtype).bits // 8  # the backward's [rows, V] block
            errors = gradient_errors("triton", dtype, N, V, d, chunk_bytes, entropy)
            res[f"{str(dtype)[6:]} {entropy} {N // chunk_rows}"] = errors
    print(json.dumps(res))


def test_triton_bf16_gradients_do_not_grow_with_the_chunks():
    pytest.importorskip("triton", reason="triton is not installed: the Triton path is not testable")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=ROOT, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for entropy in (False, True):
        one, chunked = res[f"bfloat16 {entropy} 1"], res[f"bfloat16 {entropy} 24"]
        for k in ("dw", "dh"):
            # the bf16 logit gradients the GEMMs read are rounded too (cancellation over the vocabulary
            # can amplify that); the sum over the 24 chunks is fp32 and adds nothing
            assert chunked[k] <= one[k] + ONE_ROUNDING / 8, (k, entropy, chunked, one)
            assert chunked[k] <= 3 * ONE_ROUNDING, (k, entropy, chunked)
        assert max(res[f"float32 {entropy} 24"].values()) <= FP32_EXACT, res


if __name__ == "__main__":
    triton_errors()
