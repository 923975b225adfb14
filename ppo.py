"""PPO for RLSR: advantages, the clipped loss, the update loop, and the fused log-probs they run on.

Reads top to bottom:
  1. Advantages   -- all of them, in token_advantages: `group` (GRPO / Dr. GRPO, RLSR's setting; the
                     proposer's rows normalised among themselves) and `gae` (a value head, classic PPO).
  2. Loss         -- ppo_loss: clipped ratio (+ dual clip), k3 KL to the reference, entropy bonus,
                     token-level mean over the batch; value_loss for gae.
  3. Update       -- response_logprobs (one forward, lm_head fused into the log-probs); prepare (one
                     no-grad pass: old and reference log-probs, values, advantages), then update (one
                     flat loop of epochs x minibatches, micro-batches accumulating gradients);
                     ppo_update is the two in a row.
  4. Token log-probs -- log p(target) under softmax(hidden @ W.T / T) without ever building the
                     [tokens, vocab] logits (Qwen's 151,936-token vocab makes them gigabytes):
                     a chunked PyTorch autograd Function everywhere, Triton kernels on CUDA.

Convention for [B, T] tensors (input_ids, response_mask, logp, old_logp, ref_logp, advantages,
values): position t refers to token input_ids[:, t], predicted from hidden[:, t-1]. So
response_mask[:, t] = 1 where input_ids[:, t] is a sampled completion token, response_mask[:, 0]
is always 0, and logp[:, t] = log p(input_ids[:, t] | input_ids[:, :t]) (0 off the mask).

Precision: the policy keeps fp32 master weights; with compute_dtype=torch.bfloat16 each forward
runs in its own autocast region and the log-probs take bf16 hidden states and a bf16 lm_head
(fp32 accumulation), so the Triton kernels use tensor cores.
"""

import os
from contextlib import nullcontext

import torch
import torch.nn as nn

from distributed import mean_over_ranks, world_size

try:  # Triton is optional: ppo.py imports and runs (PyTorch path) without it
    import triton
    import triton.language as tl
except ImportError:
    triton = None

# -----------------------------------------------------------------------------
# 1. Advantages


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


def proposal_advantages(rewards, eps=1e-6):
    """The proposer's normalisation (--train-proposer): rewards [P] of the step's proposals -> each
    against the others, (r - mean) / (std + eps); fewer than two proposals get 0."""
    if rewards.numel() < 2:
        return torch.zeros_like(rewards)
    return (rewards - rewards.mean()) / (rewards.std() + eps)


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


def token_advantages(cfg, batch, mask, values=None):
    """Every row's advantage at its response tokens -> (advantages [B, T], returns [B, T] or None), 0
    off the response mask [B, T].

    gae: GAE over values [B, T] with the sequence reward batch["rewards"] [B] on each row's last
    response token, whitened over the batch's response tokens with cfg.whiten_gae. group: given
    batch["advantages"] ([B] or [B, T]) as they are, or from batch["rewards"] [B]: the rollouts (G
    per problem, contiguous) against their group, then the last batch["proposals"] rows (the
    proposer's) against each other; a [B] advantage is broadcast over the row's response tokens."""
    if cfg.advantage == "gae":
        B, T = mask.shape
        last = (mask * torch.arange(T, device=mask.device)).argmax(1)
        rewards = torch.zeros(B, T, device=mask.device).scatter(1, last[:, None], batch["rewards"].float()[:, None])
        adv, returns = gae_advantages(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_gae:
            on = mask > 0
            adv = torch.where(on, (adv - adv[on].mean()) / (adv[on].std() + 1e-8), 0.0)
        return adv, returns
    adv = batch.get("advantages")
    if adv is None:
        rewards = batch["rewards"]
        n = len(rewards) - batch.get("proposals", 0)
        adv = torch.cat([group_advantages(rewards[:n], cfg.group_size, cfg.scale_std),
                         proposal_advantages(rewards[n:])])
    adv = adv.float()
    return (adv[:, None] if adv.dim() == 1 else adv) * mask, None


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
# 2. Loss


def ppo_loss(logp, old_logp, advantages, mask, ref_logp=None, clip_eps=0.2, dual_clip=None, kl_coef=0.001,
             entropy=None, entropy_coef=0.0, num_tokens=None):
    """Clipped-ratio PPO loss, token-level mean over every unmasked token of the batch.

    logp, old_logp, advantages, mask [B, T] (a [B] sequence advantage: broadcast it first);
    ref_logp [B, T] for the k3 KL penalty (skipped when None or kl_coef == 0); dual_clip c > 1
    bounds the loss of negative-advantage tokens by -c*A (None or 0: off); entropy [B, T] for
    logging and, with entropy_coef > 0, a bonus (then it must be differentiable). num_tokens: the
    normaliser when this is one micro-batch of a larger minibatch (default mask.sum()).
    Returns (loss, stats): stats are 0-d fp32 tensors (no host sync), means over the masked tokens:
    pg_loss, clip_frac, approx_kl (old -> new, k3), ratio, entropy, kl_ref.
    """
    on = mask > 0
    m = on.float()
    n = (m.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=torch.float32)).clamp(min=1)
    log_ratio = torch.where(on, logp - old_logp, 0.0)  # where, not *mask: garbage off the mask stays out
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    pg = torch.maximum(pg1, pg2)
    if dual_clip:
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
            return torch.where(on, x.float(), 0.0).sum() / k if x is not None else k.new_zeros(())

        stats = dict(pg_loss=mean(pg), clip_frac=mean(pg2 > pg1), approx_kl=mean(ratio - 1 - log_ratio),
                     ratio=mean(ratio), entropy=mean(entropy), kl_ref=mean(kl))
    return loss, stats


def value_loss(values, old_values, returns, mask, value_clip=0.2, num_tokens=None):
    """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2), token-level mean. [B, T] each;
    value_clip None or 0: unclipped."""
    m = mask.float()
    n = (m.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=torch.float32)).clamp(min=1)
    err = (values - returns) ** 2
    if value_clip:
        clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
        err = torch.maximum(err, (clipped - returns) ** 2)
    return 0.5 * (err * m).sum() / n


# -----------------------------------------------------------------------------
# 3. The update


def forward_autocast(device, compute_dtype):
    """bf16 autocast for one forward, or nothing for fp32. A fresh region per forward and no weight-cast
    cache: a cached bf16 copy would outlive optimizer.step() and later forwards would see old weights."""
    if compute_dtype == torch.float32:
        return nullcontext()
    if compute_dtype != torch.bfloat16:
        raise ValueError(f"compute_dtype must be torch.float32 or torch.bfloat16, got {compute_dtype}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False)


def response_logprobs(model, input_ids, response_mask, temperature=1.0, return_entropy=False, value_head=None,
                      compute_dtype=torch.float32):
    """One forward; lm_head fused into the log-prob for the response positions only.

    input_ids, response_mask [B, T] -> logp [B, T] fp32, entropy [B, T] or None, values [B, T] or None
    (0 off the mask; position t holds token t's log-prob from hidden[t-1], see the module docstring).
    response_mask may stay on the host (a CPU tensor) while input_ids is on the GPU: the response
    positions are then found on the host and sent with a non-blocking copy, so the call never waits for
    the device (a mask on the device costs one sync, to count its response tokens).
    compute_dtype=torch.bfloat16: the forward runs in its own autocast region, and the log-probs get
    bf16 hidden states [N, d] and a bf16 cast of the lm_head [V, d] (its gradient reaches the fp32
    weight through the cast); the value head stays fp32.
    """
    B, T = input_ids.shape
    rows, cols = (response_mask[:, 1:] > 0).nonzero(as_tuple=True)  # column 0 has no state before it
    positions = (rows * T + cols + 1).to(input_ids.device, non_blocking=True)  # [N] response tokens in [B*T]
    with forward_autocast(input_ids.device, compute_dtype):
        hidden = model(input_ids, return_hidden=True)        # [B, T, d]
    h = hidden.reshape(B * T, -1).index_select(0, positions - 1)  # [N, d]: the states that predict them
    W = model.output_weight                                  # [V, d]
    targets = input_ids.reshape(-1).index_select(0, positions)  # [N]
    out = token_logprobs(h.to(compute_dtype), W.to(compute_dtype), targets, temperature, return_entropy)
    logp, ent = out if return_entropy else (out, None)

    def to_bt(x):  # [N] -> [B, T], zeros elsewhere (differentiable)
        return x.new_zeros(B * T).index_copy(0, positions, x).view(B, T)

    values = to_bt(value_head(h)) if value_head is not None else None
    return to_bt(logp), (to_bt(ent) if ent is not None else None), values


def tokens_per_rank(n):
    """Response tokens n (a tensor), or under torchrun their mean over the ranks: each rank's loss is
    its token sum / that mean, and FSDP averages gradients over ranks, so the gradient is the
    token-level mean over the global minibatch (2 ranks x half the batch == 1 rank x all of it)."""
    return mean_over_ranks(n)


def minibatch_sizes(cfg, B) -> tuple[int, int]:
    """(rows per optimizer step, rows per forward) of this rank's B rows: cfg.minibatch_size is global,
    over all torchrun ranks (0: the whole batch); cfg.micro_batch_size is per rank (0: the minibatch)."""
    world = world_size()
    if cfg.minibatch_size % world:
        raise ValueError(f"minibatch_size {cfg.minibatch_size} is global: it must be a multiple of the "
                         f"{world} ranks")
    mb = cfg.minibatch_size // world or B
    return mb, min(cfg.micro_batch_size or mb, mb)


def _split(rows, size):
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def _rows(batch, rows, keys) -> tuple:
    """Rows (host indices) of the batch's [B, T] tensors named in keys (absent or None ones skipped),
    cut after the rows' last response token (causal attention: the cut columns change nothing)
    -> (the indices on the device, {key: [rows, t]}, each where its tensor is)."""
    t = int(batch["ends"][rows].max())
    r = rows.to(batch["input_ids"].device, non_blocking=True)  # a pageable host->device copy: no wait
    return r, {k: batch[k][rows if batch[k].device == rows.device else r, :t] for k in keys
               if batch.get(k) is not None}


def ppo_update(policy, optimizer, batch, cfg, ref_model=None, value_head=None, compute_dtype=torch.float32):
    """PPO on one batch of rollouts: prepare (everything the update needs), then update (cfg.ppo_epochs
    x minibatches) -> mean stats (floats). The arguments are theirs."""
    prepared = prepare(policy, batch, cfg, ref_model, value_head, compute_dtype)
    return update(policy, optimizer, prepared, cfg, value_head, compute_dtype)


def prepare(policy, batch, cfg, ref_model=None, value_head=None, compute_dtype=torch.float32) -> dict:
    """Everything the update needs, computed before its first step by one no-grad pass over the rows
    (micro-batches of cfg.micro_batch_size) -> a new dict: the batch, plus or replaced:

      old_logp [B, T]    the policy's own (unless cfg.recompute_old_logp is False and the batch holds
                         the sampler's), at cfg.temperature
      ref_logp [B, T]    ref_model's when cfg.kl_coef > 0 (unless the batch holds them), else None
      old_values, returns [B, T]   with gae: value_head's values, and GAE's returns (else None)
      advantages [B, T]  token_advantages, 0 off the response mask
      host_mask [B, T]   (host) the response mask: response_logprobs finds the positions without a sync
      ends [B]           (host) each row's last response position + 1: micro-batches cut the padding
      sampler_logp_err   0-d: max |sampler - recomputed| old log-prob over all response tokens (or None)

    batch (this rank's rows): input_ids [B, T] (prompt + completion, right padded), response_mask
    [B, T] (1 at completion tokens: position t is token t, predicted from hidden[t-1]), advantages [B]
    or [B, T], or rewards [B] (+ proposals, see token_advantages); optionally old_logp [B, T] (the
    sampler's, at cfg.temperature) and ref_logp [B, T]. cfg: a config.TrainConfig, duck-typed.
    """
    ids, mask = batch["input_ids"], batch["response_mask"].float()
    B, T = ids.shape
    gae = cfg.advantage == "gae"
    if gae and value_head is None:
        raise ValueError("advantage='gae' needs a value_head")
    ref_logp = batch.get("ref_logp") if cfg.kl_coef > 0 else None  # kl_coef == 0: no reference at all
    need_ref = cfg.kl_coef > 0 and ref_logp is None
    if need_ref and ref_model is None:
        raise ValueError("kl_coef > 0 needs batch['ref_logp'] or a ref_model")
    sampler_logp = batch.get("old_logp")
    recompute = sampler_logp is None or cfg.recompute_old_logp
    old_logp = torch.zeros(B, T, device=ids.device) if recompute else sampler_logp.float()
    if need_ref:
        ref_logp = torch.zeros(B, T, device=ids.device)
    old_values = torch.zeros(B, T, device=ids.device) if gae else None
    host_mask = mask.cpu()  # the update's one host sync
    ends = ((host_mask > 0) * torch.arange(1, T + 1)).amax(1).clamp(min=1)
    out = dict(batch, response_mask=mask, host_mask=host_mask, ends=ends)
    errors = []  # per micro-batch: max |sampler - recomputed| old log-prob
    with torch.no_grad():
        for rows in _split(torch.arange(B), minibatch_sizes(cfg, B)[1]):
            r, x = _rows(out, rows, ("input_ids", "response_mask", "host_mask"))
            m, t = x["response_mask"], x["response_mask"].shape[1]
            if recompute or gae:
                lp, _, v = response_logprobs(policy, x["input_ids"], x["host_mask"], cfg.temperature, False,
                                             value_head if gae else None, compute_dtype)
                if recompute:
                    old_logp[r, :t] = lp
                if recompute and sampler_logp is not None:
                    errors.append(torch.where(m > 0, (sampler_logp[r, :t].float() - lp).abs(), 0.0).amax())
                if gae:
                    old_values[r, :t] = v
            if need_ref:
                ref_logp[r, :t] = response_logprobs(ref_model, x["input_ids"], x["host_mask"], cfg.temperature,
                                                    False, None, compute_dtype)[0]
    advantages, returns = token_advantages(cfg, batch, mask, old_values)
    out.update(old_logp=old_logp, ref_logp=ref_logp, old_values=old_values, returns=returns, advantages=advantages,
               sampler_logp_err=torch.stack(errors).amax() if errors else None)
    return out


def update(policy, optimizer, batch, cfg, value_head=None, compute_dtype=torch.float32) -> dict:
    """cfg.ppo_epochs x minibatches of PPO on a prepared batch (see prepare) -> mean stats (floats).

    Each epoch shuffles the rows (torch's global RNG); each minibatch (cfg.minibatch_size rollouts,
    global) is one optimizer step on the token-level mean loss over its response tokens (all ranks'),
    its gradient accumulated over micro-batches (cfg.micro_batch_size rollouts per forward, per
    rank). With gae, value_head's parameters must be in the optimizer. compute_dtype: torch.float32,
    or torch.bfloat16 for bf16 forwards over the fp32 weights, each in its own autocast region (see
    response_logprobs); do not wrap the call in autocast: one region around it caches bf16 weights
    across the steps. Stats: token-weighted means of ppo_loss's stats (and vf_loss with gae), the
    mean per optimizer step of loss and grad_norm, and prepare's sampler_logp_err; kept as device
    tensors and read once at the end.
    """
    B = batch["input_ids"].shape[0]
    mb, micro = minibatch_sizes(cfg, B)
    keys = ("input_ids", "response_mask", "host_mask", "old_logp", "advantages", "ref_logp", "old_values", "returns")
    head = value_head if cfg.advantage == "gae" else None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums, tokens, steps = {}, 0.0, 0  # running sums as fp64 device tensors: no host sync until the end
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(B)  # host indices: row lengths need no sync
        for i0 in range(0, B, mb):
            rows = perm[i0:i0 + mb]
            r = rows.to(batch["input_ids"].device, non_blocking=True)
            n_tok = tokens_per_rank(batch["response_mask"][r].sum()).clamp(min=1)  # the minibatch's token count
            optimizer.zero_grad(set_to_none=True)
            mb_loss = 0.0
            for micro_rows in _split(rows, micro):
                loss, st, n_r = micro_batch_loss(policy, _rows(batch, micro_rows, keys)[1], cfg, n_tok, head,
                                                 compute_dtype)
                loss.backward()
                mb_loss = mb_loss + loss.detach().double()
                for k, v in st.items():
                    sums[k] = sums.get(k, 0.0) + v.double() * n_r
                tokens = tokens + n_r
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            sums["loss"] = sums.get("loss", 0.0) + mb_loss
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm.double()
            steps += 1
    return mean_stats(sums, tokens, steps, batch.get("sampler_logp_err"))


def micro_batch_loss(policy, x, cfg, n_tok, value_head, compute_dtype) -> tuple:
    """One forward of a micro-batch (x: the prepared [rows, t] tensors) -> (its part of the minibatch's
    loss, normalised by the minibatch's n_tok tokens; its stats; its response tokens, fp64)."""
    mask = x["response_mask"]
    logp, ent, values = response_logprobs(policy, x["input_ids"], x["host_mask"], cfg.temperature, True, value_head,
                                          compute_dtype)
    loss, st = ppo_loss(logp, x["old_logp"], x["advantages"], mask, x.get("ref_logp"), cfg.clip_eps, cfg.dual_clip,
                        cfg.kl_coef, ent, cfg.entropy_coef, num_tokens=n_tok)
    if value_head is not None:
        vl = value_loss(values, x["old_values"], x["returns"], mask, cfg.value_clip, n_tok)
        loss = loss + cfg.vf_coef * vl
        st["vf_loss"] = vl.detach() * n_tok / mask.sum().clamp(min=1)
    return loss, st, mask.sum().double()


def mean_stats(sums, tokens, steps, sampler_err=None) -> dict:
    """The update's running sums (device tensors) -> floats, with the update's one host sync: loss and
    grad_norm per optimizer step, sampler_logp_err (a 0-d tensor) as it is, the rest per token."""
    if not sums:
        return {}
    if sampler_err is not None:  # a max over every response token of the batch, not a mean
        sums["sampler_logp_err"] = sampler_err.double()
    names = list(sums)
    *values, n_tokens = torch.stack([sums[k] for k in names] + [tokens]).tolist()
    per = dict(loss=steps, grad_norm=steps, sampler_logp_err=1)  # the rest: per response token
    return {k: v / max(per.get(k, n_tokens), 1e-12) for k, v in zip(names, values)}


# -----------------------------------------------------------------------------
# 4. Token log-probs without [N, V] logits


CHUNK_BYTES = 32 * 2**20          # PyTorch path: one fp32 [tokens, vocab] logits block (~32 MB)
TRITON_CHUNK_BYTES = 256 * 2**20  # Triton backward: one [tokens, vocab] block of logit gradients


def token_logprobs(hidden, weight, targets, temperature=1.0, return_entropy=False, *, backend=None,
                   chunk_bytes=None):
    """log p(targets) under softmax(hidden @ weight.T / temperature), never building [N, V] logits.

    hidden [..., d] (any float dtype), weight [V, d], targets [...] int -> logp [...] fp32, plus the
    entropy of that distribution [...] fp32 with return_entropy (differentiable too). Differentiable
    w.r.t. hidden and weight (gradients in their dtypes); fp32 accumulation. bf16 hidden and weight
    run the Triton kernels on tensor cores. backend: None picks "triton" for CUDA tensors when triton
    imports, else "torch". chunk_bytes: size of the logits block held at once.
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


def naive_token_logprobs(hidden, weight, targets, temperature=1.0, return_entropy=False):
    """Reference: builds the full [N, V] logits. hidden [N, d], weight [V, d], targets [N] -> [N]."""
    acc = _acc_dtype(hidden, weight)
    logits = (hidden.to(acc) @ weight.to(acc).T) / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)
    if return_entropy:
        return logp, -(logp_all.exp() * logp_all).sum(-1)
    return logp


class _FusedLogprob(torch.autograd.Function):
    """(hidden [N, d], weight [V, d]) -> (logp [N], entropy [N]); saves only hidden, weight, targets,
    lse and E[z] ([N] each): the backward recomputes the logits block by block."""

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


# --- PyTorch path: chunks of the logits ----------------------------------------------------------


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


# Tile sizes (BLOCK_N, BLOCK_V, BLOCK_D, num_warps) and forward vocab splits. Not autotuned; tests
# shrink them to exercise the tile edges under the interpreter.
TRITON_CONFIG = dict(fwd=(64, 128, 64, 8), dlogits=(64, 128, 64, 8), splits=None)


def _dtype16(h, W):
    """The 16-bit dtype shared by h and W (tensor-core operands), or None."""
    return h.dtype if h.dtype == W.dtype and h.dtype in (torch.bfloat16, torch.float16) else None


def _triton_fp32(h, W):
    """Load fp32 operands for tl.dot unless both are the same 16-bit type (interpreter: always, its
    bf16 tl.dot is wrong)."""
    return _dtype16(h, W) is None or os.environ.get("TRITON_INTERPRET") == "1"


def _on_device(t):
    """Launch kernels on t's GPU, not the current one (a process may use cuda:1 without set_device)."""
    return torch.cuda.device(t.device) if t.is_cuda else nullcontext()


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
    with _on_device(h):
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
    """Per token chunk: the dlogits kernel recomputes the logits and fills a [chunk, V] block G of
    dL/dz (the one step torch cannot fuse), then GEMMs write dH[chunk] = G @ W and add dW += G.T @ H.

    bf16 inputs: G and the GEMM operands are bf16 (tensor cores); the GEMMs accumulate and write fp32,
    so dW is summed over the chunks in fp32 (an fp32 [V, d]), and past G's own bf16 rounding the only
    one is _FusedLogprob's cast to the inputs' dtype. The chunk is a whole number of BLOCK_N tiles.
    Returns dh [N, d], dw [V, d] fp32 (or None).
    """
    N, D = h.shape
    V = W.shape[0]
    fp32 = _triton_fp32(h, W)
    gdtype = _dtype16(h, W) or torch.float32  # also under the interpreter: the GEMMs run as on the GPU
    BN, BV, BD, warps = TRITON_CONFIG["dlogits"]
    rows = chunk_bytes // (V * torch.finfo(gdtype).bits // 8)
    n_chunk = max(BN, min(triton.cdiv(N, BN), rows // BN) * BN)  # whole tiles: no ragged tile mid-batch
    G = torch.empty(n_chunk, V, device=h.device, dtype=gdtype)
    g = (g if g is not None else torch.zeros(N, device=h.device)).float().contiguous()
    ge = g_ent.float().contiguous() if g_ent is not None else g
    ez = ez if ez is not None else g
    Wg, hg = W.to(gdtype), h.to(gdtype)  # GEMM operands in G's dtype (a copy only for mixed h, W dtypes)
    dh = torch.zeros(N, D, device=h.device) if need_dh else None
    dw = torch.zeros(V, D, device=h.device) if need_dw else None
    for n0 in range(0, N, n_chunk):
        n1 = min(N, n0 + n_chunk)
        Gc = G[:n1 - n0]
        grid = (triton.cdiv(n1 - n0, BN), triton.cdiv(V, BV))
        with _on_device(h):
            _logprob_dlogits_kernel[grid](h[n0:n1], W, targets[n0:n1], lse[n0:n1], g[n0:n1], ge[n0:n1],
                                          ez[n0:n1], Gc, n1 - n0, V, D, h.stride(0), W.stride(0), Gc.stride(0),
                                          inv_temp, BLOCK_N=BN, BLOCK_V=BV, BLOCK_D=BD, FP32=fp32,
                                          ENTROPY=g_ent is not None, num_warps=warps)
        if need_dh:
            _addmm_fp32(dh[n0:n1], Gc, Wg)
        if need_dw:
            _addmm_fp32(dw, Gc.T, hg[n0:n1])
    return dh, dw


_FP32_OUT_GEMM = {}  # device -> whether torch.addmm there writes fp32 from 16-bit operands


def _fp32_out_gemm(device):
    """Whether torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc) accumulates 16-bit a, b into an
    fp32 acc on this device (cuBLAS with an fp32 C; CUDA in recent torch). Tried once per device."""
    if device not in _FP32_OUT_GEMM:
        works = False
        if device.type == "cuda":
            acc, one = torch.ones(1, 1, device=device), torch.ones(1, 1, device=device, dtype=torch.bfloat16)
            try:
                torch.addmm(acc, one, one, out_dtype=torch.float32, out=acc)
                works = acc.item() == 2.0  # one host sync per process
            except (RuntimeError, TypeError):
                pass
        _FP32_OUT_GEMM[device] = works
    return _FP32_OUT_GEMM[device]


def _addmm_fp32(acc, a, b):
    """acc [m, n] fp32 += a [m, k] @ b [k, n] (a, b 16-bit or fp32). Products of 16-bit numbers are exact
    in fp32, so both ways give the same fp32 sum: cuBLAS reads the 16-bit operands (tensor cores) where
    torch can write its fp32 result; elsewhere (CPU, the interpreter, older torch) fp32 copies of them."""
    if a.dtype != torch.float32 and _fp32_out_gemm(acc.device):
        return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    return acc.addmm_(a.float(), b.float())
