"""PPO for RLSR: fused token log-probs, advantages (group / GAE), the clipped loss, the update loop.

Reads top to bottom:
  1. token_logprobs  -- log p(target) under softmax(hidden @ W.T / T) without ever building the
                        [tokens, vocab] logits (Qwen's 151,936-token vocab makes them gigabytes):
                        a chunked PyTorch autograd Function everywhere, Triton kernels on CUDA.
  2. advantages      -- `group` (GRPO / Dr. GRPO, RLSR's setting) and `gae` (value head, classic PPO).
  3. ppo_loss        -- clipped ratio (+ dual clip), k3 KL to the reference, entropy bonus,
                        token-level mean over the batch.
  4. ppo_update      -- epochs x minibatches x micro-batches with gradient accumulation.

Convention for [B, T] tensors (input_ids, response_mask, logp, old_logp, ref_logp, advantages,
values): position t refers to token input_ids[:, t], predicted from hidden[:, t-1]. So
response_mask[:, t] = 1 where input_ids[:, t] is a sampled completion token, response_mask[:, 0]
is always 0, and logp[:, t] = log p(input_ids[:, t] | input_ids[:, :t]) (0 off the mask).
"""

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

try:  # Triton is optional: ppo.py imports and runs (PyTorch path) without it
    import triton
    import triton.language as tl
except ImportError:
    triton = None

# -----------------------------------------------------------------------------
# 1. Fused token log-probs


def naive_token_logprobs(hidden, weight, targets, temperature=1.0, return_entropy=False):
    """Reference: builds the full [N, V] logits. hidden [N, d], weight [V, d], targets [N] -> [N]."""
    acc = _acc_dtype(hidden, weight)
    logits = (hidden.to(acc) @ weight.to(acc).T) / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)
    if return_entropy:
        return logp, -(logp_all.exp() * logp_all).sum(-1)
    return logp


CHUNK_BYTES = 32 * 2**20          # PyTorch path: one fp32 [tokens, vocab] logits block (~32 MB)
TRITON_CHUNK_BYTES = 256 * 2**20  # Triton backward: one [tokens, vocab] block of logit gradients


def _acc_dtype(h, W):
    """fp32 accumulation (fp64 for fp64 inputs, so gradcheck works)."""
    return torch.promote_types(torch.promote_types(h.dtype, W.dtype), torch.float32)


def _chunk_sizes(N, V, chunk_bytes):
    """Token and vocab chunk sizes so that one fp32 [n_tok, n_voc] block is ~chunk_bytes."""
    n_tok = max(1, min(N, 4096))  # enough rows that each block is an efficient GEMM
    n_voc = max(128, chunk_bytes // (4 * n_tok))
    return n_tok, min(V, n_voc)


def _torch_forward(h, W, targets, inv_temp, want_entropy, chunk_bytes):
    """Chunked forward: each [tokens, vocab] block of logits z gives its row max m, sum exp(z - m)
    and the target's logit. The online logsumexp merges these once at the end rather than after
    every block: per block only big in-place ops run (each tiny op costs a thread sync on CPU).

    Returns logp [N], entropy [N] (or None), lse [N], ez [N] = E_p[z] (or None), all fp32.
    """
    N, V = h.shape[0], W.shape[0]
    acc = dict(device=h.device, dtype=_acc_dtype(h, W))
    hs = h.to(acc["dtype"])
    hs = hs * inv_temp if inv_temp != 1.0 else hs  # z = hs @ W.T: scale [N, d], not [N, V]
    n_tok, n_voc = _chunk_sizes(N, V, chunk_bytes)
    n_chunks = -(-V // n_voc)
    m, s, zt = torch.empty(3, n_chunks, N, **acc)  # per vocab chunk: max z, sum exp(z - max), z[target col]
    a = torch.empty(n_chunks, N, **acc) if want_entropy else None  # sum exp(z - max) * (z - max)
    t_chunk, t_col = targets // n_voc, targets % n_voc
    buf = torch.empty(n_tok * n_voc, **acc)  # the one logits block, reused (no page faults)
    for c, v0 in enumerate(range(0, V, n_voc)):
        w = W[v0:v0 + n_voc].to(acc["dtype"])
        nv = w.shape[0]
        col = t_col if nv == n_voc else t_col.clamp(max=nv - 1)  # the last chunk may be narrower
        for n0 in range(0, N, n_tok):
            sl = slice(n0, n0 + n_tok)
            z = torch.mm(hs[sl], w.T, out=buf[:hs[sl].shape[0] * nv].view(-1, nv))
            zt[c, sl] = z.gather(1, col[sl, None]).squeeze(1)  # right only where t_chunk == c
            torch.amax(z, 1, out=m[c, sl])
            z.sub_(m[c, sl, None])
            zz = z.clone() if want_entropy else None
            torch.sum(z.exp_(), 1, out=s[c, sl])
            if want_entropy:
                torch.sum(zz.mul_(z), 1, out=a[c, sl])
    m_max = m.amax(0)
    scale = torch.exp(m - m_max)  # [chunks, N]: rescale each chunk's sums to the global max
    s_tot = (s * scale).sum(0)
    lse = m_max + torch.log(s_tot)
    logp = zt.gather(0, t_chunk[None]).squeeze(0) - lse
    if not want_entropy:
        return logp, None, lse, None
    ez = ((a + m * s) * scale).sum(0) / s_tot  # E_p[z]: sum exp(z - max) * z = a + max * s per chunk
    return logp, lse - ez, lse, ez


def _torch_backward(h, W, targets, lse, ez, g, g_ent, inv_temp, need_dh, need_dw, chunk_bytes):
    """Recompute each logits block; dL/dz = g * onehot - Q * r with per-row sign r and

        Q = |g| p                        (r = sign g: g goes into the exponent, exp(z - lse + log|g|))
        Q = p (g + g_ent (z - E[z]))     (r = 1; d entropy / dz_j = -p_j (z_j - E[z]))

    so a block costs one GEMM, two in-place passes and the two gradient GEMMs; r multiplies the
    [N, d] side, and the one-hot term is added once at the end. 1/T is folded into g.
    Returns dh [N, d], dw [V, d] in the accumulation dtype (or None).
    """
    N, V, d = h.shape[0], W.shape[0], h.shape[1]
    acc = dict(device=h.device, dtype=lse.dtype)
    h32 = h.to(acc["dtype"])
    hs = h32 * inv_temp if inv_temp != 1.0 else h32
    g = (g if g is not None else torch.zeros(N, **acc)).to(acc["dtype"]) * inv_temp
    if g_ent is None:
        r, shift = torch.sign(g), lse - torch.log(g.abs())  # g == 0: shift = inf, Q = 0
    else:
        r, ge = torch.ones_like(g), g_ent.to(acc["dtype"]) * inv_temp
    h_neg = -r[:, None] * h32
    dq = torch.zeros(N, d, **acc) if need_dh else None  # sum over the vocab of Q @ W
    n_tok, n_voc = _chunk_sizes(N, V, chunk_bytes)
    single = 0 < N <= n_tok  # one token chunk: each vocab chunk writes its rows of dW once
    dw = (torch.empty if single else torch.zeros)(V, d, **acc) if need_dw else None
    buf = torch.empty(n_tok * n_voc, **acc)
    for v0 in range(0, V, n_voc):
        w = W[v0:v0 + n_voc].to(acc["dtype"])
        nv = w.shape[0]
        for n0 in range(0, N, n_tok):
            sl = slice(n0, n0 + n_tok)
            z = torch.mm(hs[sl], w.T, out=buf[:hs[sl].shape[0] * nv].view(-1, nv))
            if g_ent is None:
                Q = z.sub_(shift[sl, None]).exp_()
            else:
                coef = (z - ez[sl, None]).mul_(ge[sl, None]).add_(g[sl, None])
                Q = z.sub_(lse[sl, None]).exp_().mul_(coef)
            if need_dh:
                dq[sl].addmm_(Q, w)
            if need_dw:
                if single:
                    torch.mm(Q.T, h_neg[sl], out=dw[v0:v0 + nv])
                else:
                    dw[v0:v0 + nv].addmm_(Q.T, h_neg[sl])
    dh = g[:, None] * W[targets].to(acc["dtype"]) - r[:, None] * dq if need_dh else None
    if need_dw:
        dw.index_add_(0, targets, g[:, None] * h32)
    return dh, dw


# --- Triton path: same math, tiles instead of chunks --------------------------------------------

if triton is not None:

    @triton.jit
    def _dot(a, b, acc, FP32: tl.constexpr):
        """acc += a @ b with fp32 accumulation; FP32 loads fp32 operands (fp32 inputs, interpreter)."""
        if FP32:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        return acc

    @triton.jit
    def _logprob_fwd_kernel(H, W, TGT, M, S, A, ZT, N, V, D, stride_h, stride_w, inv_temp, tiles_per_split,
                            BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                            FP32: tl.constexpr):
        """One (token block, vocab split): tile matmul, online logsumexp, target logit, sum p*z.

        Writes this split's partial max M, sum S = sum exp(z - M), A = sum exp(z - M) * z and the
        target logit ZT (0 unless the target falls in this split) to [splits, N] buffers.
        """
        pid_n, split = tl.program_id(0), tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        tgt = tl.load(TGT + rows, mask=row_ok, other=-1)
        m = tl.full([BLOCK_N], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK_N], tl.float32)
        a = tl.zeros([BLOCK_N], tl.float32)
        zt = tl.zeros([BLOCK_N], tl.float32)
        v_begin = split * tiles_per_split * BLOCK_V
        v_end = tl.minimum(v_begin + tiles_per_split * BLOCK_V, V)
        for v0 in range(v_begin, v_end, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_ok = cols < V
            z = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                ks = d0 + tl.arange(0, BLOCK_D)
                h = tl.load(H + rows[:, None].to(tl.int64) * stride_h + ks[None, :],
                            mask=row_ok[:, None] & (ks[None, :] < D), other=0.0)
                w = tl.load(W + cols[None, :].to(tl.int64) * stride_w + ks[:, None],  # W.T tile [D, V]
                            mask=col_ok[None, :] & (ks[:, None] < D), other=0.0)
                z = _dot(h, w, z, FP32)
            z = z * inv_temp  # 0 in the columns past V (w loaded as 0)
            z_ok = tl.where(col_ok[None, :], z, float("-inf"))
            zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
            m_new = tl.maximum(m, tl.max(z_ok, axis=1))  # finite: every tile has a valid column
            alpha = tl.exp(m - m_new)
            e = tl.exp(z_ok - m_new[:, None])  # 0 past V
            s = s * alpha + tl.sum(e, axis=1)
            a = a * alpha + tl.sum(e * z, axis=1)
            m = m_new
        out = split * N + rows
        tl.store(M + out, m, mask=row_ok)
        tl.store(S + out, s, mask=row_ok)
        tl.store(A + out, a, mask=row_ok)
        tl.store(ZT + out, zt, mask=row_ok)

    @triton.jit
    def _logprob_dlogits_kernel(H, W, TGT, LSE, GT, GE, EZ, OUT, N, V, D, stride_h, stride_w, stride_o,
                                inv_temp, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                                BLOCK_D: tl.constexpr, FP32: tl.constexpr, ENTROPY: tl.constexpr):
        """One [BLOCK_N, BLOCK_V] tile of dL/d(h @ W.T): recompute z, then
        (g * onehot - p * (g + g_ent * (z - E[z]))) / T, stored in OUT's dtype."""
        pid_n, pid_v = tl.program_id(0), tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
        row_ok, col_ok = rows < N, cols < V
        z = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ks = d0 + tl.arange(0, BLOCK_D)
            h = tl.load(H + rows[:, None].to(tl.int64) * stride_h + ks[None, :],
                        mask=row_ok[:, None] & (ks[None, :] < D), other=0.0)
            w = tl.load(W + cols[None, :].to(tl.int64) * stride_w + ks[:, None],
                        mask=col_ok[None, :] & (ks[:, None] < D), other=0.0)
            z = _dot(h, w, z, FP32)
        z = z * inv_temp
        lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
        g = tl.load(GT + rows, mask=row_ok, other=0.0)
        tgt = tl.load(TGT + rows, mask=row_ok, other=-1)
        p = tl.exp(z - lse[:, None])
        coef = g[:, None] + tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        if ENTROPY:
            ge = tl.load(GE + rows, mask=row_ok, other=0.0)
            ez = tl.load(EZ + rows, mask=row_ok, other=0.0)
            coef += ge[:, None] * (z - ez[:, None])
        grad = (tl.where(cols[None, :] == tgt[:, None], g[:, None], 0.0) - p * coef) * inv_temp
        tl.store(OUT + rows[:, None].to(tl.int64) * stride_o + cols[None, :],
                 grad.to(OUT.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _matmul_kernel(A, B, C, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       FP32: tl.constexpr, ACCUMULATE: tl.constexpr):
        """C (+)= A @ B, fp32 C; strided, so dH = G @ W and dW += G.T @ H are the same kernel."""
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(A + rm[:, None].to(tl.int64) * stride_am + rk[None, :].to(tl.int64) * stride_ak,
                        mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
            b = tl.load(B + rk[:, None].to(tl.int64) * stride_bk + rn[None, :].to(tl.int64) * stride_bn,
                        mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)
            acc = _dot(a, b, acc, FP32)
        c_ptr = C + rm[:, None].to(tl.int64) * stride_cm + rn[None, :].to(tl.int64) * stride_cn
        c_ok = (rm[:, None] < M) & (rn[None, :] < N)
        if ACCUMULATE:  # each C tile belongs to one program: deterministic, no atomics
            acc += tl.load(c_ptr, mask=c_ok, other=0.0)
        tl.store(c_ptr, acc, mask=c_ok)


# Tile sizes (BLOCK_N/M, BLOCK_V/N, BLOCK_D/K, num_warps) and forward vocab splits. Not autotuned;
# tests shrink them to exercise the tile edges under the interpreter.
TRITON_CONFIG = dict(fwd=(64, 128, 64, 8), dlogits=(64, 128, 64, 8), matmul=(64, 64, 32, 4), splits=None)


def _triton_fp32(h, W):
    """Load fp32 operands for tl.dot unless both are the same 16-bit type (interpreter: always)."""
    same16 = h.dtype == W.dtype and h.dtype in (torch.bfloat16, torch.float16)
    return not same16 or os.environ.get("TRITON_INTERPRET") == "1"


def _triton_matmul(a, b, c, accumulate, fp32):
    BM, BN, BK, warps = TRITON_CONFIG["matmul"]
    M, K = a.shape
    N = b.shape[1]
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _matmul_kernel[grid](a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                         c.stride(0), c.stride(1), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, FP32=fp32,
                         ACCUMULATE=accumulate, num_warps=warps)


def _triton_forward(h, W, targets, inv_temp, want_entropy, chunk_bytes):
    """Forward kernel over (token blocks, vocab splits), then combine the splits' partial sums."""
    N, D = h.shape
    V = W.shape[0]
    BN, BV, BD, warps = TRITON_CONFIG["fwd"]
    n_tiles, n_blocks = triton.cdiv(V, BV), triton.cdiv(N, BN)
    splits = TRITON_CONFIG["splits"]
    if splits is None:  # enough programs to fill the GPU when there are few token blocks
        sms = torch.cuda.get_device_properties(h.device).multi_processor_count if h.is_cuda else 4
        splits = triton.cdiv(2 * sms, n_blocks)
    tiles_per_split = triton.cdiv(n_tiles, max(1, min(splits, n_tiles)))
    splits = triton.cdiv(n_tiles, tiles_per_split)  # so that no split is empty
    m, s, a, zt = torch.empty(4, splits, N, device=h.device, dtype=torch.float32)
    _logprob_fwd_kernel[(n_blocks, splits)](h, W, targets, m, s, a, zt, N, V, D, h.stride(0), W.stride(0),
                                            inv_temp, tiles_per_split, BLOCK_N=BN, BLOCK_V=BV, BLOCK_D=BD,
                                            FP32=_triton_fp32(h, W), num_warps=warps)
    m_max = m.amax(0)
    scale = torch.exp(m - m_max)
    s_tot = (s * scale).sum(0)
    lse = m_max + torch.log(s_tot)
    logp = zt.sum(0) - lse
    if not want_entropy:
        return logp, None, lse, None
    ez = (a * scale).sum(0) / s_tot
    return logp, lse - ez, lse, ez


def _triton_backward(h, W, targets, lse, ez, g, g_ent, inv_temp, need_dh, need_dw, chunk_bytes):
    """Per token chunk: the dlogits kernel fills a [chunk, V] block, two matmuls give dH and dW."""
    N, D = h.shape
    V = W.shape[0]
    fp32 = _triton_fp32(h, W)
    gdtype = torch.float32 if fp32 else W.dtype  # bf16 gradients of logits, fp32 accumulation
    n_chunk = max(16, min(N, chunk_bytes // (V * torch.finfo(gdtype).bits // 8)))
    G = torch.empty(n_chunk, V, device=h.device, dtype=gdtype)
    g = (g if g is not None else torch.zeros(N, device=h.device)).float().contiguous()
    ge = g_ent.float().contiguous() if g_ent is not None else g
    ez = ez if ez is not None else g
    dh = torch.empty(N, D, device=h.device) if need_dh else None
    dw = torch.zeros(V, D, device=h.device) if need_dw else None
    BN, BV, BD, warps = TRITON_CONFIG["dlogits"]
    for n0 in range(0, N, n_chunk):
        n1 = min(N, n0 + n_chunk)
        Gc = G[:n1 - n0]
        grid = (triton.cdiv(n1 - n0, BN), triton.cdiv(V, BV))
        _logprob_dlogits_kernel[grid](h[n0:n1], W, targets[n0:n1], lse[n0:n1], g[n0:n1], ge[n0:n1], ez[n0:n1],
                                      Gc, n1 - n0, V, D, h.stride(0), W.stride(0), Gc.stride(0), inv_temp,
                                      BLOCK_N=BN, BLOCK_V=BV, BLOCK_D=BD, FP32=fp32,
                                      ENTROPY=g_ent is not None, num_warps=warps)
        if need_dh:
            _triton_matmul(Gc, W, dh[n0:n1], accumulate=False, fp32=fp32)
        if need_dw:
            _triton_matmul(Gc.T, h[n0:n1], dw, accumulate=True, fp32=fp32)
    return dh, dw


class _FusedLogprob(torch.autograd.Function):
    """(hidden, weight) -> (logp [N], entropy [N]); saves only hidden, weight, targets, lse, E[z]."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, want_entropy, backend, chunk_bytes):
        fwd = _triton_forward if backend == "triton" else _torch_forward
        logp, ent, lse, ez = fwd(hidden, weight, targets, inv_temp, want_entropy, chunk_bytes)
        ctx.save_for_backward(hidden, weight, targets, lse, ez)
        ctx.cfg = (inv_temp, backend, chunk_bytes)
        ctx.set_materialize_grads(False)  # an unused entropy output gets None, not a zero tensor
        return logp, (ent if want_entropy else logp.new_empty(0))

    @staticmethod
    def backward(ctx, g, g_ent):
        hidden, weight, targets, lse, ez = ctx.saved_tensors
        inv_temp, backend, chunk_bytes = ctx.cfg
        need_dh, need_dw = ctx.needs_input_grad[:2]
        if (g is None and g_ent is None) or not (need_dh or need_dw):
            return None, None, None, None, None, None, None
        bwd = _triton_backward if backend == "triton" else _torch_backward
        dh, dw = bwd(hidden, weight, targets, lse, ez, g, g_ent if ez is not None else None, inv_temp,
                     need_dh, need_dw, chunk_bytes)
        dh = dh.to(hidden.dtype) if need_dh else None
        dw = dw.to(weight.dtype) if need_dw else None
        return dh, dw, None, None, None, None, None


def token_logprobs(hidden, weight, targets, temperature=1.0, return_entropy=False, *, backend=None,
                   chunk_bytes=None):
    """log p(targets) under softmax(hidden @ weight.T / temperature), never building [N, V] logits.

    hidden [..., d] (any float dtype), weight [V, d], targets [...] int -> logp [...] fp32, plus the
    entropy of that distribution [...] fp32 with return_entropy (differentiable too). Differentiable
    w.r.t. hidden and weight; fp32 accumulation. backend: None picks "triton" for CUDA tensors when
    triton imports, else "torch". chunk_bytes: size of the logits block held at once.
    """
    if backend is None:
        backend = ("triton" if hidden.is_cuda and triton is not None and targets.numel()
                   and _acc_dtype(hidden, weight) == torch.float32 else "torch")
    if backend == "triton" and triton is None:
        raise RuntimeError("backend='triton' but triton is not installed")
    if chunk_bytes is None:
        chunk_bytes = TRITON_CHUNK_BYTES if backend == "triton" else CHUNK_BYTES
    lead = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).long()
    if backend == "triton":
        h, weight, t = h.contiguous(), weight.contiguous(), t.contiguous()
    logp, ent = _FusedLogprob.apply(h, weight, t, 1.0 / temperature, return_entropy, backend, chunk_bytes)
    if return_entropy:
        return logp.view(lead), ent.view(lead)
    return logp.view(lead)


# -----------------------------------------------------------------------------
# 2. Advantages


def group_advantages(rewards, group_size, scale_std=True, eps=1e-6):
    """GRPO: rewards [P*G] (G samples per prompt, contiguous) -> (r - group mean) / (group std + eps).

    scale_std=False gives Dr. GRPO's r - mean (no difficulty re-weighting). A group whose rewards are
    all equal gets 0 advantages. std is the unbiased one, as in GRPO.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    r = rewards.float().view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    if scale_std and group_size > 1:
        adv = adv / (r.std(1, keepdim=True) + eps)
    return adv.view(-1)


def gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0):
    """GAE(gamma, lambda) over the masked (response) positions of each row.

    rewards, values, mask [B, T] (rewards off the mask are ignored; a sequence reward sits on the
    last response token) -> (advantages [B, T], returns = advantages + values [B, T]), 0 off the mask.
    The value after a row's last response token is 0 (the episode ends there).
    """
    mask = mask.float()
    adv = torch.zeros_like(values, dtype=torch.float32)
    next_value = torch.zeros(values.shape[0], device=values.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(values.shape[1])):
        on = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = torch.where(on, a, 0.0)
        next_value = torch.where(on, values[:, t].float(), next_value)  # skip gaps in the mask
        next_adv = torch.where(on, a, next_adv)
    return adv, (adv + values) * mask


class ValueHead(nn.Module):
    """V(state) from the policy's final hidden state: hidden [..., d] -> values [...] fp32."""

    def __init__(self, hidden_size):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)  # start at V = 0: no random critic noise in the first advantages
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden):
        return self.proj(hidden.float()).squeeze(-1)


# -----------------------------------------------------------------------------
# 3. Loss


def ppo_loss(logp, old_logp, advantages, mask, ref_logp=None, clip_eps=0.2, dual_clip=None, kl_coef=0.001,
             entropy=None, entropy_coef=0.0, num_tokens=None):
    """Clipped-ratio PPO loss, token-level mean over every unmasked token of the batch.

    logp, old_logp, advantages, mask [B, T] (a [B] sequence advantage: broadcast it first);
    ref_logp [B, T] for the k3 KL penalty (skipped when None or kl_coef == 0); dual_clip c > 1
    bounds the loss of negative-advantage tokens by -c*A; entropy [B, T] for logging and, with
    entropy_coef > 0, a bonus (then it must be differentiable). num_tokens: the normaliser when this
    is one micro-batch of a larger minibatch (default mask.sum()).
    Returns (loss, stats) with stats python floats: pg_loss, clip_frac, approx_kl (old -> new, k3),
    ratio, entropy, kl_ref.
    """
    on = mask > 0
    m = on.float()
    n = (m.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=torch.float32)).clamp(min=1)
    log_ratio = torch.where(on, logp - old_logp, 0.0)  # where, not *mask: garbage off the mask stays out
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    pg = torch.maximum(pg1, pg2)
    if dual_clip is not None:
        pg = torch.where(advantages < 0, torch.minimum(pg, -advantages * dual_clip), pg)
    per_token = pg
    kl = None
    if ref_logp is not None and kl_coef > 0:
        d = torch.where(on, ref_logp - logp, 0.0)
        kl = torch.exp(d) - d - 1  # k3: unbiased, always >= 0
        per_token = per_token + kl_coef * kl
    if entropy is not None and entropy_coef > 0:
        per_token = per_token - entropy_coef * entropy
    loss = torch.where(on, per_token, 0.0).sum() / n

    with torch.no_grad():
        k = m.sum().clamp(min=1)

        def mean(x):
            return float(torch.where(on, x.float(), 0.0).sum() / k)

        stats = dict(pg_loss=mean(pg), clip_frac=mean(pg2 > pg1), approx_kl=mean(ratio - 1 - log_ratio),
                     ratio=mean(ratio), entropy=mean(entropy) if entropy is not None else 0.0,
                     kl_ref=mean(kl) if kl is not None else 0.0)
    return loss, stats


def value_loss(values, old_values, returns, mask, value_clip=0.2, num_tokens=None):
    """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2), token-level mean. [B, T] each."""
    m = mask.float()
    n = (m.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=torch.float32)).clamp(min=1)
    err = (values - returns) ** 2
    if value_clip is not None:
        clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
        err = torch.maximum(err, (clipped - returns) ** 2)
    return 0.5 * (err * m).sum() / n


# -----------------------------------------------------------------------------
# 4. The update


@dataclass
class PPOConfig:
    """Every PPO hyperparameter, once."""

    epochs: int = 1                  # passes over the batch per update
    minibatch_size: int = 0          # rows per optimizer step (0: the whole batch)
    micro_batch_size: int = 0        # rows per forward/backward, gradients accumulated (0: the minibatch)
    clip_eps: float = 0.2            # ratio clip range [1 - eps, 1 + eps]
    dual_clip: float | None = None   # dual-clip constant c > 1 for negative advantages (None: off)
    kl_coef: float = 0.001           # k3 KL to the frozen reference; 0 skips the reference pass
    entropy_coef: float = 0.0        # entropy bonus
    max_grad_norm: float = 1.0       # clip the global gradient norm before each step
    temperature: float = 1.0         # sampling temperature: the ratio compares the sampler's distribution
    advantage: str = "group"         # "group" (GRPO, RLSR's setting) or "gae" (value head, classic PPO)
    group_size: int = 0              # group: samples per prompt, rows contiguous (when the batch has rewards)
    scale_std: bool = True           # group: divide by the group std (False: Dr. GRPO)
    gamma: float = 1.0               # gae: discount
    lam: float = 1.0                 # gae: lambda
    vf_coef: float = 0.5             # gae: weight of the value loss
    value_clip: float | None = 0.2   # gae: clip the value change per update (None: unclipped)
    whiten_gae: bool = True          # gae: normalise advantages over the batch's response tokens
    recompute_old_logp: bool = True  # behaviour log-probs from our own forward, not the sampler's


def response_logprobs(model, input_ids, response_mask, temperature=1.0, return_entropy=False, value_head=None):
    """One forward; lm_head fused into the log-prob for the response positions only.

    input_ids, response_mask [B, T] -> logp [B, T], entropy [B, T] or None, values [B, T] or None
    (0 off the mask; position t holds token t's log-prob from hidden[t-1], see the module docstring).
    """
    hidden = model(input_ids, return_hidden=True)            # [B, T, d]
    on = response_mask[:, 1:] > 0
    h = hidden[:, :-1][on]                                   # [N, d]: the states that predict response tokens
    out = token_logprobs(h, model.output_weight, input_ids[:, 1:][on], temperature, return_entropy)
    logp, ent = out if return_entropy else (out, None)

    def to_bt(x):  # [N] -> [B, T], zeros elsewhere (differentiable)
        return F.pad(torch.zeros(on.shape, device=x.device, dtype=x.dtype).masked_scatter(on, x), (1, 0))

    values = to_bt(value_head(h)) if value_head is not None else None
    return to_bt(logp), (to_bt(ent) if ent is not None else None), values


def _select(rows, mask, tensors):
    """Rows of mask and of each [B, T] tensor in a dict, without the right padding after the last
    response token among those rows (causal attention: the dropped columns change nothing)."""
    m = mask[rows]
    T = int((m > 0).any(0).nonzero().max()) + 1 if m.any() else 1
    return m[:, :T], {k: x[rows, :T] for k, x in tensors.items()}


def _split(rows, size):
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def tokens_per_rank(n):
    """Response tokens n (a tensor), or under torchrun their mean over the ranks: each rank's loss is
    its token sum / that mean, and FSDP averages gradients over ranks, so the gradient is the
    token-level mean over the global minibatch (2 ranks x half the batch == 1 rank x all of it)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        n = n.clone()
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n


def ppo_update(policy, optimizer, batch, cfg: PPOConfig, ref_model=None, value_head=None):
    """Run cfg.epochs x minibatches of PPO on one batch of rollouts; returns mean stats (floats).

    batch: input_ids [B, T] (prompt + completion, right padded), response_mask [B, T] (1 at
    completion tokens: position t is token t, predicted from hidden[t-1]), advantages [B] or [B, T]
    (or rewards [B] with cfg.group_size for group advantages; rewards [B] for gae), optionally
    old_logp [B, T] (the sampler's, at cfg.temperature) and ref_logp [B, T]. With gae, value_head's
    parameters must be in the optimizer. Old log-probs: unless cfg.recompute_old_logp is False and
    old_logp is given, they come from our own forward -- the first minibatch of epoch 0 takes them
    from its training forward (no step has happened yet), the other rows from one no-grad pass first.
    Stats: token-weighted means of ppo_loss's stats, plus loss, grad_norm, vf_loss (gae) and
    sampler_logp_err (max |sampler - recomputed| old log-prob, when both exist).
    """
    ids, mask = batch["input_ids"], batch["response_mask"].float()
    B, T = ids.shape
    dev = ids.device
    gae = cfg.advantage == "gae"
    if gae and value_head is None:
        raise ValueError("advantage='gae' needs a value_head")
    mb = cfg.minibatch_size or B
    micro = min(cfg.micro_batch_size or mb, mb)
    perms = [torch.randperm(B).to(dev) for _ in range(cfg.epochs)]
    have_old = batch.get("old_logp") is not None
    need_old = not have_old or cfg.recompute_old_logp
    old_logp = torch.zeros(B, T, device=dev) if need_old else batch["old_logp"].float()

    # no-grad pass: old log-probs of the rows outside epoch 0's first minibatch; with gae, old values of all rows
    pre_rows = torch.arange(B, device=dev) if gae else perms[0][mb:] if need_old else perms[0][:0]
    old_values = torch.zeros(B, T, device=dev) if gae else None
    with torch.no_grad():
        for r in _split(pre_rows, micro):
            mask_r, x = _select(r, mask, dict(ids=ids))
            lp, _, v = response_logprobs(policy, x["ids"], mask_r, cfg.temperature,
                                         value_head=value_head if gae else None)
            if need_old:
                old_logp[r, :lp.shape[1]] = lp
            if gae:
                old_values[r, :v.shape[1]] = v

    # advantages, per token
    if gae:
        last = (mask * torch.arange(T, device=dev)).argmax(1)  # the sequence reward goes on the last response token
        rewards = torch.zeros(B, T, device=dev).scatter(1, last[:, None], batch["rewards"].float()[:, None])
        adv, returns = gae_advantages(rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_gae:
            on = mask > 0
            adv = torch.where(on, (adv - adv[on].mean()) / (adv[on].std() + 1e-8), 0.0)
    else:
        adv = batch.get("advantages")
        if adv is None:
            adv = group_advantages(batch["rewards"], cfg.group_size, cfg.scale_std)
        adv = adv.float()
        adv = (adv[:, None] if adv.dim() == 1 else adv) * mask

    # reference log-probs for the KL penalty (kl_coef == 0: no reference pass at all)
    ref_logp = batch.get("ref_logp") if cfg.kl_coef > 0 else None
    if cfg.kl_coef > 0 and ref_logp is None:
        if ref_model is None:
            raise ValueError("kl_coef > 0 needs batch['ref_logp'] or a ref_model")
        ref_logp = torch.zeros(B, T, device=dev)
        with torch.no_grad():
            for r in _split(torch.arange(B, device=dev), micro):
                mask_r, x = _select(r, mask, dict(ids=ids))
                ref_logp[r, :mask_r.shape[1]] = response_logprobs(ref_model, x["ids"], mask_r, cfg.temperature)[0]

    per_row = dict(ids=ids, adv=adv, old=old_logp)
    if ref_logp is not None:
        per_row["ref"] = ref_logp
    if gae:
        per_row.update(old_values=old_values, returns=returns)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums, weights = {}, {}

    def log(name, value, w=1.0):
        sums[name] = sums.get(name, 0.0) + value * w
        weights[name] = weights.get(name, 0.0) + w

    for epoch, perm in enumerate(perms):
        for i0 in range(0, B, mb):
            rows = perm[i0:i0 + mb]
            n_tok = tokens_per_rank(mask[rows].sum()).clamp(min=1)  # token-level mean over the whole minibatch
            optimizer.zero_grad(set_to_none=True)
            mb_loss = 0.0
            for r in _split(rows, micro):
                mask_r, x = _select(r, mask, per_row)
                logp, ent, values = response_logprobs(policy, x["ids"], mask_r, cfg.temperature, True,
                                                      value_head if gae else None)
                if need_old and epoch == 0 and i0 == 0 and not gae:  # no step yet: this forward is the old policy
                    x["old"] = logp.detach()
                    old_logp[r, :mask_r.shape[1]] = x["old"]
                    if have_old:
                        on = mask_r > 0
                        err = (batch["old_logp"][r, :mask_r.shape[1]].float() - x["old"])[on].abs()
                        log("sampler_logp_err", float(err.max()) if err.numel() else 0.0)
                loss, st = ppo_loss(logp, x["old"], x["adv"], mask_r, x.get("ref"), cfg.clip_eps, cfg.dual_clip,
                                    cfg.kl_coef, ent, cfg.entropy_coef, num_tokens=n_tok)
                if gae:
                    vl = value_loss(values, x["old_values"], x["returns"], mask_r, cfg.value_clip, n_tok)
                    loss = loss + cfg.vf_coef * vl
                    st["vf_loss"] = float(vl.detach() * n_tok / mask_r.sum().clamp(min=1))
                loss.backward()
                mb_loss += float(loss.detach())
                for k, v in st.items():
                    log(k, v, float(mask_r.sum()))
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            log("loss", mb_loss)
            log("grad_norm", float(grad_norm))
    return {k: sums[k] / max(weights[k], 1e-12) for k in sums}
