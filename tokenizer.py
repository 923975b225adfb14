"""tokenizer.py — Qwen's tokenizer: the `tokenizers` library plus Qwen's special tokens and its ChatML
template, rendered by hand.

Reads and writes a model folder's tokenizer files as Hugging Face writes them (tokenizer.json,
tokenizer_config.json, generation_config.json), so transformers loads what it saves.

    tok = Tokenizer.from_pretrained("ckpt")
    ids = tok.encode(tok.chat([{"role": "user", "content": "hi"}]))
    ids = tok.encode_chat([{"role": "user", "content": "hi"}])   # the same
"""

import json
import os

from model import CheckpointError


QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# ChatML with no default system prompt, written for models this project trains (transformers/vLLM read it)
CHATML_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                   "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def chatml(messages: list[dict], add_generation_prompt: bool = True, default_system: str | None = None) -> str:
    """Qwen's ChatML by hand: `<|im_start|>role\ncontent<|im_end|>\n` per message; Qwen2.5 first adds
    a default system message when the conversation has none."""
    out = []
    if (not messages or messages[0]["role"] != "system") and default_system is not None:
        out.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    for m in messages:
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"unknown chat role {m['role']!r}")
        out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


class Tokenizer:
    """`tokenizers.Tokenizer` plus Qwen's special tokens and its ChatML template, rendered by hand."""

    def __init__(self, tok, eos_id: int, pad_id: int, default_system: str | None, stop_ids=(),
                 chat_template: str = ""):
        self.tok = tok
        self.chat_template = chat_template  # kept only so save_pretrained writes it back
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.default_system = default_system  # Qwen2.5 inserts one when no system message is given
        self.stop_ids = tuple(dict.fromkeys([eos_id, *stop_ids]))  # generation stops on any of these

    @classmethod
    def from_pretrained(cls, path: str) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        file = os.path.join(path, "tokenizer.json")
        try:
            tok = HFTokenizer.from_file(file)
        except Exception as e:  # the tokenizers library raises a bare Exception
            raise CheckpointError(f"{file}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
        config = _read_json_if_exists(os.path.join(path, "tokenizer_config.json"))
        gen = _read_json_if_exists(os.path.join(path, "generation_config.json"))

        def token_id(name, key):
            text = config.get(key)
            if isinstance(text, dict):  # older configs store AddedToken dicts
                text = text.get("content")
            if text is None:
                return None
            i = tok.token_to_id(text)
            if i is None:
                raise CheckpointError(f"{path}/tokenizer_config.json: {key} {text!r} is not in the vocabulary")
            return i

        eos = token_id("eos", "eos_token")
        gen_eos = gen.get("eos_token_id")
        gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        if eos is None:
            eos = gen_eos[0] if gen_eos else tok.token_to_id("<|endoftext|>")
        if eos is None:
            raise CheckpointError(f"{path}: no eos token in tokenizer_config.json or generation_config.json")
        pad = token_id("pad", "pad_token")
        im_end = tok.token_to_id("<|im_end|>")
        template = config.get("chat_template") or ""
        if isinstance(template, list):  # a list of named templates
            template = " ".join(t.get("template", "") for t in template)
        default_system = QWEN25_DEFAULT_SYSTEM if QWEN25_DEFAULT_SYSTEM in template else None
        stops = gen_eos + ([im_end] if im_end is not None else [])
        return cls(tok, eos, eos if pad is None else pad, default_system, stops, config.get("chat_template") or "")

    @classmethod
    def train(cls, texts, vocab_size: int) -> "Tokenizer":
        """A small byte-level BPE trained on `texts`, with Qwen's special tokens (ids 0, 1, 2) and
        digits split one per token."""
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        # one token per digit, as in Qwen's own tokenizer: arithmetic sees the same digits everywhere
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(QWEN_SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(texts, trainer)
        im_end, eot = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
        return cls(tok, eos_id=im_end, pad_id=eot, default_system=None, stop_ids=(eot,),
                   chat_template=CHATML_TEMPLATE)

    def save_pretrained(self, path: str):
        """tokenizer.json + tokenizer_config.json + generation_config.json, as transformers expects."""
        os.makedirs(path, exist_ok=True)
        self.tok.save(os.path.join(path, "tokenizer.json"))
        name = self.tok.id_to_token
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": name(self.eos_id),
                  "pad_token": name(self.pad_id), "chat_template": self.chat_template,
                  "model_max_length": 32768}
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump({"eos_token_id": list(self.stop_ids), "pad_token_id": self.pad_id}, f, indent=2)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Qwen2.5 ChatML, with this tokenizer's default system prompt when none is given."""
        return chatml(messages, add_generation_prompt, self.default_system)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.chat(messages, add_generation_prompt))


def _read_json_if_exists(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None
