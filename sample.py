"""sample.py — batched KV-cache sampling, used by rollouts and by the judge.

    ro = generate(model, [ids_a, ids_b], n=8, max_new_tokens=256, temperature=1.0,
                  stop_ids=tok.stop_ids, pad_id=tok.pad_id, seed=0)
    ro.tokens [B*n, L]; ro.logprobs [B*n, L]; ro.lengths [B*n]; ro.finish_reasons; ro.completion(i)
    done = completions(model, tok, [ids_a, ids_b], n=8, max_new_tokens=256, seed=0)  # generate, decoded:
    done[i].ids; done[i].text; done[i].logp; done[i].truncated   # what rollouts, the judge and eval read

How it runs (the gpt-fast / nanochat recipe):
1. one KV cache holds prompt_max + max_new_tokens slots for each of the B*n rows: a fresh one per
   call, or with compile=True the model's persistent cache for the call's shape bucket (below);
2. the B prompts are prefilled once, right-padded into one batch with plain causal attention; each
   row's next-token logits come from its own last prompt position (lm_head on B vectors, not B x T);
3. the prefilled slots are copied to the n samples of their prompt (row i of the output is prompt i // n);
4. decode: one token per row per step at that row's own position (rows of equal length share one
   position and need no mask); eager attention reads only the slots in use so far; finished rows
   keep stepping but emit padding, and "all done?" is asked of the device only every few steps.
Sampling is `argmax(probs / Exp(1))` — a draw from `probs` with no host sync.

compile=True compiles the decode step (inductor; CUDA graphs on CUDA) for static shapes: rows and
cache length are padded up to powers of two, so a run sees a handful of shapes, each compiled once
and each with its own persistent cache (fixed addresses for CUDA graph replay); a step reads the
whole bucket under a mask.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass

import torch

SYNC_EVERY = 8  # steps between "are all rows finished?" checks (each one is a host sync on GPU)
MIN_LEN_BUCKET = 64  # compiled decode: the shortest cache; longer ones double from here
NOISE_BYTES = 8 << 20  # per prompt: how much sampling noise its own generator draws in one call
HASHED_NOISE = None  # per-prompt seeds: None hashes counters on CUDA and uses generators elsewhere (see Noise)
FUSED_NOISE = None  # hashed noise's integer part as one compiled kernel: None on CUDA (eager: ~17 passes over [R, V])
RECOMPILE_LIMIT = 128  # compiled decode: one graph per (rows, length) bucket; dynamo's default is 8


def bucket(x: int, smallest: int = 1) -> int:
    """The padded size for x: the next power of two >= max(x, smallest)."""
    return max(smallest, 1 << (x - 1).bit_length())


@dataclass
class Rollout:
    """Completions of a `generate` call; row i belongs to prompt i // n. The tensors are on the CPU
    (copied once per call), so reading rows costs no device syncs."""

    tokens: torch.Tensor  # [B*n, L] generated ids, right-padded with pad_id (L <= max_new_tokens)
    logprobs: torch.Tensor  # [B*n, L] log-prob of each sampled token under the sampling distribution; 0 at padding
    lengths: torch.Tensor  # [B*n] generated tokens per row, the stop token included
    finish_reasons: list  # per row: "stop" (emitted a stop id) or "length" (hit max_new_tokens)
    n: int  # samples per prompt

    def completion(self, i: int) -> list[int]:
        """Row i's generated ids (stop token included when there is one)."""
        return self.tokens[i, : int(self.lengths[i])].tolist()


def process_logits(logits, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """logits [R, V] -> the log-probabilities we actually sample from [R, V] (-inf outside top-k/top-p).

    Order as in Hugging Face: temperature, then top-k, then top-p, then renormalise.
    """
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already cover top_p (the first always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def sample_next(logits, temperature, top_k, top_p, generator=None, noise=None):
    """logits [R, V] -> (token ids [R], their log-probs [R]) without a host sync.

    temperature == 0 is greedy; its log-prob is the untempered model's log_softmax at the argmax.
    Otherwise the draw uses `noise` [R, V] (Exp(1) values, see Noise) or draws it from `generator`
    (None: torch's global RNG).
    """
    if temperature == 0:
        logp = torch.log_softmax(logits.float(), dim=-1)
        ids = logp.argmax(-1)
    else:
        logp = process_logits(logits, temperature, top_k, top_p)
        if noise is None:
            noise = torch.empty_like(logp).exponential_(1, generator=generator)
        ids = (logp.exp() / noise).argmax(-1)  # Gumbel-style draw: argmax p_i / E_i ~ Categorical(p)
    return ids, logp.gather(-1, ids[:, None])[:, 0]


class Noise:
    """The Exp(1) noise [R, V] of each sampling step, R = B*n rows, from the generators `seed` asks for.

    seed None: torch's global RNG; an int: one generator for all rows; a list: per prompt, drawing
    only its own n rows, so a prompt's samples do not depend on the rest of the batch. Per-prompt
    noise comes in one of two ways:
    - generators (the CPU): one torch.Generator per prompt draws K steps at once (K from n, V and
      max_new_tokens), so the Python loop over prompts runs once every K tokens; one draw of K steps
      yields exactly the numbers of K one-step draws, so K changes no sample;
    - hashed (CUDA, where Philox numbers depend on how they are drawn and K would be 1 at a 152k
      vocabulary): each (prompt seed, sample, step, token) is hashed to a uniform by counter-based
      arithmetic (hashed_uniform), for the whole batch and with no loop over prompts. fused (None: on
      CUDA): that arithmetic compiled into one kernel (fused_uniform), bit for bit the same numbers.
    """

    def __init__(self, seed, n: int, vocab: int, max_new_tokens: int, device, hashed=None, fused=None):
        self.t, self.vocab, self.device, self.n = 0, vocab, device, n
        self.per_prompt = isinstance(seed, (list, tuple))
        self.hashed = self.per_prompt and (torch.device(device).type == "cuda" if hashed is None else hashed)
        if self.hashed:  # [R] keys: the prompt's seed and the sample's index within the prompt
            seeds = torch.tensor([_int64(s) for s in seed], device=device, dtype=torch.long)
            self.keys = _mix(seeds.repeat_interleave(n) * 0x2545F491 + torch.arange(len(seed) * n, device=device) % n)
            self.columns = torch.arange(vocab, device=device, dtype=torch.long) * _GOLDEN
            fused = FUSED_NOISE if fused is None else fused
            fused = torch.device(device).type == "cuda" if fused is None else fused
            self.uniform_fn = fused_uniform if fused else hashed_uniform
        elif self.per_prompt:
            self.generators = [torch.Generator(device=device).manual_seed(s) for s in seed]
            self.K = max(1, min(max_new_tokens, NOISE_BYTES // (n * vocab * 4)))
            # [B, K, n, V]: each prompt's next K steps, contiguous so one call fills them in step order
            self.block = torch.empty((len(seed), self.K, n, vocab), device=device, dtype=torch.float32)
        else:
            self.generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)

    def next(self, rows: int):
        """The next step's noise [rows, V]."""
        if not self.per_prompt:
            noise = torch.empty(rows, self.vocab, device=self.device, dtype=torch.float32)
            return noise.exponential_(1, generator=self.generator)
        if self.hashed:  # the step's counter by a fill kernel: no host-to-device copy, no sync
            self.t += 1
            step = torch.full((), _int64(self.t * _GOLDEN), dtype=torch.long, device=self.device)
            u = self.uniform_fn(self.keys, self.columns, step)
            return u.log_().neg_()  # Exp(1); the log stays eager's kernel (a compiled one may round differently)
        k = self.t % self.K
        if k == 0:  # the next K steps of every prompt, each from its own generator
            for g, block in zip(self.generators, self.block):
                block.exponential_(1, generator=g)
        self.t += 1
        return self.block[:, k].reshape(rows, self.vocab)


_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64 (torch's integer math wraps)


def _int64(v: int) -> int:
    """A Python int wrapped to int64, as torch's integer arithmetic wraps."""
    v &= 2**64 - 1
    return v - 2**64 if v >= 2**63 else v


def _mix(x):
    """splitmix64's finaliser on int64 tensors: a bijective scramble of the 64 bits (shifts are made
    logical by masking, since >> on int64 is arithmetic)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * -7723592293110705685  # 0x94D049BB133111EB
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def hashed_uniform(keys, columns, step):
    """keys [R], columns [V] (int64), step [] (int64: the step's counter x golden ratio) -> uniforms [R, V]
    fp32 in (0, 1), never 0 or 1: 24 hashed bits of each (row, step, column).

    Wrapping integer arithmetic and exact float steps only (no rounding can differ between kernels),
    so a compiled copy (fused_uniform) gives the same bits in one pass where eager makes ~17 passes
    over [R, V] int64 arrays.
    """
    bits = _mix(_mix(keys + step)[:, None] ^ columns)  # [R, V]
    return (((bits >> 40) & 0xFFFFFF).float() + 0.5) * 2**-24  # k + 0.5 rounds to even in fp32 on every device


_FUSED_UNIFORM = {}  # "fn": hashed_uniform compiled, or hashed_uniform itself where compiling failed


def fused_uniform(keys, columns, step):
    """hashed_uniform compiled once for every shape (dynamic R and V): one kernel per step (Triton on
    CUDA, C++ on the CPU). Where the first compile fails (Triton without a C compiler, say) it warns
    once and runs eagerly from then on: the same numbers, only slower."""
    fn = _FUSED_UNIFORM.get("fn")
    if fn is not None:
        return fn(keys, columns, step)
    fn = torch.compile(hashed_uniform, dynamic=True, fullgraph=True)
    try:
        out = fn(keys, columns, step)
    except Exception as e:  # whatever the compiler raised: eager gives the same numbers
        warnings.warn(f"sample: hashed noise runs eagerly, compiling it failed: {type(e).__name__}: {e}"[:500])
        fn = hashed_uniform
        out = fn(keys, columns, step)
    _FUSED_UNIFORM["fn"] = fn
    return out


@torch.no_grad()
def check_generate_args(model, prompts, n, max_new_tokens, seed):
    """ValueError, naming what is wrong, for arguments generate() cannot sample from."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if n < 1 or max_new_tokens < 1:
        raise ValueError("generate: n and max_new_tokens must be >= 1")
    P, max_len = max(len(p) for p in prompts), model.config.max_position_embeddings
    if P + max_new_tokens > max_len:
        raise ValueError(f"generate: longest prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"the model's max_position_embeddings ({max_len})")
    if isinstance(seed, (list, tuple)) and len(seed) != len(prompts):
        raise ValueError(f"generate: {len(seed)} seeds for {len(prompts)} prompts (one per prompt, or one int)")


def generate(model, prompts, n: int = 1, max_new_tokens: int = 256, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, stop_ids=(), pad_id: int = 0, seed: int | list[int] | None = None,
             compile: bool = False, on_step=None) -> Rollout:
    """Sample n completions for each prompt (a list of token-id lists, any lengths).

    seed: a fixed seed gives the same samples on rerun; a list, one seed per prompt, makes each
    prompt's samples independent of the batch it is in (train.py under torchrun: the same rollouts on
    any number of ranks); None draws from torch's global RNG (so a caller that restores torch's RNG
    state replays the same samples). compile: torch.compile the decode step (inductor, on any
    device; the first call of each shape bucket compiles, later ones reuse it). on_step(tokens [B*n]):
    called after each step (forces a host sync per token; the CLI uses it to stream).
    """
    check_generate_args(model, prompts, n, max_new_tokens, seed)
    P, max_len = max(len(p) for p in prompts), model.config.max_position_embeddings
    device = model.output_weight.device
    B, R = len(prompts), len(prompts) * n
    noise = None if temperature == 0 else Noise(seed, n, model.output_weight.shape[0], max_new_tokens, device,
                                                hashed=HASHED_NOISE)

    # 1. the cache: a fresh [R, P + max_new_tokens] one, or the model's own for this shape bucket
    if compile:
        rows = bucket(R)
        cache = model.static_cache(rows, min(bucket(P + max_new_tokens, MIN_LEN_BUCKET), max_len))
    else:
        cache = model.new_cache(R, P + max_new_tokens)

    # 2. prefill each prompt once (right-padded, plain causal attention); logits at each last prompt token only
    ids = torch.tensor([list(p) + [pad_id] * (P - len(p)) for p in prompts], dtype=torch.long, device=device)
    prompt_lens = torch.tensor([len(p) for p in prompts], device=device)
    hidden = model(ids, cache=cache, return_hidden=True)  # [B, P, d]; keys in rows 0..B-1, slots 0..P-1
    last = hidden[torch.arange(B, device=device), prompt_lens - 1]  # [B, d]
    logits = model.logits(last).repeat_interleave(n, dim=0)  # [R, V]

    # 3. copy each prompt's slots to its n samples
    if n > 1:
        cache.repeat_rows(B, n, P)
    pos = prompt_lens.repeat_interleave(n)[:, None]  # [R, 1] slot of each row's next token
    same_length = all(len(p) == P for p in prompts)  # then every row decodes at slot P + t: no mask
    if compile:  # static shapes: `rows` rows (padding rows decode token 0 at slot 0), the whole cache
        step_fn = _compiled_decode_step(device)
        step_tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
        step_pos = torch.zeros(rows, 1, dtype=torch.long, device=device)

    stops = torch.tensor(list(stop_ids) or [-1], device=device)
    out_tokens = torch.full((R, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_logp = torch.zeros(R, max_new_tokens, device=device)
    lengths = torch.zeros(R, dtype=torch.long, device=device)
    done = torch.zeros(R, dtype=torch.bool, device=device)
    stopped = torch.zeros(R, dtype=torch.bool, device=device)

    # 4. decode
    steps = 0
    for t in range(max_new_tokens):
        tok, logp = sample_next(logits, temperature, top_k, top_p, noise=None if noise is None else noise.next(R))
        out_tokens[:, t] = torch.where(done, pad_id, tok)
        out_logp[:, t] = torch.where(done, 0.0, logp)
        lengths += (~done).long()
        hit_stop = torch.isin(tok, stops) & ~done
        stopped |= hit_stop
        done |= hit_stop
        steps = t + 1
        if on_step is not None:
            on_step(out_tokens[:, t])
        if t == max_new_tokens - 1 or ((t + 1) % SYNC_EVERY == 0 and bool(done.all())):
            break
        if compile:
            step_tokens[:R, 0] = tok
            step_pos[:R] = pos + t
            if device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are consumed
            logits = step_fn(model, step_tokens, step_pos, cache)[:R]
        elif same_length:
            logits = _decode_step(model, tok[:, None], P + t, cache)
        else:
            logits = _decode_step(model, tok[:, None], pos + t, cache, P + t + 1)

    if steps < max_new_tokens:
        out_tokens, out_logp = out_tokens[:, :steps], out_logp[:, :steps]
    reasons = ["stop" if s else "length" for s in stopped.tolist()]
    return Rollout(out_tokens.cpu(), out_logp.cpu(), lengths.cpu(), reasons, n)


def _decode_step(model, tokens, positions, cache, attend_len=None):
    """tokens [R, 1], positions (an int shared by all rows, or [R, 1]) -> next-token logits [R, V]."""
    return model(tokens, positions, cache=cache, attend_len=attend_len)[:, -1]


_COMPILED = {}


def _compiled_decode_step(device):
    """The decode step compiled for static shapes: one graph per shape bucket, each compiled once."""
    mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs; plain inductor elsewhere
    if mode not in _COMPILED:
        _raise_recompile_limit(RECOMPILE_LIMIT)
        _COMPILED[mode] = torch.compile(_decode_step, mode=mode, fullgraph=True, dynamic=False)
    return _COMPILED[mode]


def _raise_recompile_limit(limit: int):
    """Let dynamo keep at least `limit` graphs per function: the setting is recompile_limit in newer
    torch and cache_size_limit in older ones (2.6, this project's floor)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


# -----------------------------------------------------------------------------
# Sampled and decoded: what rollouts, proposals, the judge and evaluation read


@dataclass
class Completion:
    """One sampled completion, decoded."""

    ids: list  # generated ids, the stop token included when there is one
    text: str  # the ids decoded without the final stop token (decode_completion)
    logp: torch.Tensor  # [len(ids)] the sampler's log-prob of each id (CPU)
    truncated: bool  # hit max_new_tokens without a stop token


def completions(model, tok, prompts, n: int = 1, max_new_tokens: int = 256, temperature: float = 1.0,
                top_p: float = 1.0, seed: int | list[int] | None = None, compile: bool = False,
                batch_size: int = 0) -> list[Completion]:
    """n completions of each prompt (token-id lists) -> len(prompts) * n Completions, row i from
    prompt i // n. batch_size prompts per `generate` call (0: all in one); seed as for `generate`: a
    list gives each prompt its own, an int seeds each call with seed + the index of its first prompt."""
    out = []
    chunk = batch_size or len(prompts)
    for start in range(0, len(prompts), chunk):
        part = prompts[start:start + chunk]
        part_seed = seed[start:start + chunk] if isinstance(seed, (list, tuple)) else \
            None if seed is None else seed + start
        ro = generate(model, part, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                      stop_ids=tok.stop_ids, pad_id=tok.pad_id, seed=part_seed, compile=compile)
        for i in range(len(part) * n):
            ids = ro.completion(i)
            out.append(Completion(ids, decode_completion(tok, ids), ro.logprobs[i, :len(ids)],
                                  ro.finish_reasons[i] == "length"))
    return out


def decode_completion(tok, ids) -> str:
    """A completion's text, without the stop token that ended it (other special tokens are kept,
    so that nothing the model wrote disappears before a judge prompt neutralises it)."""
    ids = list(ids)
    if ids and ids[-1] in tok.stop_ids:
        ids = ids[:-1]
    return tok.decode(ids)


# -----------------------------------------------------------------------------
# CLI: python sample.py --model DIR --prompt "..."


def main(argv=None):
    from model import CheckpointError, Qwen
    from tokenizer import Tokenizer

    ap = argparse.ArgumentParser(description="Sample from a Qwen checkpoint folder (chat template applied).")
    ap.add_argument("--model", required=True, help="model folder (config.json, safetensors, tokenizer.json) or a "
                                                   "hub id org/name[@revision]")
    ap.add_argument("--prompt", required=True, help="user message")
    ap.add_argument("--system", default=None, help="optional system message")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode step")
    args = ap.parse_args(argv)
    if args.max_new_tokens < 1:
        ap.error("--max-new-tokens must be >= 1")
    try:
        from hub import resolve_model
        args.model = resolve_model(args.model)
        model = Qwen.from_pretrained(args.model, device=args.device)
        tok = Tokenizer.from_pretrained(args.model)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": args.prompt}]
    prompt = tok.encode_chat(messages)

    streamed, printed = [], ""

    def show(final=False):  # print the text decoded so far, minus what is already on screen
        nonlocal printed
        text = tok.decode([t for t in streamed if t not in tok.stop_ids], skip_special_tokens=True)
        if final or not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(printed):], end="", flush=True)
            printed = text

    def stream(tokens):
        if not (streamed and streamed[-1] in tok.stop_ids):  # after a stop the row only pads
            streamed.append(int(tokens[0]))
            show()

    generate(model, [prompt], max_new_tokens=args.max_new_tokens, temperature=args.temperature,
             top_p=args.top_p, top_k=args.top_k, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
             seed=args.seed, compile=args.compile, on_step=stream)
    show(final=True)
    print()


if __name__ == "__main__":
    main()
