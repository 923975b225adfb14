"""sft.py — supervised fine-tuning on chat examples, the loss on the assistant turns only.

    python sft.py --data sft.jsonl --model INIT --out DIR [--epochs 2 --lr 1e-3]

Each line of --data is {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}.
The text before each assistant turn is encoded exactly as the chat prompt is at generation time, so
what is learned here is what sample.generate sees. Batches group examples of similar length; the
learning rate warms up linearly, then decays (cosine) to 10% of --lr. The result is a model folder
(--out) that train.py, eval.py and sample.py load. Used by experiments/build_tiny.py (the tiny
models' bootstrap) and experiments/self_correct.py (stage 1 of self-rewarding correction).
"""

import quiet_threads  # noqa: F401  (first: OpenMP reads its settings when torch loads)

import json
import math
import os
import random
import sys
import time

import torch
from tqdm import tqdm

from checkpoint import append_jsonl, check_lengths, load_checkpoint, save_model_folder
from config import SFTConfig, UsageError, config_from_flags
from distributed import compute_dtype, pick_device
from model import CheckpointError
from ppo import response_logprobs


def train_sft(cfg: SFTConfig) -> str:
    """Fine-tune cfg.model on cfg.data; writes the model folder cfg.out (+ sft_metrics.jsonl) -> cfg.out."""
    device = pick_device(cfg.device)
    dtype = compute_dtype(cfg.dtype, device)
    model, tok, meta = load_checkpoint(cfg.model, device, torch.float32)
    check_lengths(model, max_len=cfg.max_len)
    examples = read_chat_jsonl(cfg.data)
    seqs = [s for s in (encode_example(tok, m) for m in examples) if s is not None and len(s[0]) <= cfg.max_len]
    if not seqs:
        raise UsageError(f"--data {cfg.data}: no example with an assistant turn fits --max-len {cfg.max_len}")
    skipped = len(examples) - len(seqs)
    per_epoch = math.ceil(len(seqs) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay,
                                  fused=True)
    os.makedirs(cfg.out, exist_ok=True)
    log_file = os.path.join(cfg.out, "sft_metrics.jsonl")
    open(log_file, "w").close()
    print(f"sft: {len(seqs)} examples ({skipped} skipped: no assistant turn or longer than --max-len "
          f"{cfg.max_len}), {cfg.epochs} epoch(s) x {per_epoch} steps, {model.num_params() / 1e6:.2f}M parameters")

    model.train()
    torch.manual_seed(cfg.seed)
    bar = tqdm(total=total, disable=not cfg.progress, dynamic_ncols=True, desc="sft")
    step, loss_sum, tokens, t0 = 0, 0.0, 0, time.time()
    for epoch in range(cfg.epochs):
        for batch in length_batches([len(s[0]) for s in seqs], cfg.batch_size, random.Random(cfg.seed + epoch)):
            ids, mask = pad_batch([seqs[i] for i in batch], tok.pad_id, device)
            lr = cosine_lr(step, total, cfg.lr, cfg.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = sft_loss(model, ids, mask, dtype)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach())
            tokens += int(mask[:, 1:].sum())
            bar.update(1)
            if step % cfg.log_interval == 0 or step == total:
                n = step % cfg.log_interval or cfg.log_interval
                line = {"step": step, "epoch": epoch, "loss": loss_sum / n, "lr": lr,
                        "loss_tokens_per_s": tokens / (time.time() - t0)}
                append_jsonl(log_file, line)
                bar.set_postfix(loss=f"{line['loss']:.4f}", lr=f"{lr:.2e}")
                loss_sum, tokens, t0 = 0.0, 0, time.time()
    bar.close()
    model.eval()
    save_model_folder(cfg.out, model, tok, meta, cfg.prompt_style)
    print(f"sft: wrote {cfg.out}")
    return cfg.out


def sft_loss(model, ids, mask, dtype):
    """Mean negative log-likelihood of the trained tokens: ids, mask [B, T] (mask[:, t]: token t, predicted
    from hidden[t-1], is trained) -> 0-d fp32, by PPO's forward and fused log-prob (ppo.response_logprobs):
    dtype bf16 runs the forward under autocast and hands the log-prob bf16 hidden states and lm_head
    (tensor cores on CUDA); fp32 is fp32 throughout."""
    logp = response_logprobs(model, ids, mask, compute_dtype=dtype)[0]  # [B, T], 0 off the mask
    return -logp.sum() / mask[:, 1:].sum()


def read_chat_jsonl(path: str) -> list[list[dict]]:
    """Each line {"messages": [{"role": ..., "content": ...}, ...]} -> the message lists."""
    examples = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
                if not all(m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str)
                           for m in messages):
                    raise ValueError("each message needs role system|user|assistant and string content")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise UsageError(f"{path}:{lineno}: not a chat example ({type(e).__name__}: {e})") from None
            examples.append(messages)
    if not examples:
        raise UsageError(f"--data {path}: no examples")
    return examples


def encode_example(tok, messages):
    """-> (ids, loss mask) or None without an assistant turn. The loss covers each assistant turn's
    content and its closing <|im_end|>; the text before each such turn is encoded exactly as the chat
    prompt is at generation time (tok.chat of the earlier messages with the generation prompt)."""
    text = tok.chat(messages, add_generation_prompt=False)
    ids, mask, pos = [], [], 0
    for j, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tok.chat(messages[:j], add_generation_prompt=True))
        end = start + len(m["content"]) + len("<|im_end|>")
        assert text[start:end] == m["content"] + "<|im_end|>", "tok.chat is not ChatML"
        for piece, on in ((text[pos:start], False), (text[start:end], True)):
            piece_ids = tok.encode(piece) if piece else []
            ids += piece_ids
            mask += [on] * len(piece_ids)
        pos = end
    return (ids, mask) if any(mask) else None


def length_batches(lengths, batch_size, rng) -> list[list[int]]:
    """Batches of similar lengths (little padding), ties broken at random, in random order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def pad_batch(seqs, pad_id, device):
    """(token ids, loss mask) per sequence, right-padded -> ids [B, T] long (pad_id after each sequence)
    and mask [B, T] bool (False in the padding). train.py's PPO batch is padded here too."""
    T = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for b, (x, m) in enumerate(seqs):
        ids[b, :len(x)] = torch.tensor(x)
        mask[b, :len(m)] = torch.tensor(m)
    return ids.to(device), mask.to(device)


def cosine_lr(step, total, peak, warmup) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def main(argv=None):
    cfg = config_from_flags(SFTConfig, argv, prog="sft.py", description=__doc__.split("\n\n")[0],
                            epilog=__doc__.split("\n\n", 1)[1].split("\n\n")[0])
    try:
        return train_sft(cfg)
    except (CheckpointError, UsageError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
