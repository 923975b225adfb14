"""ppo.py on CPU: fused log-probs against the naive [N, V] computation, advantages, loss, update
(fp32, and bf16 compute over fp32 weights)."""

import copy

import pytest
import torch

import distributed
import ppo
from config import TrainConfig
from model import Qwen, QwenConfig
from ppo import (ValueHead, gae_advantages, group_advantages, naive_token_logprobs, ppo_loss, ppo_update,
                 proposal_advantages, response_logprobs, token_advantages, token_logprobs, value_loss)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _inputs(N, V, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, d, generator=g).to(dtype).requires_grad_()
    W = (0.5 * torch.randn(V, d, generator=g)).to(dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    return h, W, t, torch.randn(N, generator=g), torch.randn(N, generator=g)


def _grads(fn, h, W, t, temp, g, ge, entropy):
    h.grad = W.grad = None
    out = fn(h, W, t, temp, entropy)
    loss = (out[0] * g + out[1] * ge).sum() if entropy else (out * g).sum()
    loss.backward()
    return [x.detach() for x in (out if entropy else [out])] + [h.grad.clone(), W.grad.clone()]


# N, V not multiples of the chunks: chunk_bytes gives 128-wide vocab chunks (V=1000: 7 full + 1 of 104)
# and, for N=4100 > 4096 tokens, a second token chunk of 4 rows.
@pytest.mark.parametrize("N,V,d,temp,chunk_bytes", [(37, 1000, 24, 1.0, 37 * 128 * 4),
                                                    (5, 301, 16, 0.7, 1),
                                                    (4100, 259, 8, 1.3, 1),
                                                    (1, 3, 5, 1.0, None)])
@pytest.mark.parametrize("entropy", [False, True])
def test_fused_matches_naive(N, V, d, temp, chunk_bytes, entropy):
    h, W, t, g, ge = _inputs(N, V, d)
    g[::3] = 0.0  # zero-advantage tokens: their softmax term vanishes
    fused = lambda *a: token_logprobs(*a, backend="torch", chunk_bytes=chunk_bytes)  # noqa: E731
    got = _grads(fused, h, W, t, temp, g, ge, entropy)
    want = _grads(naive_token_logprobs, h, W, t, temp, g, ge, entropy)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gradcheck_fp64():
    h, W, t, _, _ = _inputs(7, 300, 5, dtype=torch.float64)
    fn = lambda h, W: token_logprobs(h, W, t, 0.7, return_entropy=True, chunk_bytes=1)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, W), fast_mode=True)


def test_temperature_is_the_sampling_distribution():
    h, W, t, _, _ = _inputs(16, 50, 8)
    logp = token_logprobs(h, W, t, temperature=0.5)
    ref = torch.log_softmax(h @ W.T / 0.5, -1).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(logp, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logp, token_logprobs(h, W, t))


def test_bf16_inputs_fp32_outputs():
    h, W, t, g, _ = _inputs(33, 200, 16, dtype=torch.bfloat16)
    logp = token_logprobs(h, W, t)
    assert logp.dtype == torch.float32
    (logp * g).sum().backward()
    assert h.grad.dtype == W.grad.dtype == torch.bfloat16
    h32, W32 = h.detach().float().requires_grad_(), W.detach().float().requires_grad_()
    ref = naive_token_logprobs(h32, W32, t)
    (ref * g).sum().backward()
    torch.testing.assert_close(logp, ref, rtol=1e-4, atol=1e-4)  # same bf16 values, fp32 accumulation
    torch.testing.assert_close(h.grad.float(), h32.grad, rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(W.grad.float(), W32.grad, rtol=2e-2, atol=1e-2)


def test_leading_dims_and_weight_only_grad():
    h, W, t, _, _ = _inputs(12, 40, 8)
    h3, t3 = h.detach().view(3, 4, 8), t.view(3, 4)
    logp = token_logprobs(h3, W, t3)
    assert logp.shape == (3, 4)
    logp.sum().backward()  # hidden needs no grad: only dW is formed
    W2 = W.detach().requires_grad_()
    naive_token_logprobs(h.detach(), W2, t).sum().backward()
    torch.testing.assert_close(W.grad, W2.grad, rtol=1e-4, atol=1e-6)


def test_no_tokens():
    h, W, t, _, _ = _inputs(0, 20, 4)
    logp, ent = token_logprobs(h, W, t, return_entropy=True)
    assert logp.shape == ent.shape == (0,)
    logp.sum().backward()
    assert h.grad.shape == (0, 4) and torch.equal(W.grad, torch.zeros(20, 4))


# --- advantages --------------------------------------------------------------------------------

def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 3.0])
    adv = group_advantages(r, 4)
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std()
    torch.testing.assert_close(adv[:4], torch.tensor([0.5, -0.5, 0.5, -0.5]) / (std + 1e-6))
    assert torch.equal(adv[4:8], torch.zeros(4))  # all-correct group: no signal, no NaN
    assert torch.isfinite(adv).all()
    drgrpo = group_advantages(r, 4, scale_std=False)
    torch.testing.assert_close(drgrpo[8:], torch.tensor([-0.75, -0.75, -0.75, 2.25]))
    assert torch.equal(group_advantages(torch.zeros(6), 3), torch.zeros(6))


def test_token_advantages_groups_then_proposals_broadcast_over_the_response():
    """group: the rollouts against their group, the proposer's rows (last) against each other, each
    row's value on its response tokens only; given advantages are used as they are."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.75, -1.0, 0.0])  # 2 groups of 3, 3 proposals
    mask = torch.zeros(9, 5)
    for b in range(9):
        mask[b, 1 + b % 3:4] = 1
    cfg = TrainConfig(group_size=3)
    adv, returns = token_advantages(cfg, {"rewards": rewards, "proposals": 3}, mask)
    per_row = torch.cat([group_advantages(rewards[:6], 3), proposal_advantages(rewards[6:])])
    assert returns is None and torch.equal(adv, per_row[:, None] * mask)
    assert abs(float(per_row[6:].mean())) < 1e-6 and float(per_row[6:].std()) == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(proposal_advantages(torch.tensor([0.5])), torch.zeros(1))  # one proposal: no signal
    alone, _ = token_advantages(cfg, {"rewards": rewards[:6]}, mask[:6])  # no proposals
    torch.testing.assert_close(alone, adv[:6])
    given = torch.randn(9)
    assert torch.equal(token_advantages(cfg, {"rewards": rewards, "advantages": given}, mask)[0], given[:, None] * mask)


def test_gae_hand_worked():
    # one row: prompt at t=0, response at t=1..3, padding at t=4; reward 1 on the last response token
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0, 5.0]])  # the 5.0 sits off the mask: ignored
    values = torch.tensor([[9.0, 0.5, 0.6, 0.7, 9.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    # deltas: t=3: 1 - 0.7 = 0.3; t=2: 0.9*0.7 - 0.6 = 0.03; t=1: 0.9*0.6 - 0.5 = 0.04
    # advantages: A3 = 0.3; A2 = 0.03 + 0.72*0.3 = 0.246; A1 = 0.04 + 0.72*0.246 = 0.21712
    adv, ret = gae_advantages(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.21712, 0.246, 0.3, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, 0.71712, 0.846, 1.0, 0.0]]))
    # gamma = lam = 1: every response token's advantage is reward - its value
    adv1, _ = gae_advantages(rewards, values, mask)
    torch.testing.assert_close(adv1, torch.tensor([[0.0, 0.5, 0.4, 0.3, 0.0]]))


def test_value_loss_clipped():
    v, old, ret = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 0.0]])
    m = torch.ones(1, 2)
    # clipped value 0.2: max((2-3)^2, (0.2-3)^2) = 7.84 on the first token, 0 on the second
    torch.testing.assert_close(value_loss(v, old, ret, m, 0.2), torch.tensor(0.5 * 7.84 / 2))
    torch.testing.assert_close(value_loss(v, old, ret, m, None), torch.tensor(0.5 * 1.0 / 2))
    torch.testing.assert_close(value_loss(v, old, ret, m, 0.0), torch.tensor(0.5 * 1.0 / 2))  # 0: unclipped


# --- loss --------------------------------------------------------------------------------------

def test_ratio_one_no_kl_is_reinforce():
    h, W, t, _, _ = _inputs(12, 30, 8)
    mask = torch.tensor([0.0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1]).view(2, 6)
    adv = torch.tensor([1.5, -0.5])[:, None] * mask
    logp = token_logprobs(h, W, t).view(2, 6)
    loss, stats = ppo_loss(logp, logp.detach(), adv, mask, kl_coef=0.0)
    dh, dW = torch.autograd.grad(loss, (h, W), retain_graph=True)
    reinforce = -(adv * logp * mask).sum() / mask.sum()
    rh, rW = torch.autograd.grad(reinforce, (h, W))
    torch.testing.assert_close(dh, rh)
    torch.testing.assert_close(dW, rW)
    assert stats["ratio"] == 1.0 and stats["clip_frac"] == 0.0 and stats["approx_kl"] == 0.0


def test_clipping_dual_clip_and_k3():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 5.0]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, st = ppo_loss(logp, old, adv, mask, kl_coef=0.0)
    (g,) = torch.autograd.grad(loss, logp)
    # token 0: ratio 1.5 > 1.2 with A > 0 -> clipped, no gradient; token 1: ratio 0.5 < 0.8 with A < 0 -> clipped
    assert g[0, 0] == 0 and g[0, 1] == 0 and g[0, 2] != 0 and g[0, 3] != 0
    assert st["clip_frac"] == 0.5
    # dual clip c=3: token 3 (ratio 5, A = -1) has its loss capped at 3, and no gradient
    loss_dc, _ = ppo_loss(logp, old, adv, mask, kl_coef=0.0, dual_clip=3.0)
    (g_dc,) = torch.autograd.grad(loss_dc, logp)
    assert g_dc[0, 3] == 0
    torch.testing.assert_close(loss - loss_dc, torch.tensor((5.0 - 3.0) / 4))
    # k3 KL: 0 at the reference, exp(d) - d - 1 otherwise
    _, st0 = ppo_loss(logp, old, adv, mask, ref_logp=logp.detach(), kl_coef=0.1)
    assert st0["kl_ref"] == 0.0
    ref = logp.detach() - 0.3
    _, st1 = ppo_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1)
    assert float(st1["kl_ref"]) == pytest.approx(float(torch.exp(torch.tensor(-0.3)) + 0.3 - 1), rel=1e-5)


def test_token_level_mean_ignores_garbage_off_mask():
    logp = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 0.0]])
    old = torch.tensor([[float("nan"), -1.0, -2.0], [float("inf"), -0.5, float("-inf")]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    loss, st = ppo_loss(logp, old, torch.ones(2, 3), mask, ref_logp=old, kl_coef=0.1)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(-1.0)  # -A * ratio averaged over 3 tokens


# --- the update ----------------------------------------------------------------------------------

def _tiny_policy(V=16, seed=0):
    torch.manual_seed(seed)
    model = Qwen(QwenConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    with torch.no_grad():  # small weights: a near-uniform starting policy
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
    return model


def _random_batch(B=6, T=9, V=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.zeros(B, T)
    for b in range(B):  # prompt of 2-3 tokens, 1-5 response tokens, right padding after
        p, n = 2 + b % 2, 1 + b % 5
        mask[b, p:p + n] = 1
    return dict(input_ids=ids, response_mask=mask, advantages=torch.randn(B, generator=g))


def test_response_logprobs_convention():
    model = _tiny_policy()
    batch = _random_batch()
    ids, mask = batch["input_ids"], batch["response_mask"]
    logp, ent, _ = response_logprobs(model, ids, mask, temperature=0.8, return_entropy=True)
    full = torch.log_softmax(model(ids) / 0.8, -1)  # [B, T, V]
    want = torch.zeros_like(logp)
    want[:, 1:] = full[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)  # token t from position t-1
    torch.testing.assert_close(logp, want * mask, rtol=1e-5, atol=1e-5)
    went = torch.zeros_like(ent)
    went[:, 1:] = -(full.exp() * full).sum(-1)[:, :-1]
    torch.testing.assert_close(ent, went * mask, rtol=1e-5, atol=1e-5)


def test_micro_batches_accumulate_to_the_full_minibatch():
    batch = _random_batch()
    params = []
    for micro in (0, 2, 4):
        model = _tiny_policy()
        ref = copy.deepcopy(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        cfg = TrainConfig(micro_batch_size=micro, kl_coef=0.01, max_grad_norm=1e9)
        torch.manual_seed(1)
        ppo_update(model, opt, batch, cfg, ref_model=ref)
        params.append(torch.cat([p.flatten() for p in model.parameters()]))
    torch.testing.assert_close(params[1], params[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params[2], params[0], rtol=1e-5, atol=1e-6)


def test_old_logp_recomputed_and_reference_skipped():
    model = _tiny_policy()
    batch = _random_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no change: every ratio must be exactly 1

    class NoRef:
        def __call__(self, *a, **k):
            raise AssertionError("kl_coef=0 must skip the reference pass")

    cfg = TrainConfig(ppo_epochs=2, minibatch_size=4, micro_batch_size=3, kl_coef=0.0)
    st = ppo_update(model, opt, dict(batch, old_logp=None), cfg, ref_model=NoRef())
    assert st["ratio"] == pytest.approx(1.0, abs=1e-6) and st["clip_frac"] == 0.0
    assert "sampler_logp_err" not in st  # no sampler log-probs to compare with


def test_sampler_logp_err_is_the_max_over_all_rows():
    model = _tiny_policy()
    batch = _random_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mask = batch["response_mask"]
    # row b's sampler log-probs are off by 0.01 * (b + 1): the mean over rows or micro-batches is below
    # the max, 0.06 (row 5), wherever the micro-batches put it
    off = 0.01 * torch.arange(1, 7.0)[:, None] * mask
    noisy = response_logprobs(model, batch["input_ids"], mask)[0].detach() + off
    for minibatch, micro in [(4, 3), (0, 2), (2, 1), (0, 0)]:
        cfg = TrainConfig(ppo_epochs=2, minibatch_size=minibatch, micro_batch_size=micro, kl_coef=0.0)
        st = ppo_update(model, opt, dict(batch, old_logp=noisy), cfg)
        assert st["ratio"] == pytest.approx(1.0, abs=1e-6)  # the sampler's log-probs were replaced
        assert st["sampler_logp_err"] == pytest.approx(0.06, abs=1e-5)
    kept = ppo_update(model, opt, dict(batch, old_logp=noisy), TrainConfig(recompute_old_logp=False, kl_coef=0.0))
    assert "sampler_logp_err" not in kept and kept["ratio"] < 1.0  # the sampler's own: the ratio sees the offsets


def test_prepare_holds_what_the_update_reads_and_draws_no_randomness():
    """prepare: the policy's and the reference's log-probs and the advantages, [B, T], 0 off the mask;
    torch's RNG untouched, so the update's shuffles are the same draws as without it."""
    model, batch = _tiny_policy(), _random_batch()
    ref = _tiny_policy(seed=1)
    mask = batch["response_mask"]
    cfg = TrainConfig(micro_batch_size=4, kl_coef=0.01)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    prepared = ppo.prepare(model, batch, cfg, ref_model=ref)
    assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(prepared["old_logp"], response_logprobs(model, batch["input_ids"], mask)[0].detach())
    torch.testing.assert_close(prepared["ref_logp"], response_logprobs(ref, batch["input_ids"], mask)[0].detach())
    assert torch.equal(prepared["advantages"], batch["advantages"][:, None] * mask)
    assert prepared["ends"].tolist() == [int(row.nonzero().max()) + 1 for row in mask]
    assert prepared["host_mask"].device.type == "cpu" and torch.equal(prepared["host_mask"], mask)


def test_minibatch_size_is_global(monkeypatch):
    """Under torchrun (faked: 2 ranks holding the same rows) minibatch_size 4 means 2 rows per rank
    per optimizer step: the same update as one process with minibatch_size 2 on those rows."""
    batch = _random_batch()

    def run(minibatch_size):
        model = _tiny_policy()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        torch.manual_seed(1)
        ppo_update(model, opt, batch, TrainConfig(ppo_epochs=2, minibatch_size=minibatch_size, kl_coef=0.0))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    one = run(2)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t: t.mul_(2))  # the other rank's tokens: the same count
    assert torch.equal(run(4), one)
    with pytest.raises(ValueError, match="multiple"):
        run(5)


def test_gae_update_fits_values():
    model = _tiny_policy()
    head = ValueHead(32)
    batch = _random_batch()
    batch["rewards"] = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    opt = torch.optim.Adam(list(model.parameters()) + list(head.parameters()), lr=1e-2)
    cfg = TrainConfig(advantage="gae", gamma=1.0, lam=0.95, kl_coef=0.0, ppo_epochs=2, minibatch_size=3)
    first = ppo_update(model, opt, batch, cfg, value_head=head)
    for _ in range(15):
        last = ppo_update(model, opt, batch, cfg, value_head=head)
    assert all(map(lambda v: v == v, last.values()))  # no NaN
    assert last["vf_loss"] < 0.5 * first["vf_loss"]


# --- bf16 compute over fp32 weights ------------------------------------------------------------

def _training_forwards(compute_dtype, outer_autocast=False):
    """2 PPO epochs x 3 minibatches, one row per forward; only the decoder's Linear weights train (the
    ones autocast casts to bf16; Adam moves each by ~lr per step, well above bf16's resolution).
    -> (stats, {row: [hidden states of its epoch-0 forward, of its epoch-1 forward]})."""
    model = _tiny_policy()
    batch = _random_batch()
    linears = [p for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()]
    opt = torch.optim.Adam(linears, lr=1e-2)
    cfg = TrainConfig(ppo_epochs=2, minibatch_size=2, micro_batch_size=1, kl_coef=0.0)
    seen = {}

    def record(module, args, out):
        if torch.is_grad_enabled():  # training forwards, not the no-grad old log-prob pass
            seen.setdefault(tuple(args[0][0].tolist()), []).append(out.detach().float().clone())

    model.register_forward_hook(record)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer_autocast):
        st = ppo_update(model, opt, batch, cfg, compute_dtype=compute_dtype)
    assert len(seen) == 6 and all(len(h) == 2 for h in seen.values())
    return st, seen


def test_bf16_later_minibatches_see_the_updated_weights():
    st32, seen32 = _training_forwards(torch.float32)
    st16, seen16 = _training_forwards(torch.bfloat16)
    for seen in (seen32, seen16):  # every row's epoch-1 forward runs after more optimizer steps
        assert all(not torch.equal(e0, e1) for e0, e1 in seen.values())
    assert st32["approx_kl"] > 1e-3  # the policy moved between the forwards, and bf16 sees it as fp32 does
    assert st16["approx_kl"] == pytest.approx(st32["approx_kl"], rel=0.1)
    assert st16["ratio"] == pytest.approx(st32["ratio"], abs=0.02)


def test_one_autocast_region_around_the_update_computes_at_stale_weights():
    """The old train.py pattern fails the test above: ppo_update (no autocast of its own: fp32) inside
    one bf16 autocast region, which caches its bf16 copies of the weights across optimizer.step(), so
    every forward sees the first weights. ppo_update's own regions do not cache: right even inside one."""
    st_old, seen_old = _training_forwards(torch.float32, outer_autocast=True)
    assert all(torch.equal(e0, e1) for e0, e1 in seen_old.values())  # stale
    assert st_old["approx_kl"] < 1e-6
    st_new, seen_new = _training_forwards(torch.bfloat16, outer_autocast=True)
    assert all(not torch.equal(e0, e1) for e0, e1 in seen_new.values())
    assert st_new["approx_kl"] > 1e-3


def test_bf16_logprobs_take_bf16_inputs_and_train_the_fp32_weight(monkeypatch):
    V = 300
    model = _tiny_policy(V)
    batch = _random_batch(V=V)
    ids, mask = batch["input_ids"], batch["response_mask"]
    seen, fused = [], ppo.token_logprobs

    def spy(h, W, *args, **kw):
        seen.append((h.dtype, W.dtype))
        return fused(h, W, *args, **kw)

    monkeypatch.setattr(ppo, "token_logprobs", spy)
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.zero_grad()
        logp, ent, _ = response_logprobs(model, ids, mask, 0.8, True, compute_dtype=dtype)
        assert seen.pop() == (dtype, dtype)  # bf16 operands: the Triton kernels' tensor-core variant
        assert logp.dtype == ent.dtype == torch.float32
        (logp.sum() + ent.sum()).backward()
        assert model.output_weight.dtype == model.output_weight.grad.dtype == torch.float32
        grads[dtype] = (logp.detach(), ent.detach(), model.output_weight.grad.clone())
    full = torch.log_softmax(model(ids).detach() / 0.8, -1)  # the naive fp32 reference, [B, T, V]
    want = torch.zeros_like(logp)
    want[:, 1:] = full[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)
    lp32, ent32, gw32 = grads[torch.float32]
    lp16, ent16, gw16 = grads[torch.bfloat16]
    torch.testing.assert_close(lp32, want * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lp16, want * mask, rtol=0, atol=2e-2)  # bf16 rounding of hidden and lm_head
    torch.testing.assert_close(ent16, ent32, rtol=0, atol=2e-2)
    assert (gw16 - gw32).norm() < 2e-2 * gw32.norm()  # the gradient reaches the fp32 master weight


def test_bandit_learns_the_rewarded_token():
    V, TARGET, G = 16, 7, 16
    policy = _tiny_policy(V)
    ref = copy.deepcopy(policy).requires_grad_(False)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    cfg = TrainConfig(ppo_epochs=2, minibatch_size=16, micro_batch_size=8, kl_coef=0.001)
    prompts = [[1, 2, 3], [4, 5]]  # different lengths: right padding in the batch

    def p_target():
        with torch.no_grad():
            return min(torch.softmax(policy(torch.tensor([p]))[0, -1], -1)[TARGET].item() for p in prompts)

    p0 = p_target()
    for step in range(30):
        ids = torch.zeros(len(prompts) * G, 4, dtype=torch.long)
        mask = torch.zeros(ids.shape)
        for i, p in enumerate(prompts):
            rows = slice(i * G, (i + 1) * G)
            with torch.no_grad():
                probs = torch.softmax(policy(torch.tensor([p]))[0, -1] / cfg.temperature, -1)
            ids[rows, :len(p)] = torch.tensor(p)
            ids[rows, len(p)] = torch.multinomial(probs, G, replacement=True)
            mask[rows, len(p)] = 1
        rewards = (ids.gather(1, mask.argmax(1, keepdim=True)).squeeze(1) == TARGET).float()
        batch = dict(input_ids=ids, response_mask=mask, advantages=group_advantages(rewards, G))
        ppo_update(policy, opt, batch, cfg, ref_model=ref)
        if p_target() > 0.9:
            break
    assert p0 < 0.1 and p_target() > 0.9, f"p(target) = {p_target():.3f} after {step + 1} updates"
