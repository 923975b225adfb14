"""Shared fixtures: a tiny random Qwen checkpoint folder (model + trained byte-level tokenizer)."""

import os
import sys

# a busy shared CPU makes spinning OpenMP workers 4-60x slower; waiting threads should sleep
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model import Qwen, QwenConfig, Tokenizer  # noqa: E402

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
