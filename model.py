"""model.py — the Qwen network (Qwen2, Qwen2.5, Qwen3 dense), written by hand (its tokenizer: tokenizer.py).

Reads and writes Hugging Face checkpoint folders unchanged: module names match theirs
(`model.layers.N.self_attn.q_proj`, ...), so there is no key remapping anywhere.

    cfg = QwenConfig.from_json("ckpt/config.json")
    model = Qwen.from_pretrained("ckpt")              # meta-device build, assign=True load
    logits = model(ids)                               # [B, T, V]
    hidden = model(ids, return_hidden=True)           # [B, T, d]; ppo.py fuses the lm_head
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class CheckpointError(Exception):
    """A checkpoint folder that cannot be loaded; the message names the file and key."""


# -----------------------------------------------------------------------------
# Config


@dataclass
class QwenConfig:
    """Mirror of Hugging Face's `config.json` for Qwen2/Qwen2.5 and Qwen3 (dense)."""

    model_type: str = "qwen2"  # "qwen2" (q/k/v bias) or "qwen3" (q_norm/k_norm, no bias)
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    head_dim: int | None = None  # Qwen3 sets it explicitly; Qwen2 derives hidden/heads
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    tie_word_embeddings: bool = False
    attention_bias: bool | None = None  # None: the model_type's default (qwen2 True, qwen3 False)
    hidden_act: str = "silu"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    torch_dtype: str = "float32"
    extra: dict = field(default_factory=dict, repr=False)  # unknown keys, written back on save

    def __post_init__(self):
        if self.model_type not in ("qwen2", "qwen3"):
            raise CheckpointError(
                f"unsupported model_type {self.model_type!r} (supported: qwen2, qwen3)")
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.attention_bias is None:
            self.attention_bias = self.model_type == "qwen2"
        if self.hidden_act != "silu":
            raise CheckpointError(f"unsupported hidden_act {self.hidden_act!r} (only silu)")
        if self.extra.get("use_sliding_window"):
            raise CheckpointError("use_sliding_window=true is not supported (full attention only)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError("num_attention_heads must be a multiple of num_key_value_heads")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "QwenConfig":
        d = dict(d)
        if "model_type" not in d:
            raise CheckpointError(f"{source}: missing key 'model_type'")
        # transformers >= 5 nests rope_theta inside rope_parameters
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if "rope_theta" not in d and "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(f"{source}: unsupported rope scaling {rope_type!r}")
        if "dtype" in d and "torch_dtype" not in d:
            d["torch_dtype"] = d["dtype"]
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        try:
            return cls(**known, extra=extra)
        except TypeError as e:
            raise CheckpointError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str) -> "QwenConfig":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: not found (is this a checkpoint folder?)") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: invalid JSON ({e})") from None
        return cls.from_dict(d, source=path)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d = {**self.extra, **d}
        d["architectures"] = ["Qwen2ForCausalLM" if self.model_type == "qwen2" else "Qwen3ForCausalLM"]
        d.pop("rope_parameters", None)
        d.pop("rope_scaling", None)
        if self.model_type == "qwen2":
            d.pop("attention_bias")  # always on in Qwen2; transformers' Qwen2Config has no such key
        return d


# -----------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # normalise in fp32, then cast back before the weight (Hugging Face's order); one fused op
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def rope_tables(n_positions: int, head_dim: int, theta: float, device=None):
    """cos, sin [n_positions, head_dim] in fp32; sin carries rotate_half's sign (-sin | +sin)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.arange(n_positions, device=device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)


def apply_rope(x, cos, sin):
    """x [B, H, T, hd], cos/sin [B, 1, T, hd]; roll(x, hd/2) * signed sin == rotate_half(x) * sin."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


class KVCache:
    """Preallocated keys/values: per layer one [B, H_kv, S, hd] tensor, written at given positions.

    Rows may hold sequences of different lengths: each forward passes the absolute positions of
    its new tokens, keys land in those slots, and the attention mask lets a query at position p
    see slots 0..p only — so stale or padded slots beyond a row's length are never read. A forward
    over b < B rows uses rows 0..b-1 (the prompts' prefill, before `repeat_rows` copies them to
    their samples). One tensor per layer, not slices of one: a compiled step then writes each in place.
    """

    def __init__(self, n_layers, batch, n_kv_heads, max_len, head_dim, dtype=torch.float32,
                 device=None):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def update(self, layer: int, positions, k, v):
        """k/v [b, H_kv, T, hd] -> the layer's cache rows 0..b-1, k, v [b, H_kv, S, hd].

        positions: an int p (every row's new tokens go to slots p..p+T-1) or [b, T] per-token slots.
        """
        b, T = k.shape[0], k.shape[2]
        ck, cv = self.k[layer], self.v[layer]
        if b < ck.shape[0]:
            ck, cv = ck[:b], cv[:b]
        if isinstance(positions, int):
            ck[:, :, positions:positions + T] = k
            cv[:, :, positions:positions + T] = v
        else:  # an indexed store, which a compiled step does in place (a scatter_ copies the whole cache)
            rows = torch.arange(b, device=k.device)[:, None]
            ck[rows, :, positions] = k.transpose(1, 2).to(ck.dtype)  # [b, T, H_kv, hd] into slots [b, T]
            cv[rows, :, positions] = v.transpose(1, 2).to(cv.dtype)
        return ck, cv

    def repeat_rows(self, b: int, n: int, length: int):
        """Rows 0..b-1 -> rows 0..b*n-1, each n times over (slots 0..length-1): prompts to their samples."""
        for cache in self.k + self.v:
            cache[:b * n, :, :length] = cache[:b, :, :length].repeat_interleave(n, dim=0)


class Attention(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.hd, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.hd, cfg.hidden_size, bias=False)
        if cfg.model_type == "qwen3":  # per-head RMSNorm on q and k, before RoPE
            self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    grouped_decode: bool | None = None  # masked decode with query heads as query positions (attend); None: on CUDA

    def forward(self, x, cos, sin, mask=None, cache=None, layer=0, positions=None):
        """x [B, T, d] -> [B, T, d]; `Qwen.forward` says what mask, cache and positions mean."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None and positions is None:  # prefill from slot 0: store keys, attend to the new ones
            cache.update(layer, 0, k, v)
        elif cache is not None:
            k, v = cache.update(layer, positions, k, v)
            S = mask.shape[-1] if mask is not None else positions + T  # attend only to the slots in use
            k, v = k[:, :, :S], v[:, :, :S]
        y = self.attend(q, k, v, causal=cache is None or positions is None, mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))

    def attend(self, q, k, v, causal, mask):
        """q [B, H, T, hd], k/v [B, H_kv, S, hd] -> [B, H, T, hd]; causal (then S == T), or a mask
        [B, 1, T, S] (True = may attend), or neither (one step of rows at one position)."""
        gqa = self.n_heads != self.n_kv
        if causal:  # no explicit mask: flash attention on GPU
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        grouped = q.is_cuda if self.grouped_decode is None else self.grouped_decode
        if gqa and mask is not None and q.shape[2] == 1 and grouped:
            # enable_gqa with a mask rules out the fused CUDA kernels; with one query per row a kv head's G
            # query heads can act as G query positions: plain SDPA, no K/V copy. The CPU keeps enable_gqa
            # (no fused-kernel limit to dodge there, and its results stay bit-identical to earlier versions)
            B, H, _, hd = q.shape
            y = F.scaled_dot_product_attention(q.view(B, self.n_kv, H // self.n_kv, hd), k, v, attn_mask=mask)
            return y.view(B, H, 1, hd)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class MLP(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask=None, cache=None, layer=0, positions=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, positions)
        return x + self.mlp(self.post_attention_layernorm(x))


class QwenBody(nn.Module):
    """Hugging Face's `model.` prefix: embeddings, decoder layers, final norm."""

    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# -----------------------------------------------------------------------------
# The model


class Qwen(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.config = cfg
        self.model = QwenBody(cfg)
        # tied checkpoints have no lm_head module at all: the embedding doubles as the output layer
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._rope = {}  # (device, dtype) -> cos/sin tables; a plain dict so meta-device builds skip it
        self._static_caches = {}  # (batch, max_len, dtype, device) -> KVCache, see static_cache
        self.grad_ckpt = False  # activation checkpointing: backward recomputes each layer (train.py --grad-ckpt)

    def rope(self, positions, T: int, dtype, device):
        """cos, sin for T new tokens, looked up in tables built once: [1, 1, T, head_dim] when every row
        is at the same positions (`positions` None: 0..T-1, or an int start), [B, 1, T, head_dim] for
        per-row positions [B, T]."""
        key = (device, dtype)
        if key not in self._rope:
            cos, sin = rope_tables(self.config.max_position_embeddings, self.config.head_dim,
                                   self.config.rope_theta, device)
            self._rope[key] = (cos.to(dtype), sin.to(dtype))
        cos, sin = self._rope[key]
        if positions is None or isinstance(positions, int):
            start = positions or 0
            return cos[None, None, start:start + T], sin[None, None, start:start + T]
        return cos[positions][:, None], sin[positions][:, None]

    @property
    def output_weight(self):
        """The [V, d] output projection (the embedding when tied); ppo.py fuses it into log-probs."""
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden):
        """hidden [..., d] -> logits [..., V]."""
        return F.linear(hidden, self.output_weight)

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None) -> KVCache:
        c, p = self.config, self.output_weight
        return KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, max_len, c.head_dim,
                       dtype=dtype or p.dtype, device=device or p.device)

    def static_cache(self, batch: int, max_len: int) -> KVCache:
        """The model's own [batch, max_len] cache, made on first request and returned again after:
        a compiled decode step then sees the same tensors call after call (CUDA graphs replay fixed
        addresses). Each shape stays allocated for the model's lifetime, so callers pad their shapes to
        a few buckets (sample.py)."""
        p = self.output_weight
        key = (batch, max_len, p.dtype, p.device)
        if key not in self._static_caches:
            cache = self.new_cache(batch, max_len)
            for t in cache.k + cache.v:
                torch._dynamo.mark_static_address(t)  # cudagraphs: no copy in, in-place writes allowed
            self._static_caches[key] = cache
        return self._static_caches[key]

    def forward(self, input_ids, positions=None, cache: KVCache | None = None, return_hidden=False,
                attend_len: int | None = None):
        """input_ids [B, T] -> logits [B, T, V] (or final hidden states [B, T, d]).

        positions None: tokens at 0..T-1 with causal attention (right padding is harmless) — training,
        or, with a cache, a prefill whose keys are stored in slots 0..T-1. With a cache, `positions`
        can also be an int p (every row's tokens at p..p+T-1: a decode step of rows of equal length
        needs no mask) or [B, T], each new token's own slot, attending to slots 0..p for a token at p.
        `attend_len` (a host int >= max(positions)+1) limits attention to the first slots of the
        cache, so decode cost grows with the text, not the buffer.
        """
        B, T = input_ids.shape
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rope(positions, T, x.dtype, input_ids.device)
        mask = None  # causal over the new tokens, or one step of rows at one position: no mask at all
        if cache is not None and isinstance(positions, torch.Tensor):
            S = cache.max_len if attend_len is None else attend_len
            slots = torch.arange(S, device=input_ids.device)
            mask = (slots[None, None, :] <= positions[:, :, None])[:, None]  # [B, 1, T, S]
        elif cache is not None and isinstance(positions, int) and T > 1:  # a chunk after slot p: causal from p
            slots = torch.arange(positions + T, device=input_ids.device)
            mask = (slots[None, :] <= positions + torch.arange(T, device=input_ids.device)[:, None])[None, None]
        for i, layer in enumerate(self.model.layers):
            if self.grad_ckpt and torch.is_grad_enabled():  # keep only the layer's input for backward
                x = checkpoint(layer, x, cos, sin, mask, cache, i, positions, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, i, positions)
        x = self.model.norm(x)
        return x if return_hidden else self.logits(x)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- checkpoint folders -------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str, dtype=None, device=None) -> "Qwen":
        """Load a Hugging Face checkpoint folder (single file or shards, tied or untied).

        Built on the meta device and filled with `assign=True`, so a 7B model is never in
        memory twice. dtype defaults to the checkpoint's stored dtype.
        """
        if not os.path.isdir(path):
            raise CheckpointError(f"{path}: not a directory")
        cfg = QwenConfig.from_json(os.path.join(path, "config.json"))
        with torch.device("meta"):
            model = cls(cfg)
        expected = {k: v for k, v in model.state_dict().items()}
        state = {}
        for file in _weight_files(path):
            state.update(_load_safetensors(file, device))
        if cfg.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # some tied checkpoints store a copy; we never use it
        for key, meta in expected.items():
            if key not in state:
                raise CheckpointError(f"{path}: missing tensor '{key}'")
            if tuple(state[key].shape) != tuple(meta.shape):
                raise CheckpointError(f"{path}: tensor '{key}' has shape {tuple(state[key].shape)}, "
                                      f"config expects {tuple(meta.shape)}")
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise CheckpointError(f"{path}: unexpected tensor '{unexpected[0]}' "
                                  f"({len(unexpected)} unexpected in all)")
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        model.load_state_dict(state, assign=True, strict=True)
        return model.eval()

    def save_pretrained(self, path: str, max_shard_bytes: int = 5 * 2**30):
        """Write config.json + model.safetensors (or shards and an index above max_shard_bytes),
        a folder transformers' AutoModelForCausalLM and vLLM load unchanged."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        cfg = self.config.to_dict()
        cfg["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        shards, current, size = [], {}, 0
        for k, v in state.items():
            nbytes = v.numel() * v.element_size()
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[k] = v
            size += nbytes
        shards.append(current)
        for old in os.listdir(path):  # stale weights from an earlier save would shadow these
            if old.startswith("model") and (old.endswith(".safetensors") or old.endswith(".index.json")):
                os.remove(os.path.join(path, old))
        if len(shards) == 1:
            save_file(shards[0], os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
            return
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(path, name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(v.numel() * v.element_size() for v in state.values())
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def _weight_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: malformed index ({type(e).__name__}: {e})") from None
        files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
        for file in files:
            if not os.path.exists(file):
                raise CheckpointError(f"{index}: shard '{os.path.basename(file)}' not found")
        return files
    if os.path.exists(single):
        return [single]
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _load_safetensors(file: str, device=None) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    # a truncated/corrupt header makes safetensors fail with an opaque message: check it ourselves
    try:
        with open(file, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > os.path.getsize(file) - 8:
                raise ValueError("header length exceeds file size")
            json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: corrupt safetensors file ({e})") from None
    try:
        return load_file(file, device=str(device) if device is not None else "cpu")
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{file}: corrupt safetensors file ({e})") from None

