"""sample.py: greedy parity with transformers, cache vs full forward, sampling distributions; the
sample-and-decode helper `completions`."""

import pytest
import torch

import sample
from conftest import make_tiny_checkpoint
from model import Qwen, QwenConfig
from sample import MIN_LEN_BUCKET, bucket, generate, process_logits, sample_next
from tokenizer import Tokenizer

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


@pytest.mark.parametrize("lens", [(5, 13, 1, 9), (6, 6, 6), (8,)], ids=["mixed", "equal", "one"])
def test_greedy_matches_transformers_generate(ckpt, lens):
    """Mixed lengths decode with a per-row mask; equal lengths (and one prompt) with none at all."""
    path, model, tok = ckpt
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = prompt_batch(model.config.vocab_size, lens=lens)
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


def test_cpu_generator_draws_split_evenly():
    """What Noise relies on to leave samples unchanged on the CPU: one draw of K steps' noise from a
    generator gives the same numbers as K draws of one step each (mt19937 is consumed in order)."""
    for n_v in (7, 8 * 320, 151936):
        g = torch.Generator().manual_seed(4)
        block = torch.empty(5, n_v).exponential_(1, generator=g)
        g = torch.Generator().manual_seed(4)
        steps = torch.stack([torch.empty(n_v).exponential_(1, generator=g) for _ in range(5)])
        assert torch.equal(block, steps)


def test_per_prompt_noise_is_drawn_in_blocks(ckpt, monkeypatch):
    """List seeds: each prompt's generator draws many steps at once (not one launch per prompt per token),
    and the samples equal those of one-step draws."""
    _, model, _ = ckpt
    prompts = prompt_batch(model.config.vocab_size, lens=(4, 9, 2))
    kw = dict(n=3, max_new_tokens=20, temperature=1.0, top_k=30, seed=[5, 6, 7])
    calls = []
    real = torch.Tensor.exponential_
    monkeypatch.setattr(torch.Tensor, "exponential_", lambda t, *a, **k: calls.append(t.shape) or real(t, *a, **k))
    blocks = generate(model, prompts, **kw)
    assert len(calls) == 3  # once per prompt for the whole call (K = 20 steps here)
    monkeypatch.setattr(sample, "NOISE_BYTES", 1)  # K = 1: one draw per prompt per step, as before blocks
    calls.clear()
    steps = generate(model, prompts, **kw)
    assert len(calls) == 3 * steps.tokens.shape[1]
    assert torch.equal(blocks.tokens, steps.tokens) and torch.equal(blocks.logprobs, steps.logprobs)


def test_per_prompt_seeds_do_not_depend_on_the_batch(ckpt):
    _, model, _ = ckpt
    a, b, c = prompt_batch(model.config.vocab_size, lens=(4, 9, 2))
    kw = dict(n=2, max_new_tokens=12, temperature=1.0)
    abc = generate(model, [a, b, c], seed=[1, 2, 3], **kw)
    ca = generate(model, [c, a], seed=[3, 1], **kw)
    b_alone = generate(model, [b], seed=[2], **kw)
    for i in range(2):
        assert abc.completion(i) == ca.completion(2 + i)  # a
        assert abc.completion(2 + i) == b_alone.completion(i)  # b
        assert abc.completion(4 + i) == ca.completion(i)  # c


def test_rollout_is_on_the_cpu(ckpt):
    _, model, _ = ckpt
    ro = generate(model, prompt_batch(model.config.vocab_size, lens=(3, 5)), max_new_tokens=4, seed=0)
    assert ro.tokens.is_cpu and ro.logprobs.is_cpu and ro.lengths.is_cpu  # reading rows: no device syncs


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


def tiny_model(seed=0, **over):
    """A random Qwen (2 layers unless told) built in memory: no checkpoint folder, no tokenizer."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=257, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True)
    model = Qwen(QwenConfig(**{**cfg, **over}))
    with torch.no_grad():  # default init gives near-uniform logits; widen them as conftest does
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


# (prompt lengths, n, max_new_tokens): 11 shapes, all in 2 buckets (rows B*n padded to 2 or 4, cache length to 64)
COMPILE_SHAPES = [((5, 9, 3), 1, 12), ((4,), 2, 20), ((7, 7), 1, 30), ((2, 11), 2, 9), ((6, 1, 8, 3), 1, 17),
                  ((13, 2), 1, 15), ((3, 3), 2, 25), ((10, 4), 1, 40), ((5, 5, 2), 1, 8), ((9, 9, 3), 1, 50),
                  ((1, 2, 3, 4), 1, 11)]


def test_compile_matches_eager_over_many_shapes():
    """compile=True (inductor's C++ backend on the CPU) gives eager's greedy tokens over 11 (prompts,
    lengths) shapes with one compile per shape bucket: 2 buckets, 2 compiles, no recompile-limit error
    (before buckets every shape recompiled, and the ninth failed). Slow by nature: inductor runs gcc;
    ~35 s with a cold inductor cache on a busy 2-core machine, ~10 s warm. A 1-layer model keeps that
    down; the next test covers more buckets and layers without code generation.
    Not testable on a CPU: CUDA graphs (mode="reduce-overhead" applies on CUDA only), the fused GPU
    attention kernels, and GPU speed."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny_model(seed=11, num_hidden_layers=1)
    buckets = set()
    for i, (lens, n, new) in enumerate(COMPILE_SHAPES):
        prompts = prompt_batch(model.config.vocab_size, lens=lens, seed=i)
        kw = dict(n=n, max_new_tokens=new, temperature=0, stop_ids=[7], pad_id=0)
        eager = generate(model, prompts, **kw)
        compiled = generate(model, prompts, compile=True, **kw)
        assert torch.equal(compiled.tokens, eager.tokens), (lens, n, new)
        assert torch.equal(compiled.lengths, eager.lengths) and compiled.finish_reasons == eager.finish_reasons
        assert torch.allclose(compiled.logprobs, eager.logprobs, atol=1e-4)
        buckets.add((bucket(len(lens) * n), bucket(max(lens) + new, MIN_LEN_BUCKET)))
    assert len(COMPILE_SHAPES) >= 10 and buckets == {(2, 64), (4, 64)}
    assert counters["stats"]["unique_graphs"] == len(buckets)  # one compile per bucket, none per shape
    assert len(model._static_caches) == len(buckets)  # and one persistent cache per bucket, reused


def test_compile_survives_more_buckets_than_the_recompile_limit(monkeypatch):
    """Nine buckets (more than dynamo's default limit of 8 graphs per function): each compiled once.
    Dynamo only (backend="eager": graphs captured, no code generated), to keep it cheap."""
    from torch._dynamo.utils import counters

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kw: real_compile(fn, backend="eager", **kw))
    monkeypatch.setattr(sample, "_COMPILED", {})
    torch._dynamo.reset()
    counters.clear()
    model = tiny_model(seed=3)
    for rows in (1, 2, 4):
        for length in (64, 128, 256):
            prompts = prompt_batch(model.config.vocab_size, lens=[length - 3] * rows, seed=rows)
            eager = generate(model, prompts, max_new_tokens=3, temperature=0)
            compiled = generate(model, prompts, max_new_tokens=3, temperature=0, compile=True)
            assert torch.equal(compiled.tokens, eager.tokens)
    assert counters["stats"]["unique_graphs"] == 9 == len(model._static_caches)
    torch._dynamo.reset()


def test_buckets():
    assert [bucket(x) for x in (1, 2, 3, 4, 5, 9, 512, 513)] == [1, 2, 4, 4, 8, 16, 512, 1024]
    assert bucket(5, 64) == 64 and bucket(65, 64) == 128


def test_static_cache_is_reused():
    model = tiny_model()
    a = model.static_cache(4, 64)
    assert model.static_cache(4, 64) is a and model.static_cache(8, 64) is not a
    assert a.k[0].shape == (4, model.config.num_key_value_heads, 64, model.config.head_dim)


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


# -----------------------------------------------------------------------------
# counter-based (hashed) per-prompt noise: CUDA's path, forced here on the CPU


def test_hashed_noise_is_exponential_and_each_prompts_own(monkeypatch):
    import math
    noise = sample.Noise(list(range(64)), 8, 3000, 16, "cpu", hashed=True)
    assert not hasattr(noise, "generators")  # no per-prompt generator, so no loop over prompts per token
    a, b = noise.next(512), noise.next(512)
    for x in (a, b):  # Exp(1): mean 1, variance 1, median ln 2
        assert abs(float(x.mean()) - 1) < 0.01 and abs(float(x.var()) - 1) < 0.02
        assert abs(float((x < math.log(2)).float().mean()) - 0.5) < 0.005
    assert float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) < 0.01  # steps independent
    alone = sample.Noise([5], 8, 3000, 16, "cpu", hashed=True).next(8)
    assert torch.equal(a[5 * 8:6 * 8], alone)  # prompt 5's rows, whatever else is in the batch


def test_hashed_noise_samples_the_distribution_and_keeps_batch_independence(tiny_ckpt, monkeypatch):
    monkeypatch.setattr(sample, "HASHED_NOISE", True)
    logits = torch.randn(1, 40) * 2
    probs = torch.softmax(logits, -1)[0]
    noise = sample.Noise(list(range(400)), 50, 40, 1, "cpu", hashed=True)
    ids, _ = sample.sample_next(logits.expand(20000, 40), 1.0, 0, 1.0, noise=noise.next(20000))
    freq = torch.bincount(ids, minlength=40).float() / 20000
    assert 0.5 * float((freq - probs).abs().sum()) < 0.03  # total variation
    model = Qwen.from_pretrained(tiny_ckpt)
    both = sample.generate(model, [[5, 6, 7], [8, 9]], n=3, max_new_tokens=6, seed=[11, 22])
    alone = sample.generate(model, [[8, 9]], n=3, max_new_tokens=6, seed=[22])
    assert all(both.completion(3 + i) == alone.completion(i) for i in range(3))


def test_completions_are_generate_rows_decoded_chunk_by_chunk(tiny_ckpt):
    """sample.completions: each generate row with its text (the stop token dropped), log-probs and
    finish; with batch_size, each chunk seeded as a generate call of its own (an int seed: seed + the
    index of its first prompt; a list: its prompts' seeds)."""
    model, tok = Qwen.from_pretrained(tiny_ckpt), Tokenizer.from_pretrained(tiny_ckpt)
    prompts = prompt_batch(model.config.vocab_size, lens=(4, 7, 2))
    kw = dict(n=2, max_new_tokens=10, temperature=1.0)
    for seed, chunk_seeds in [(5, (5, 7)), ([1, 2, 3], ([1, 2], [3]))]:
        got = sample.completions(model, tok, prompts, seed=seed, batch_size=2, **kw)
        calls = [generate(model, part, seed=s, stop_ids=tok.stop_ids, pad_id=tok.pad_id, **kw)
                 for part, s in zip((prompts[:2], prompts[2:]), chunk_seeds)]
        rows = [(ro, i) for ro in calls for i in range(len(ro.lengths))]
        assert len(got) == len(rows) == 6
        for c, (ro, i) in zip(got, rows):
            ids = ro.completion(i)
            assert c.ids == ids and torch.equal(c.logp, ro.logprobs[i, :len(ids)])
            assert c.truncated == (ro.finish_reasons[i] == "length")
            assert c.text == tok.decode(ids[:-1] if ids[-1] in tok.stop_ids else ids)


def test_decode_completion_drops_only_the_final_stop_token(tiny_ckpt):
    tok = Tokenizer.from_pretrained(tiny_ckpt)
    ids = tok.encode("<answer> 1 </answer>")
    assert sample.decode_completion(tok, ids + [tok.eos_id]) == "<answer> 1 </answer>"
    assert sample.decode_completion(tok, ids) == "<answer> 1 </answer>"


def hashed_noise_as_defined(seeds, n, vocab, steps):
    """The hashed noise written out as eager ops, one [R, V] pass each: the numbers any fused version must give."""
    keys = sample._mix(torch.tensor(seeds).repeat_interleave(n) * 0x2545F491 + torch.arange(len(seeds) * n) % n)
    columns = torch.arange(vocab) * sample._GOLDEN
    for t in range(steps):
        bits = sample._mix(sample._mix(keys + sample._int64((t + 1) * sample._GOLDEN))[:, None] ^ columns)
        yield -torch.log((((bits >> 40) & 0xFFFFFF).float() + 0.5) / 2**24)


def test_fused_hashed_noise_is_eager_bit_for_bit(monkeypatch):
    """The compiled hashed noise (one inductor C++ kernel here, Triton on CUDA) gives the eager numbers bit
    for bit over several steps and shapes (odd rows and vocabularies, a seed near 2**63), from one graph
    compiled for all of them (dynamic rows and vocabulary). Slow by nature: inductor runs gcc once."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(sample, "_FUSED_UNIFORM", {})
    torch._dynamo.reset()
    counters.clear()
    for seeds, n, vocab in (([3, 5, 7], 3, 1001), ([2**62 + 5, -9], 2, 77), (list(range(8)), 8, 4099)):
        eager = sample.Noise(seeds, n, vocab, 4, "cpu", hashed=True, fused=False)
        fused = sample.Noise(seeds, n, vocab, 4, "cpu", hashed=True, fused=True)
        assert eager.uniform_fn is sample.hashed_uniform and fused.uniform_fn is sample.fused_uniform
        for expected in hashed_noise_as_defined(seeds, n, vocab, steps=4):
            assert torch.equal(eager.next(len(seeds) * n), expected)
            assert torch.equal(fused.next(len(seeds) * n), expected)
    assert sample._FUSED_UNIFORM["fn"] is not sample.hashed_uniform  # compiled, not the fallback
    assert counters["stats"]["unique_graphs"] == 1


def test_fused_noise_falls_back_to_eager_when_compiling_fails(monkeypatch):
    """A machine where inductor cannot compile (no C compiler for Triton, say) still samples, with the
    same numbers: one warning, then eager noise."""

    def broken_compile(fn, **kw):
        def compiled(*args):
            raise RuntimeError("no C compiler")
        return compiled

    monkeypatch.setattr(sample, "_FUSED_UNIFORM", {})
    monkeypatch.setattr(torch, "compile", broken_compile)
    noise = sample.Noise([4, 2], 3, 50, 3, "cpu", hashed=True, fused=True)
    with pytest.warns(UserWarning, match="hashed noise runs eagerly.*no C compiler"):
        first = noise.next(6)
    expected = list(hashed_noise_as_defined([4, 2], 3, 50, steps=2))
    assert torch.equal(first, expected[0]) and torch.equal(noise.next(6), expected[1])
    assert sample._FUSED_UNIFORM["fn"] is sample.hashed_uniform


def test_noise_on_the_cpu_compiles_nothing_unless_asked(monkeypatch):
    """The CPU keeps eager hashed noise (and per-prompt generators when hashing is not forced); FUSED_NOISE
    (or fused=True) asks for the compiled kernel."""
    assert not sample.Noise([1, 2], 2, 50, 3, "cpu").hashed
    assert sample.Noise([1, 2], 2, 50, 3, "cpu", hashed=True).uniform_fn is sample.hashed_uniform
    monkeypatch.setattr(sample, "FUSED_NOISE", True)
    assert sample.Noise([1, 2], 2, 50, 3, "cpu", hashed=True).uniform_fn is sample.fused_uniform
    assert sample.Noise([1, 2], 2, 50, 3, "cpu", hashed=True, fused=False).uniform_fn is sample.hashed_uniform


@pytest.mark.parametrize("name", ["recompile_limit", "cache_size_limit"])
def test_compile_raises_dynamos_graph_limit_under_either_name(monkeypatch, name):
    """torch >= 2.7 calls dynamo's graphs-per-function limit recompile_limit, torch 2.6 (the floor in
    pyproject.toml) cache_size_limit and has no recompile_limit: --compile sets whichever exists."""
    from types import SimpleNamespace

    config = SimpleNamespace(**{name: 8})
    monkeypatch.setattr(torch._dynamo, "config", config)  # only sample reads this attribute here
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    monkeypatch.setattr(sample, "_COMPILED", {})
    assert sample._compiled_decode_step(torch.device("cpu")) is sample._decode_step
    assert vars(config) == {name: sample.RECOMPILE_LIMIT}
