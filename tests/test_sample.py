"""sample.py: greedy parity with transformers, cache vs full forward, sampling distributions."""

import pytest
import torch

from conftest import make_tiny_checkpoint
from model import Qwen
from sample import generate, process_logits, sample_next

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=[("qwen2", True), ("qwen3", False)], ids=["qwen2-tied", "qwen3-untied"])
def ckpt(request, tmp_path_factory):
    model_type, tied = request.param
    path = tmp_path_factory.mktemp(model_type)
    over = {"head_dim": 16} if model_type == "qwen3" else {}
    model, tok = make_tiny_checkpoint(path, seed=11, model_type=model_type, tied=tied, **over)
    return str(path), model, tok


def prompt_batch(vocab, lens=(5, 13, 1, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (L,), generator=g).tolist() for L in lens]


def test_greedy_matches_transformers_generate(ckpt):
    path, model, tok = ckpt
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = prompt_batch(model.config.vocab_size)
    stop = 7  # an ordinary token as the stop id, so some rows stop early and others run to the limit
    ro = generate(model, prompts, max_new_tokens=24, temperature=0, stop_ids=[stop], pad_id=0)
    reasons = set()
    for i, p in enumerate(prompts):  # one prompt at a time on the reference: no padding questions
        ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                          max_new_tokens=24, do_sample=False, eos_token_id=stop, pad_token_id=0)
        ref = ref[0, len(p):].tolist()
        if stop in ref:
            ref = ref[: ref.index(stop) + 1]
        assert ro.completion(i) == ref
        assert ro.finish_reasons[i] == ("stop" if ref[-1] == stop else "length")
        assert (ro.tokens[i, len(ref):] == 0).all()
        reasons.add(ro.finish_reasons[i])


def test_logprobs_equal_full_forward_at_every_step(ckpt):
    """Cached decoding must give the same distribution as a plain forward over prompt + completion."""
    _, model, _ = ckpt
    prompts = prompt_batch(model.config.vocab_size, lens=(3, 11, 6))
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 20, 1.0), (1.0, 0, 0.8), (0.9, 30, 0.9)]:
        ro = generate(model, prompts, n=2, max_new_tokens=12, temperature=temperature, top_k=top_k,
                      top_p=top_p, seed=3)
        for i in range(len(ro.lengths)):
            p, c = prompts[i // 2], ro.completion(i)
            with torch.no_grad():
                logits = model(torch.tensor([p + c]))[0, len(p) - 1: len(p) + len(c) - 1]
            ref = naive_processed_logprobs(logits, temperature, top_k, top_p)
            want = ref.gather(-1, torch.tensor(c)[:, None])[:, 0]
            assert torch.allclose(ro.logprobs[i, : len(c)], want, atol=1e-4), (temperature, top_k, top_p)
            assert torch.isfinite(want).all()  # every sampled token was inside the allowed set


def naive_processed_logprobs(logits, temperature, top_k, top_p):
    """An independent, loop-based top-k/top-p: keep the smallest prefix of sorted probs reaching top_p."""
    out = []
    for row in logits.float() / temperature:
        keep = torch.ones_like(row, dtype=torch.bool)
        if top_k:
            keep &= row >= torch.sort(row, descending=True).values[top_k - 1]
        masked = torch.where(keep, row, torch.tensor(float("-inf")))
        if top_p < 1.0:
            probs = masked.softmax(-1)
            order = torch.argsort(probs, descending=True).tolist()
            allowed, total = torch.zeros_like(keep), 0.0
            for j in order:
                allowed[j] = True
                total += probs[j].item()
                if total >= top_p:
                    break
            masked = torch.where(allowed, masked, torch.tensor(float("-inf")))
        out.append(torch.log_softmax(masked, -1))
    return torch.stack(out)


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.6), (8, 0.7)])
def test_sampling_matches_renormalised_distribution(top_k, top_p):
    torch.manual_seed(0)
    logits = torch.randn(1, 40) * 2
    R = 40000
    ids, logp = sample_next(logits.expand(R, -1), 1.0, top_k, top_p, torch.Generator().manual_seed(1))
    target = naive_processed_logprobs(logits, 1.0, top_k, top_p)[0].exp()
    allowed = target > 0
    assert allowed[ids].all(), "sampled a token outside the top-k/top-p set"
    freq = torch.bincount(ids, minlength=40).float() / R
    tv = 0.5 * (freq - target).abs().sum().item()
    assert tv < 0.02, tv
    assert torch.allclose(logp, target.log()[ids], atol=1e-5)


def test_sampling_through_generate_matches_distribution(ckpt):
    """n samples of one token from one prompt follow softmax(logits / T)."""
    _, model, _ = ckpt
    prompt = prompt_batch(model.config.vocab_size, lens=(6,))
    ro = generate(model, prompt, n=20000, max_new_tokens=1, temperature=0.8, seed=5)
    with torch.no_grad():
        target = torch.softmax(model(torch.tensor(prompt))[0, -1] / 0.8, -1)
    freq = torch.bincount(ro.tokens[:, 0], minlength=len(target)).float() / 20000
    assert 0.5 * (freq - target).abs().sum().item() < 0.05


def test_prefill_runs_once_per_prompt(ckpt, monkeypatch):
    _, model, _ = ckpt
    calls = []
    orig = Qwen.forward

    def counting(self, input_ids, *a, **k):
        calls.append(tuple(input_ids.shape))
        return orig(self, input_ids, *a, **k)

    monkeypatch.setattr(Qwen, "forward", counting)
    prompts = prompt_batch(model.config.vocab_size, lens=(4, 9, 2))
    ro = generate(model, prompts, n=5, max_new_tokens=6, seed=0)
    prefill = [s for s in calls if s[1] > 1]
    assert prefill == [(3, 9)]  # one forward over the 3 prompts, not 15
    assert all(s == (15, 1) for s in calls[1:])  # decode: every sample, one token each
    assert ro.tokens.shape == (15, 6) and len(calls) == 1 + 5  # the last sampled token needs no forward


def test_samples_of_a_prompt_share_its_cache_but_differ(ckpt):
    _, model, _ = ckpt
    prompts = prompt_batch(model.config.vocab_size, lens=(5, 8))
    ro = generate(model, prompts, n=4, max_new_tokens=10, temperature=1.5, seed=0)
    rows = [tuple(ro.completion(i)) for i in range(8)]
    assert len(set(rows[:4])) > 1 and len(set(rows[4:])) > 1


def test_determinism(ckpt):
    _, model, _ = ckpt
    prompts = prompt_batch(model.config.vocab_size)
    a = generate(model, prompts, n=2, max_new_tokens=10, temperature=0)
    b = generate(model, prompts, n=2, max_new_tokens=10, temperature=0)
    assert torch.equal(a.tokens, b.tokens)
    s1 = generate(model, prompts, n=2, max_new_tokens=10, seed=123)
    s2 = generate(model, prompts, n=2, max_new_tokens=10, seed=123)
    s3 = generate(model, prompts, n=2, max_new_tokens=10, seed=124)
    assert torch.equal(s1.tokens, s2.tokens) and torch.equal(s1.logprobs, s2.logprobs)
    assert not torch.equal(s1.tokens, s3.tokens)
    torch.manual_seed(9)
    g1 = generate(model, prompts, max_new_tokens=10)
    torch.manual_seed(9)
    g2 = generate(model, prompts, max_new_tokens=10)
    assert torch.equal(g1.tokens, g2.tokens)  # seed=None follows torch's global RNG


def test_stop_handling_per_row(ckpt):
    _, model, _ = ckpt
    prompts = prompt_batch(model.config.vocab_size, lens=(4, 7, 3))
    free = generate(model, prompts, max_new_tokens=16, temperature=0)
    stop = free.tokens[0, 3].item()  # row 0's 4th token becomes a stop id
    ro = generate(model, prompts, max_new_tokens=16, temperature=0, stop_ids=[stop, 10**6], pad_id=2)
    for i in range(3):
        seq = free.completion(i)
        want = seq[: seq.index(stop) + 1] if stop in seq else seq
        assert ro.completion(i) == want
        assert ro.lengths[i].item() == len(want)
        assert ro.finish_reasons[i] == ("stop" if stop in seq else "length")
        assert (ro.tokens[i, len(want):] == 2).all() and (ro.logprobs[i, len(want):] == 0).all()
    assert ro.lengths[0].item() <= 4


def test_loop_ends_early_when_all_rows_stop(ckpt):
    _, model, _ = ckpt
    prompts = prompt_batch(model.config.vocab_size, lens=(4, 6))
    free = generate(model, prompts, max_new_tokens=4, temperature=0)
    stops = {free.tokens[0, 0].item(), free.tokens[1, 0].item()}
    ro = generate(model, prompts, max_new_tokens=500, temperature=0, stop_ids=stops)
    assert ro.finish_reasons == ["stop", "stop"] and ro.tokens.shape[1] <= 8


def test_compile_flag_is_harmless_on_cpu(ckpt):
    _, model, _ = ckpt
    prompts = prompt_batch(model.config.vocab_size)
    a = generate(model, prompts, max_new_tokens=5, temperature=0)
    b = generate(model, prompts, max_new_tokens=5, temperature=0, compile=True)
    assert torch.equal(a.tokens, b.tokens)


def test_bad_arguments(ckpt):
    _, model, _ = ckpt
    with pytest.raises(ValueError):
        generate(model, [[1, 2], []], max_new_tokens=3)
    with pytest.raises(ValueError):
        generate(model, [[1, 2]], max_new_tokens=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, [[1, 2]], max_new_tokens=model.config.max_position_embeddings)


def test_cli_streams_completion(ckpt, capsys):
    import sample
    path, model, tok = ckpt
    sample.main(["--model", path, "--prompt", "nums 3 5 7", "--max-new-tokens", "12"])
    out = capsys.readouterr().out
    ro = generate(model, [tok.encode_chat([{"role": "user", "content": "nums 3 5 7"}])], max_new_tokens=12,
                  temperature=0, stop_ids=tok.stop_ids)
    assert out.rstrip("\n") == tok.decode([t for t in ro.completion(0) if t not in tok.stop_ids],
                                          skip_special_tokens=True).rstrip("\n")


def test_cli_bad_model(tmp_path):
    import sample
    with pytest.raises(SystemExit) as e:
        sample.main(["--model", str(tmp_path), "--prompt", "x"])
    assert "config.json" in str(e.value)
