"""The Triton path of ppo.token_logprobs, without a GPU.

1. The kernels run under Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors at small shapes
   and must match the naive log_softmax(...).gather(...) -- values, entropy and both gradients.
   fp32 loads: the interpreter's bf16 tl.dot is wrong, so bf16 inputs are upcast in the kernel.
2. Every kernel is compiled ahead of time for sm_80 and sm_90 (ptxas ships inside the triton wheel):
   PTX and a cubin must come out, and the bf16 variants' PTX must hold tensor-core MMAs (mma.sync on
   sm_80, wgmma on sm_90) while the fp32 ("ieee") ones hold none -- why bf16 inputs matter on a GPU.
Each runs in a subprocess (this file as a script) so TRITON_INTERPRET never leaks into other tests.
"""

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(mode, *args, interpret=False):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=ROOT, TRITON_DEFAULT_FP_FUSION="1", OMP_NUM_THREADS="1")  # tiny ops: no spin-waits
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), mode, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{mode} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_kernels_under_interpreter():
    pytest.importorskip("triton", reason="triton is not installed: the Triton path is not testable")
    out = _run("interpret", interpret=True)
    assert out.count("ok") == len(INTERPRET_CASES), out


def test_kernels_compile_ahead_of_time():
    pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be compiled")
    out = _run("compile", "80", "90")
    for cc in (80, 90):
        assert out.count(f"ok sm_{cc}") == len(compile_specs()), out
    mma = {80: "mma.sync", 90: "wgmma.mma_async"}
    for name, _, consts, _ in compile_specs():  # the line of each (kernel, precision) names its MMAs
        for cc in (80, 90):
            line = f"ok sm_{cc} {name} {'fp32' if consts['FP32'] else 'bf16'} mma=" + \
                ("none" if consts["FP32"] else mma[cc])
            assert line in out, f"{line!r} not in:\n{out}"


# --- the subprocess side ------------------------------------------------------------------------

# small tiles and several vocab splits: the edge masks, the split combine and the chunk loop all run;
# the largest shape takes bigger tiles (the interpreter's cost is per tile)
SMALL = dict(fwd=(16, 64, 32, 4), dlogits=(16, 64, 32, 4), splits=3)
BIG = dict(fwd=(32, 128, 64, 4), dlogits=(32, 128, 64, 4), splits=5)
# N, V, d, temperature, dtype, entropy, backward chunk (tokens), tiles
INTERPRET_CASES = [(37, 1000, 24, 1.0, "float32", True, 16, SMALL),
                   (64, 2048, 64, 0.7, "float32", False, 48, BIG),
                   (5, 300, 16, 1.3, "float32", True, 64, SMALL),
                   (19, 257, 40, 1.0, "bfloat16", True, 16, SMALL),
                   (40, 300, 24, 0.8, "bfloat16", False, 20, SMALL)]  # bf16 G: chunks of 32 + 8 rows


def interpret():
    import torch
    import ppo

    assert ppo.triton is not None and os.environ.get("TRITON_INTERPRET") == "1"
    for N, V, d, temp, dtype, entropy, chunk, tiles in INTERPRET_CASES:
        t0 = time.perf_counter()
        ppo.TRITON_CONFIG.update(tiles)
        dtype = getattr(torch, dtype)
        g = torch.Generator().manual_seed(N)
        h = torch.randn(N, d, generator=g).to(dtype).requires_grad_()
        W = (0.5 * torch.randn(V, d, generator=g)).to(dtype).requires_grad_()
        t = torch.randint(0, V, (N,), generator=g)
        gl, ge = torch.randn(N, generator=g), torch.randn(N, generator=g)
        results = []
        for fn in (lambda *a: ppo.token_logprobs(*a, backend="triton", chunk_bytes=chunk * V * 4),
                   ppo.naive_token_logprobs):
            hh, WW = h.detach().clone().requires_grad_(), W.detach().clone().requires_grad_()
            out = fn(hh, WW, t, temp, entropy)
            logp, ent = out if entropy else (out, None)
            loss = (logp * gl).sum() + ((ent * ge).sum() if entropy else 0)
            loss.backward()
            results.append([logp, hh.grad, WW.grad] + ([ent] if entropy else []))
        for name, a, b in zip(["logp", "dh", "dw", "entropy"], *results):
            if dtype == torch.float32:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} {N}x{V}x{d}: {m}")
            else:  # same bf16 inputs, fp32 math in the kernels; bf16 logit gradients and GEMMs (as on the GPU)
                torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2,
                                           msg=lambda m: f"{name} {N}x{V}x{d}: {m}")
        assert results[0][0].dtype == torch.float32 and results[0][1].dtype == dtype
        print("ok", N, V, d, temp, dtype, entropy, f"{time.perf_counter() - t0:.1f}s")


def compile_specs():
    """(kernel name, signature, constexprs, num_warps): the bf16 variants a bf16 run launches,
    plus the fp32-operand variants (fp32 inputs). The backward GEMMs are torch's (cuBLAS)."""
    i32, f32, bf16, i64 = "i32", "*fp32", "*bf16", "*i64"
    fwd = dict(H=bf16, W=bf16, TGT=i64, M=f32, S=f32, A=f32, ZT=f32, N=i32, V=i32, D=i32, stride_h=i32,
               stride_w=i32, inv_temp="fp32", tiles_per_split=i32)
    dlogits = dict(H=bf16, W=bf16, TGT=i64, LSE=f32, GT=f32, GE=f32, EZ=f32, OUT=bf16, N=i32, V=i32, D=i32,
                   stride_h=i32, stride_w=i32, stride_o=i32, inv_temp="fp32")
    from ppo import TRITON_CONFIG as C

    def spec(name, sig, fp32, block_names, cfg, **flags):
        if fp32:
            sig = {k: (f32 if v == bf16 else v) for k, v in sig.items()}
        return name, sig, dict(zip(block_names, cfg[:3]), FP32=fp32, **flags), cfg[3]

    specs = []
    for fp32 in (False, True):
        specs += [spec("_logprob_fwd_kernel", fwd, fp32, ["BLOCK_N", "BLOCK_V", "BLOCK_D"], C["fwd"]),
                  spec("_logprob_dlogits_kernel", dlogits, fp32, ["BLOCK_N", "BLOCK_V", "BLOCK_D"], C["dlogits"],
                       ENTROPY=True)]
    return specs


def compile_all(ccs):
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import ppo

    for cc in ccs:
        for name, sig, consts, warps in compile_specs():
            src = ASTSource(fn=getattr(ppo, name), signature={**sig, **{k: "constexpr" for k in consts}},
                            constexprs=consts)
            compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(num_warps=warps))
            assert "ptx" in compiled.asm and ".entry" in compiled.asm["ptx"], name
            assert "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0, name
            mma = sorted(set(re.findall(r"\b(?:wgmma\.mma_async|mma\.sync)\b", compiled.asm["ptx"])))
            print(f"ok sm_{cc}", name, "fp32" if consts["FP32"] else "bf16", f"mma={','.join(mma) or 'none'}",
                  len(compiled.asm["cubin"]), "bytes")


if __name__ == "__main__":
    if sys.argv[1] == "interpret":
        interpret()
    else:
        compile_all([int(cc) for cc in sys.argv[2:]])
