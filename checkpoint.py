"""checkpoint.py — model folders and run checkpoints on disk.

A model folder is what Hugging Face writes: config.json, model.safetensors (or shards + index),
tokenizer.json (+ tokenizer_config.json with the ChatML template), and optionally nano_rlsr.json
(META_FILE: {"task", "prompt_style", "difficulty": task knobs, "train_defaults": {setting: value}}).
Qwen.from_pretrained and transformers both load it.

A run's checkpoint is OUT/ckpt/: a model folder of the policy + trainer_state.pt (step, optimizer,
RNG states, config) + under torchrun one optimizer.rankN.pt per rank. It is written to OUT/ckpt.tmp
and swapped in with renames, so a kill at any moment leaves a whole checkpoint, and a resumed run
continues exactly (same problems, samples and update order as an uninterrupted one).
"""

import json
import os
import random
import shutil
from dataclasses import asdict

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

import config
from config import UsageError
from distributed import barrier, full_model, is_main, world_size
from model import CheckpointError, Qwen, QwenConfig, Tokenizer

META_FILE = "nano_rlsr.json"


# -----------------------------------------------------------------------------
# Model folders


def read_meta(path: str) -> dict:
    """The folder's nano_rlsr.json ({} when absent)."""
    file = os.path.join(path, META_FILE)
    if not os.path.exists(file):
        return {}
    try:
        with open(file) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: invalid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return meta


def check_model_dir(path: str):
    """A cheap look before loading: CheckpointError (one line) when `path` is no model folder
    (for the default model: that it is not built yet and how to pass another)."""
    if not os.path.isdir(path):
        if config.is_embedded(path):
            raise CheckpointError(f"the embedded model {os.path.relpath(path, config.ROOT)} is not built yet (see the "
                                  f"README for the command that builds it); pass --model DIR with a Qwen model folder")
        raise CheckpointError(f"{path}: no such folder")
    QwenConfig.from_json(os.path.join(path, "config.json"))
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise CheckpointError(f"{path}: no tokenizer.json (a model folder needs its tokenizer)")


def load_checkpoint(path: str, device="cpu", dtype=torch.float32):
    """-> (model, tokenizer, meta) from a model folder; CheckpointError (one line) otherwise."""
    check_model_dir(path)
    model = Qwen.from_pretrained(path, dtype=dtype, device=device)
    tokenizer = Tokenizer.from_pretrained(path)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{model.config.vocab_size}")
    return model, tokenizer, read_meta(path)


def save_model_folder(path, model, tok, meta: dict, prompt_style: str):
    """A folder Qwen.from_pretrained and transformers load: weights, config, tokenizer, nano_rlsr.json."""
    model.save_pretrained(path)
    tok.save_pretrained(path)
    if meta or prompt_style != "full":
        with open(os.path.join(path, META_FILE), "w") as f:
            json.dump({**meta, "prompt_style": prompt_style}, f, indent=2)


def check_lengths(model, **lengths):
    """A length setting the model's positions cannot hold is one line here, not an index error later."""
    limit = model.config.max_position_embeddings
    for name, n in lengths.items():
        if n >= limit:
            raise UsageError(f"--{name.replace('_', '-')} {n}: the model has only {limit} positions "
                             f"(max_position_embeddings), prompt included")


# -----------------------------------------------------------------------------
# Run checkpoints: OUT/ckpt/ = a model folder + trainer_state.pt (+ optimizer.rankN.pt under torchrun)


def save_checkpoint(cfg, policy, tok, meta, optimizer, value_head, step, problem_buffer=None):
    """Write OUT/ckpt.tmp, then swap it in with renames. Under torchrun rank 0 writes the model folder
    (full weights gathered to it) and trainer_state.pt, and every rank its optimizer shard."""
    final, tmp, old = (os.path.join(cfg.out, name) for name in ("ckpt", "ckpt.tmp", "ckpt.old"))
    world = world_size()
    model = full_model(policy)
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        save_model_folder(tmp, model, tok, meta, cfg.prompt_style)
    barrier()  # the folder exists before the ranks write their shards into it
    if world > 1:
        torch.save(get_optimizer_state_dict(policy, optimizer),
                   os.path.join(tmp, f"optimizer.rank{dist.get_rank()}.pt"))
    barrier()
    if is_main():
        torch.save({"step": step, "optimizer": optimizer.state_dict() if world == 1 else None, "world_size": world,
                    "rng": get_rng_state(), "config": asdict(cfg),
                    "value_head": value_head.state_dict() if value_head is not None else None,
                    "problem_buffer": problem_buffer or []},
                   os.path.join(tmp, "trainer_state.pt"))
        if os.path.exists(final):
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()  # nobody reads or rewrites the folder before the swap is done


def latest_checkpoint(out: str) -> str | None:
    """OUT/ckpt, or OUT/ckpt.old when a kill fell between save_checkpoint's two renames."""
    for name in ("ckpt", "ckpt.old"):
        path = os.path.join(out, name)
        if os.path.exists(os.path.join(path, "trainer_state.pt")):
            return path
    return None


def load_trainer_state(ckpt, out, device) -> dict:
    """trainer_state.pt of a checkpoint; refuses one saved by another number of ranks (its optimizer
    state is sharded per rank)."""
    state = torch.load(os.path.join(ckpt, "trainer_state.pt"), map_location=device, weights_only=False)
    saved, world = state.get("world_size", 1), world_size()
    if saved != world:
        run_with = "python train.py" if saved == 1 else f"torchrun --nproc_per_node {saved} train.py"
        raise UsageError(f"--resume {out}: {ckpt} was saved by {saved} process(es), this run has {world}: "
                         f"resume with {run_with} (the model folder {ckpt} itself loads anywhere)")
    return state


def restore(ckpt, state, policy, optimizer, value_head, device) -> int:
    """Optimizer (or this rank's shard), value head and RNG states from a checkpoint -> its step."""
    if world_size() == 1:
        optimizer.load_state_dict(state["optimizer"])
    else:
        shard_file = os.path.join(ckpt, f"optimizer.rank{dist.get_rank()}.pt")
        set_optimizer_state_dict(policy, optimizer, torch.load(shard_file, map_location=device, weights_only=False))
    if value_head is not None:
        value_head.load_state_dict(state["value_head"])
    set_rng_state(state["rng"])
    return state["step"]


def get_rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# -----------------------------------------------------------------------------
# Run logs (JSONL), cut back to the checkpoint on resume


def append_jsonl(path, obj):
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


def truncate_jsonl(path, last_step):
    """Keep the lines with step <= last_step (all of them gone when last_step is 0: a fresh start)."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                if last_step > 0 and json.loads(line)["step"] <= last_step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):  # a line cut off by a kill
                pass
    with open(path, "w") as f:
        f.writelines(keep)
