"""model.py against transformers' Qwen2/Qwen3 on random tiny configs, checkpoint I/O; tokenizer.py against theirs."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from model import Attention, CheckpointError, Qwen, QwenConfig
from tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")


def hf_model(model_type, tied, seed=0, **over):
    torch.manual_seed(seed)
    common = dict(vocab_size=311, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied)
    common.update(over)
    if model_type == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        m = transformers.Qwen2ForCausalLM(cfg)
    else:
        common.setdefault("head_dim", 24)  # Qwen3: head_dim independent of hidden/heads
        cfg = transformers.Qwen3Config(**common)
        m = transformers.Qwen3ForCausalLM(cfg)
    # random init leaves biases and norms at 0/1: perturb everything so parity means something
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def ids_batch(vocab, B=3, T=17, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


CASES = [("qwen2", True, None), ("qwen2", False, "20KB"), ("qwen3", True, None),
         ("qwen3", False, "30KB")]


@pytest.mark.parametrize("model_type,tied,shard", CASES)
def test_logits_parity_with_transformers(tmp_path, model_type, tied, shard):
    hf = hf_model(model_type, tied)
    kw = {"max_shard_size": shard} if shard else {}
    hf.save_pretrained(tmp_path, **kw)
    files = os.listdir(tmp_path)
    assert ("model.safetensors.index.json" in files) == bool(shard)
    ours = Qwen.from_pretrained(str(tmp_path))
    assert (ours.lm_head is None) == tied
    ids = ids_batch(hf.config.vocab_size)
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert (got - ref).abs().max().item() <= 1e-4


def test_bf16_parity(tmp_path):
    hf = hf_model("qwen2", False)
    hf.save_pretrained(tmp_path)
    ids = ids_batch(hf.config.vocab_size)
    ours = Qwen.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    assert ours.output_weight.dtype == torch.bfloat16
    with torch.no_grad():
        ref = hf(ids).logits.float()
        got = ours(ids).float()
    # bf16 has 8 mantissa bits: compare against the logit scale, not 1e-4
    scale = ref.abs().max().item()
    assert (got - ref).abs().max().item() <= 0.05 * scale
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


@pytest.mark.parametrize("model_type,tied", [("qwen2", True), ("qwen3", False)])
def test_save_then_transformers_load(tmp_path, model_type, tied):
    hf = hf_model(model_type, tied, seed=3)
    hf.save_pretrained(tmp_path / "a")
    ours = Qwen.from_pretrained(str(tmp_path / "a"))
    ours.save_pretrained(str(tmp_path / "b"))
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "b")).eval()
    ids = ids_batch(hf.config.vocab_size, seed=4)
    with torch.no_grad():
        assert (back(ids).logits - ours(ids)).abs().max().item() <= 1e-4


def test_save_sharded_roundtrip(tmp_path):
    hf = hf_model("qwen2", False, seed=5)
    hf.save_pretrained(tmp_path / "a")
    ours = Qwen.from_pretrained(str(tmp_path / "a"))
    ours.save_pretrained(str(tmp_path / "b"), max_shard_bytes=40_000)
    files = sorted(os.listdir(tmp_path / "b"))
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    again = Qwen.from_pretrained(str(tmp_path / "b"))
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "b")).eval()
    ids = ids_batch(hf.config.vocab_size, seed=6)
    with torch.no_grad():
        assert torch.equal(again(ids), ours(ids))
        assert (back(ids).logits - ours(ids)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_kv_cache_matches_full_forward(tmp_path, model_type):
    """Prefill part of a sequence into the cache, decode the rest one token at a time."""
    hf = hf_model(model_type, False, seed=7)
    hf.save_pretrained(tmp_path)
    m = Qwen.from_pretrained(str(tmp_path))
    ids = ids_batch(m.config.vocab_size, B=2, T=12, seed=8)
    with torch.no_grad():
        full = m(ids)
        cache = m.new_cache(batch=2, max_len=32)
        pos = torch.arange(12).expand(2, 12)
        out = [m(ids[:, :5], pos[:, :5], cache=cache)]
        for t in range(5, 12):
            out.append(m(ids[:, t:t + 1], pos[:, t:t + 1], cache=cache, attend_len=t + 1))
    assert (torch.cat(out, 1) - full).abs().max().item() <= 1e-4


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
@pytest.mark.parametrize("grouped", [False, True], ids=["gqa", "grouped"])
def test_cache_paths_match_transformers(tmp_path, model_type, grouped, monkeypatch):
    """Every cached form against transformers' logits: prefill (is_causal, no mask), decode of rows at one
    position (an int: no mask), per-row positions (mask; with `grouped`, query heads as query positions),
    and a multi-token chunk after earlier slots."""
    monkeypatch.setattr(Attention, "grouped_decode", grouped)
    hf = hf_model(model_type, False, seed=9)
    hf.save_pretrained(tmp_path)
    m = Qwen.from_pretrained(str(tmp_path))
    ids = ids_batch(m.config.vocab_size, B=3, T=14, seed=10)
    with torch.no_grad():
        ref = hf(ids).logits
        cache = m.new_cache(batch=3, max_len=40)
        out = [m(ids[:, :5], cache=cache)]  # prefill
        out += [m(ids[:, t:t + 1], t, cache=cache) for t in range(5, 9)]  # rows at one position
        pos = torch.arange(14).expand(3, 14)
        out += [m(ids[:, t:t + 1], pos[:, t:t + 1], cache=cache, attend_len=t + 1) for t in range(9, 11)]
        out += [m(ids[:, 11:14], 11, cache=cache)]  # a chunk after slot 11
    assert (torch.cat(out, 1) - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("grouped", [False, True], ids=["gqa", "grouped"])
def test_right_padded_rows_match_transformers(tmp_path, grouped, monkeypatch):
    """Rows of different lengths, right-padded: causal prefill suffices (padding comes after a row's
    tokens), then per-row decode positions; each row equals transformers on its own unpadded text."""
    monkeypatch.setattr(Attention, "grouped_decode", grouped)
    hf = hf_model("qwen2", True, seed=12)
    hf.save_pretrained(tmp_path)
    m = Qwen.from_pretrained(str(tmp_path))
    lens, extra = [3, 8, 5], 4
    seqs = ids_batch(m.config.vocab_size, B=3, T=8 + extra, seed=13)
    padded = seqs[:, :8].clone()
    for i, L in enumerate(lens):
        padded[i, L:] = 0  # padding a row's own continuation must not matter
    with torch.no_grad():
        cache = m.new_cache(batch=3, max_len=8 + extra)
        prefill = m(padded, cache=cache)
        rows_pos = torch.tensor(lens)[:, None]
        steps = []
        for t in range(extra):
            tok = torch.stack([seqs[i, L + t] for i, L in enumerate(lens)])[:, None]
            steps.append(m(tok, rows_pos + t, cache=cache, attend_len=8 + t + 1))
        for i, L in enumerate(lens):
            ref = hf(seqs[i:i + 1, :L + extra]).logits[0]
            got = torch.cat([prefill[i, :L], torch.cat(steps, 1)[i]])
            assert (got - ref).abs().max().item() <= 1e-4


def test_attention_forms(tmp_path, monkeypatch):
    """Which SDPA call each path makes: training and prefill use is_causal with no mask (flash attention
    on GPU); a decode step of rows at one position has no mask; per-row positions need one, and the
    grouped form drops enable_gqa (the fused CUDA kernels take a mask only without it)."""
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, enable_gqa=False, **kw):
        calls.append(dict(q=tuple(q.shape), mask=attn_mask is not None, causal=is_causal, gqa=enable_gqa))
        return real(q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=enable_gqa, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    hf_model("qwen2", True).save_pretrained(tmp_path)
    m = Qwen.from_pretrained(str(tmp_path))
    n_layers, H, H_kv, hd = m.config.num_hidden_layers, 4, 2, m.config.head_dim
    ids = ids_batch(m.config.vocab_size, B=2, T=6)

    def forms(*args, **kw):
        calls.clear()
        with torch.no_grad():
            m(*args, **kw)
        assert len(calls) == n_layers
        return calls[0]

    assert forms(ids) == dict(q=(2, H, 6, hd), mask=False, causal=True, gqa=True)  # training forward
    cache = m.new_cache(2, 16)
    assert forms(ids, cache=cache) == dict(q=(2, H, 6, hd), mask=False, causal=True, gqa=True)  # prefill
    assert forms(ids[:, :1], 6, cache=cache) == dict(q=(2, H, 1, hd), mask=False, causal=False, gqa=True)
    pos = torch.tensor([[7], [5]])
    assert forms(ids[:, :1], pos, cache=cache, attend_len=8) == dict(q=(2, H, 1, hd), mask=True, causal=False,
                                                                        gqa=True)
    monkeypatch.setattr(Attention, "grouped_decode", True)  # the CUDA default
    assert forms(ids[:, :1], pos, cache=cache, attend_len=8) == dict(q=(2, H_kv, H // H_kv, hd), mask=True,
                                                                        causal=False, gqa=False)


def test_hidden_states_and_output_weight(tmp_path):
    hf = hf_model("qwen2", True)
    hf.save_pretrained(tmp_path)
    m = Qwen.from_pretrained(str(tmp_path))
    ids = ids_batch(m.config.vocab_size)
    with torch.no_grad():
        h = m(ids, return_hidden=True)
        assert h.shape == (*ids.shape, m.config.hidden_size)
        assert torch.allclose(h @ m.output_weight.T, m(ids), atol=1e-5)
    assert m.output_weight is m.model.embed_tokens.weight


# ---- bad input --------------------------------------------------------------


def saved(tmp_path, model_type="qwen2", tied=False):
    hf_model(model_type, tied).save_pretrained(tmp_path)
    return tmp_path


def one_line(err):
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError) as e:
        Qwen.from_pretrained(str(tmp_path))
    assert "config.json" in one_line(e)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError) as e:
        Qwen.from_pretrained(str(tmp_path / "nope"))
    assert "nope" in one_line(e)


def test_unknown_model_type(tmp_path):
    p = saved(tmp_path)
    cfg = json.loads((p / "config.json").read_text())
    cfg["model_type"] = "llama"
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        Qwen.from_pretrained(str(p))
    assert "llama" in one_line(e) and "model_type" in one_line(e)


def rewrite_weights(p, fn):
    from safetensors.torch import load_file, save_file
    state = load_file(str(p / "model.safetensors"))
    fn(state)
    save_file(state, str(p / "model.safetensors"))


def test_missing_tensor(tmp_path):
    p = saved(tmp_path)
    rewrite_weights(p, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError) as e:
        Qwen.from_pretrained(str(p))
    assert "model.layers.1.mlp.up_proj.weight" in one_line(e)


def test_misshaped_tensor(tmp_path):
    p = saved(tmp_path)
    rewrite_weights(p, lambda s: s.update({"model.norm.weight": torch.ones(7)}))
    with pytest.raises(CheckpointError) as e:
        Qwen.from_pretrained(str(p))
    assert "model.norm.weight" in one_line(e) and "(7,)" in one_line(e)


def test_unexpected_tensor(tmp_path):
    p = saved(tmp_path)
    rewrite_weights(p, lambda s: s.update({"model.layers.9.foo": torch.ones(2)}))
    with pytest.raises(CheckpointError) as e:
        Qwen.from_pretrained(str(p))
    assert "model.layers.9.foo" in one_line(e)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors(tmp_path, damage):
    p = saved(tmp_path)
    f = p / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x13" * 100, "empty": b""}[damage])
    with pytest.raises(CheckpointError) as e:
        Qwen.from_pretrained(str(p))
    assert "model.safetensors" in one_line(e)


def test_missing_shard(tmp_path):
    hf_model("qwen2", False).save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))[0]
    os.remove(tmp_path / shard)
    with pytest.raises(CheckpointError) as e:
        Qwen.from_pretrained(str(tmp_path))
    assert shard in one_line(e)


def test_config_wrong_field_type(tmp_path):
    p = saved(tmp_path)
    cfg = json.loads((p / "config.json").read_text())
    del cfg["model_type"]
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        Qwen.from_pretrained(str(p))
    assert "model_type" in one_line(e)


# ---- tokenizer ---------------------------------------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer_folder(path, chat_template):
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world, the quick brown fox 1 + 2 = 3 héllo 🙂"] * 20, trainer)
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "chat_template": chat_template}, f)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]}, f)
    return Tokenizer.from_pretrained(path)


QWEN25_TEMPLATE_HINT = "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"


@pytest.fixture
def qwen25_tok(tmp_path):
    return make_tokenizer_folder(str(tmp_path / "tok25"), QWEN25_TEMPLATE_HINT)


@pytest.fixture
def plain_tok(tmp_path):
    return make_tokenizer_folder(str(tmp_path / "tokplain"), "{% for m in messages %}...{% endfor %}")


def test_chat_default_system_prompt(qwen25_tok):
    got = qwen25_tok.chat([{"role": "user", "content": "Hi"}])
    assert got == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                   "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_chat_explicit_system_and_multiturn(qwen25_tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"}]
    assert qwen25_tok.chat(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n"
        "<|im_start|>assistant\n2<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert qwen25_tok.chat(msgs[:3], add_generation_prompt=False).endswith("<|im_start|>assistant\n2<|im_end|>\n")


def test_chat_without_default_system(plain_tok):
    assert plain_tok.chat([{"role": "user", "content": "x"}]) == \
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_specials_and_roundtrip(qwen25_tok):
    t = qwen25_tok
    assert t.eos_id == t.tok.token_to_id("<|im_end|>")
    assert t.pad_id == t.tok.token_to_id("<|endoftext|>")
    assert set(t.stop_ids) == {t.tok.token_to_id("<|im_end|>"), t.tok.token_to_id("<|endoftext|>")}
    text = t.chat([{"role": "user", "content": "héllo 🙂 wörld 12+3"}])
    ids = t.encode(text)
    assert ids.count(t.tok.token_to_id("<|im_start|>")) == 3  # special tokens are single ids
    assert t.decode(ids) == text


def test_tokenizer_matches_transformers(qwen25_tok, tmp_path):
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok25" / "tokenizer.json"))
    text = "<|im_start|>user\nthe quick 1 + 2<|im_end|>\n"
    assert qwen25_tok.encode(text) == hf.encode(text, add_special_tokens=False)


def test_corrupt_tokenizer(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError) as e:
        Tokenizer.from_pretrained(str(tmp_path))
    assert "tokenizer.json" in one_line(e)


def test_trained_tokenizer_folder_loads_everywhere(tiny_ckpt):
    """A folder this project writes: our loader, transformers' model and its chat template agree."""
    tok = Tokenizer.from_pretrained(tiny_ckpt)
    assert tok.default_system is None and tok.eos_id == tok.tok.token_to_id("<|im_end|>")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tiny_ckpt)
    msgs = [{"role": "user", "content": "nums 3 5 7 target 22"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "again"}]
    assert hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == tok.chat(msgs)
    ids = tok.encode_chat(msgs)
    assert hf_tok.decode(ids) == tok.decode(ids)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_ckpt).eval()
    ours = Qwen.from_pretrained(tiny_ckpt)
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max().item() <= 1e-4
