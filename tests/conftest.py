"""Shared test helpers: the suite pinned to the CPU, a tiny random Qwen checkpoint folder (model +
trained byte-level tokenizer), and `scripted_generate`, a sample.generate stand-in whose completions
the test writes (`from conftest import scripted_generate`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet_threads  # noqa: E402,F401  (before torch: idle OpenMP threads sleep)

# the suite states CPU behaviour (`--device auto` would pick CUDA on a GPU host): hide GPUs, subprocesses too
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

import sample  # noqa: E402
from model import Qwen, QwenConfig  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

CORPUS = ["Using the numbers [3, 5, 7], create an equation that equals 22. <answer> 3 * 5 + 7 </answer>",
          "<think> 5 * 3 = 15, 15 + 7 = 22 </think> <JUDGE_SCORE>1</JUDGE_SCORE> <JUDGE_SCORE>0</JUDGE_SCORE>",
          "integrate x**2*sin(x) + exp(x)/sqrt(x) - log(x) dx", "0123456789 +-*/() = target numbers"]


def make_tiny_checkpoint(path, seed=0, vocab_size=320, model_type="qwen2", tied=True, **over):
    """Write a random tiny Qwen folder with its own tokenizer; returns (model, tokenizer)."""
    tok = Tokenizer.train(CORPUS * 10, vocab_size=vocab_size)
    torch.manual_seed(seed)
    cfg = dict(model_type=model_type, vocab_size=tok.vocab_size, hidden_size=48, intermediate_size=96,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=tied,
               eos_token_id=tok.eos_id)
    cfg.update(over)
    model = Qwen(QwenConfig(**cfg))
    with torch.no_grad():  # default nn init gives near-uniform outputs; widen them a little
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return model.eval(), tok


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Path of a tiny random checkpoint folder shared by the whole session (do not modify it)."""
    path = tmp_path_factory.mktemp("tiny_ckpt")
    make_tiny_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls gain nothing from threads, and spinning threads crawl on a busy shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def scripted_generate(tok, script, real=None, calls=None):
    """A `sample.generate` whose rows are `script(prompt_text, sample_index)` (a completion text,
    given the stop token), or the real sampler's row where script returns None (needs `real`).
    `calls`, a list, records (prompt_texts, n) of each call."""

    def generate(model, prompts, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0, top_k=0, stop_ids=(),
                 pad_id=0, seed=None, **kw):
        texts = [tok.decode(p) for p in prompts]
        if calls is not None:
            calls.append((texts, n))
        base = None
        if real is not None:
            base = real(model, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        top_k=top_k, stop_ids=stop_ids, pad_id=pad_id, seed=seed)
        rows, logps = [], []
        for i in range(len(prompts) * n):
            text = script(texts[i // n], i % n)
            if text is None:
                rows.append(base.completion(i))
                logps.append(base.logprobs[i, :len(rows[-1])].tolist())
            else:
                rows.append(tok.encode(text) + [tok.eos_id])
                logps.append([0.0] * len(rows[-1]))
        L = max(len(r) for r in rows)
        tokens = torch.full((len(rows), L), pad_id, dtype=torch.long)
        logprobs = torch.zeros(len(rows), L)
        for i, (r, lp) in enumerate(zip(rows, logps)):
            tokens[i, :len(r)] = torch.tensor(r)
            logprobs[i, :len(r)] = torch.tensor(lp)
        reasons = ["stop" if r[-1] in stop_ids else "length" for r in rows]
        return sample.Rollout(tokens, logprobs, torch.tensor([len(r) for r in rows]), reasons, n)

    return generate
