"""sample.py — batched KV-cache sampling, used by rollouts and by the judge.

    ro = generate(model, [ids_a, ids_b], n=8, max_new_tokens=256, temperature=1.0,
                  stop_ids=tok.stop_ids, pad_id=tok.pad_id, seed=0)
    ro.tokens [B*n, L]; ro.logprobs [B*n, L]; ro.lengths [B*n]; ro.finish_reasons; ro.completion(i)

How it runs (the gpt-fast / nanochat recipe):
1. one KV cache is preallocated for the whole call: prompt_max + max_new_tokens slots per row;
2. the B prompts are prefilled once, right-padded into one batch; each row's next-token logits come
   from its own last prompt position (lm_head on B vectors, not B x T);
3. the prefilled cache is copied to the n samples of its prompt (row i of the output is prompt i // n);
4. decode: one token per row per step at that row's own position; attention reads only the slots
   in use so far; finished rows keep stepping but emit padding, and "all done?" is asked of the
   device only every few steps, not every token.
Sampling is `argmax(probs / Exp(1))` — a draw from `probs` with no host sync.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

SYNC_EVERY = 8  # steps between "are all rows finished?" checks (each one is a host sync on GPU)


@dataclass
class Rollout:
    """Completions of a `generate` call; row i belongs to prompt i // n."""

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


def sample_next(logits, temperature, top_k, top_p, generator):
    """logits [R, V] -> (token ids [R], their log-probs [R]) without a host sync.

    temperature == 0 is greedy; its log-prob is the untempered model's log_softmax at the argmax.
    generator: one torch.Generator (or None) for all rows, or a list of k generators, each drawing
    the noise of its own R/k consecutive rows (one prompt's samples).
    """
    if temperature == 0:
        logp = torch.log_softmax(logits.float(), dim=-1)
        ids = logp.argmax(-1)
    else:
        logp = process_logits(logits, temperature, top_k, top_p)
        noise = torch.empty_like(logp)
        if isinstance(generator, list):  # per prompt: its samples do not depend on the rest of the batch
            for g, rows in zip(generator, noise.chunk(len(generator))):
                rows.exponential_(1, generator=g)
        else:
            noise.exponential_(1, generator=generator)
        ids = (logp.exp() / noise).argmax(-1)  # Gumbel-style draw: argmax p_i / E_i ~ Categorical(p)
    return ids, logp.gather(-1, ids[:, None])[:, 0]


@torch.no_grad()
def generate(model, prompts, n: int = 1, max_new_tokens: int = 256, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, stop_ids=(), pad_id: int = 0, seed: int | list[int] | None = None,
             compile: bool = False, on_step=None) -> Rollout:
    """Sample n completions for each prompt (a list of token-id lists, any lengths).

    seed: a fixed seed gives the same samples on rerun; a list, one seed per prompt, makes each
    prompt's samples independent of the batch it is in (train.py under torchrun: the same rollouts on
    any number of ranks); None draws from torch's global RNG (so a caller that restores torch's RNG
    state replays the same samples). compile: torch.compile the
    decode step (CUDA only; ignored elsewhere). on_step(tokens [B*n]): called after each step
    (forces a host sync per token; the CLI uses it to stream).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    if n < 1 or max_new_tokens < 1:
        raise ValueError("generate: n and max_new_tokens must be >= 1")
    P = max(len(p) for p in prompts)
    if P + max_new_tokens > model.config.max_position_embeddings:
        raise ValueError(f"generate: longest prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"the model's max_position_embeddings ({model.config.max_position_embeddings})")
    device = model.output_weight.device
    B, R = len(prompts), len(prompts) * n
    prompt_lens = torch.tensor([len(p) for p in prompts], device=device)
    generator = None
    if isinstance(seed, (list, tuple)):
        if len(seed) != B:
            raise ValueError(f"generate: {len(seed)} seeds for {B} prompts (one per prompt, or one int)")
        if temperature != 0:
            generator = [torch.Generator(device=device).manual_seed(s) for s in seed]
    elif seed is not None and temperature != 0:
        generator = torch.Generator(device=device).manual_seed(seed)

    # 1-2. prefill each prompt once (right-padded), logits at each row's last prompt token only
    ids = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p, dtype=torch.long, device=device)
    cache = model.new_cache(B, P + max_new_tokens)
    positions = torch.arange(P, device=device).expand(B, P)
    hidden = model(ids, positions, cache=cache, return_hidden=True, attend_len=P)  # [B, P, d]
    last = hidden[torch.arange(B, device=device), prompt_lens - 1]  # [B, d]
    logits = model.logits(last).repeat_interleave(n, dim=0)  # [R, V]

    # 3. copy each prompt's cache to its n samples
    if n > 1:
        cache.k = cache.k.repeat_interleave(n, dim=1)
        cache.v = cache.v.repeat_interleave(n, dim=1)
    pos = prompt_lens.repeat_interleave(n)[:, None]  # [R, 1] slot of the next token, per row

    step_fn = _decode_step
    if compile and device.type == "cuda":
        step_fn = _compiled_decode_step()
    stops = torch.tensor(list(stop_ids) or [-1], device=device)
    out_tokens = torch.full((R, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_logp = torch.zeros(R, max_new_tokens, device=device)
    lengths = torch.zeros(R, dtype=torch.long, device=device)
    done = torch.zeros(R, dtype=torch.bool, device=device)
    stopped = torch.zeros(R, dtype=torch.bool, device=device)

    # 4. decode
    steps = 0
    for t in range(max_new_tokens):
        tok, logp = sample_next(logits, temperature, top_k, top_p, generator)
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
        # static shapes for the compiled step: it reads the whole cache; eager reads the slots in use
        attend = None if step_fn is not _decode_step else P + t + 1
        logits = step_fn(model, tok[:, None], pos + t, cache, attend)

    if steps < max_new_tokens:
        out_tokens, out_logp = out_tokens[:, :steps], out_logp[:, :steps]
    reasons = ["stop" if s else "length" for s in stopped.tolist()]
    return Rollout(out_tokens, out_logp, lengths, reasons, n)


def _decode_step(model, tokens, positions, cache, attend_len):
    """tokens, positions [R, 1] -> next-token logits [R, V]."""
    return model(tokens, positions, cache=cache, attend_len=attend_len)[:, -1]


_COMPILED = None


def _compiled_decode_step():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_decode_step, mode="reduce-overhead", fullgraph=True)
    return _COMPILED


# -----------------------------------------------------------------------------
# CLI: python sample.py --model DIR --prompt "..."


def main(argv=None):
    from model import CheckpointError, Qwen, Tokenizer

    ap = argparse.ArgumentParser(description="Sample from a Qwen checkpoint folder (chat template applied).")
    ap.add_argument("--model", required=True, help="checkpoint folder (config.json, safetensors, tokenizer.json)")
    ap.add_argument("--prompt", required=True, help="user message")
    ap.add_argument("--system", default=None, help="optional system message")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA only)")
    args = ap.parse_args(argv)
    if args.max_new_tokens < 1:
        ap.error("--max-new-tokens must be >= 1")
    try:
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
