"""checkpoint.py — model folders and run checkpoints on disk.

A model folder is what Hugging Face writes: config.json, model.safetensors (or shards + index),
tokenizer.json (+ tokenizer_config.json with the ChatML template), and optionally nano_rlsr.json
(META_FILE: {"task", "prompt_style", "difficulty": task knobs, "train_defaults": {setting: value}}).
Qwen.from_pretrained and transformers both load it.

A run's checkpoint is OUT/ckpt/: a model folder of the policy (its fp32 weights) + optimizer/ (AdamW's
state through torch.distributed.checkpoint, which any number of ranks loads) + trainer_state.pt (step,
world size, value head, problem buffer). It is written to OUT/ckpt.tmp and swapped in with renames, so
a kill at any moment leaves a whole checkpoint, and a resumed run continues exactly (same problems,
samples and update order as an uninterrupted one).
"""

import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from distributed import barrier, full_model, is_main, world_size
from model import CheckpointError, Qwen, QwenConfig
from tokenizer import Tokenizer

META_FILE = "nano_rlsr.json"


class UsageError(Exception):
    """Bad input found after parsing (a data file, an output folder, a flag value): printed as one line.
    Here, below config.py, because checking a run against its model and checkpoint raises it too."""


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
    """A cheap look before loading: CheckpointError (one line) when `path` is no model folder."""
    if not os.path.isdir(path):
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
# Run checkpoints: OUT/ckpt/ = a model folder + optimizer/ (torch.distributed.checkpoint) + trainer_state.pt

OPTIMIZER_DIR = "optimizer"  # AdamW's exp_avg, exp_avg_sq and step per parameter, by parameter name
TRAINER_STATE = "trainer_state.pt"  # step, world size, value head, problem buffer


def save_checkpoint(cfg, policy, tok, meta, optimizer, value_head, step, problem_buffer=None):
    """Write OUT/ckpt.tmp, then swap it in with renames. The weights are the model folder's (under torchrun
    gathered to rank 0); AdamW's state goes through torch.distributed.checkpoint, each rank writing its own
    shard, so any number of ranks loads it back; rank 0 writes trainer_state.pt last."""
    final, tmp, old = (os.path.join(cfg.out, name) for name in ("ckpt", "ckpt.tmp", "ckpt.old"))
    model = full_model(policy)
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        save_model_folder(tmp, model, tok, meta, cfg.prompt_style)
    barrier()  # ckpt.tmp is fresh before the ranks write their shards into it
    with single_process_quiet():  # dcp.save returns on every rank once all shards and the metadata are written
        dcp.save(get_optimizer_state_dict(trained_modules(policy, value_head), optimizer),
                 checkpoint_id=os.path.join(tmp, OPTIMIZER_DIR))
    if is_main():
        torch.save({"step": step, "world_size": world_size(),
                    "value_head": value_head.state_dict() if value_head is not None else None,
                    "problem_buffer": problem_buffer or []},
                   os.path.join(tmp, TRAINER_STATE))
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
        if os.path.exists(os.path.join(path, TRAINER_STATE)):
            return path
    return None


def load_trainer_state(ckpt, out, device) -> dict:
    """trainer_state.pt of a checkpoint. Any number of ranks resumes it (the optimizer state is resharded
    on load); a checkpoint of the older format (optimizer state in trainer_state.pt or optimizer.rank{r}.pt)
    only on the number of processes that saved it."""
    state = torch.load(os.path.join(ckpt, TRAINER_STATE), map_location=device, weights_only=False)
    saved, world = state.get("world_size", 1), world_size()
    if saved == world:
        return state
    if not os.path.isdir(os.path.join(ckpt, OPTIMIZER_DIR)):
        run_with = "python train.py" if saved == 1 else f"torchrun --nproc_per_node {saved} train.py"
        raise UsageError(f"--resume {out}: {ckpt} is in the older checkpoint format, saved by {saved} "
                         f"process(es), this run has {world}: resume with {run_with} (the model folder {ckpt} "
                         f"itself loads anywhere)")
    if is_main():
        print(f"resuming {ckpt}, saved by {saved} process(es), on {world}: AdamW's state is resharded; the run "
              f"goes on as a {world}-process run would (same problems and seeds)")
    return state


def restore(ckpt, state, policy, optimizer, value_head, device) -> int:
    """AdamW's state (this rank's share of it) and the value head from a checkpoint -> its step. No RNG
    state: each step reseeds torch from (seed, step) and every sampler draws from its own seeded generator."""
    if value_head is not None:
        value_head.load_state_dict(state["value_head"])
    folder = os.path.join(ckpt, OPTIMIZER_DIR)
    if os.path.isdir(folder):
        modules = trained_modules(policy, value_head)
        target = get_optimizer_state_dict(modules, optimizer)  # this run's layout (AdamW's state made empty first)
        with single_process_quiet():
            dcp.load(target, checkpoint_id=folder)  # reads the parts of the saved tensors that this rank holds
        set_optimizer_state_dict(modules, optimizer, target)
    elif state.get("optimizer") is not None:  # the older one-process format
        optimizer.load_state_dict(state["optimizer"])
    else:  # the older per-rank format, on as many ranks as saved it (load_trainer_state checked)
        shard = os.path.join(ckpt, f"optimizer.rank{dist.get_rank()}.pt")
        set_optimizer_state_dict(policy, optimizer, torch.load(shard, map_location=device, weights_only=False))
    return state["step"]


def saved_optimizer_state(ckpt) -> dict:
    """A checkpoint's AdamW state, whole, in this process: {"state": {parameter name: {"exp_avg", "exp_avg_sq",
    "step"}}, "param_groups": [...]} (for inspection; resume reads only its share)."""
    with tempfile.TemporaryDirectory() as scratch, single_process_quiet():
        file = os.path.join(scratch, "optimizer.pt")
        dcp_to_torch_save(os.path.join(ckpt, OPTIMIZER_DIR), file)
        return torch.load(file, weights_only=False)


def trained_modules(policy, value_head):
    """The modules whose parameters the optimizer steps: its state is saved by their parameter names."""
    return policy if value_head is None else torch.nn.ModuleDict({"policy": policy, "value_head": value_head})


@contextmanager
def single_process_quiet():
    """torch.distributed.checkpoint without a process group works in one process, but warns that it does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


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
