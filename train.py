"""train.py — the RLSR loop: problems -> G rollouts -> self-reward -> group advantages -> PPO.

    python train.py --task countdown                          # RLSR on the embedded tiny model
    python train.py --task countdown --reward verifier        # the formal-verifier baseline
    python train.py --task countdown --problems self          # the policy also writes the problems
    python train.py --resume runs/countdown-rl-...            # continue an interrupted run exactly
    python train.py --stage sft --data sft.jsonl --model INIT --out DIR   # supervised fine-tuning
    torchrun --nproc_per_node 8 train.py --model DIR ...      # the same loop on 8 GPUs, sharded by FSDP2
    python train.py --stage srdata --out D; python train.py --stage sft --data D/srdata.jsonl --out S
    python train.py --model S --self-correct --reward verifier    # self-rewarding correction, stages 1 and 2

Each step: problems (the task's generator, a pure function of (seed, step); or proposed by the policy,
kept when its own judged samples are neither all-pass nor all-fail) -> G rollouts per problem ->
rewards (the policy judging its own extracted answers, or the formal verifier as the baseline) ->
group advantages -> PPO epochs -> one line of OUT/metrics.jsonl. The verifier is called on every
rollout, but only to measure: rollout accuracy and the judge's TP/FP/TN/FN. Held-out accuracy every
--eval-interval steps; OUT/ckpt/ (a model folder + trainer_state.pt, replaced atomically) every
--save-interval steps. Weights, master copy and optimizer state are fp32; on CUDA the forward and
backward run in bf16 autocast and rollouts come from a bf16 copy refreshed after every update
(--dtype bf16 does the same on CPU).

Under torchrun (WORLD_SIZE > 1) the policy is sharded by PyTorch's FSDP2 (`fully_shard` per decoder
layer + the root; nccl on CUDA, gloo on CPU): rank r rolls out, judges and trains on its share of the
step's problems, rollouts seeded per problem (the same samples on any number of ranks), the loss is
the token-level mean over all ranks' tokens, metrics are gathered and written by rank 0, and a
checkpoint is an ordinary model folder (full weights gathered to rank 0) plus one optimizer shard
per rank. See the README's "Multi-GPU" section for the costs.

Defaults: the TrainConfig below, then the model folder's nano_rlsr.json ("prompt_style", and
"train_defaults": {field: value} for settings that suit that model, e.g. the tiny model's --lr),
then the flags given.

Reads top to bottom: the config (one dataclass; every field is a flag), the RL loop, its helpers,
the SFT stage, then the command line.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: 4-60x faster on a busy CPU

import argparse  # noqa: E402  (the line above must run before torch loads OpenMP)
import inspect
import json
import math
import random
import re
import shutil
import sys
import time
import zlib
from contextlib import contextmanager, nullcontext, redirect_stderr
from dataclasses import asdict, dataclass, fields

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from tqdm import tqdm

import sample
import tasks
from eval import (DEFAULT_MODEL, META_FILE, Parser, check_model_dir, evaluate, evaluate_self_correct, load_checkpoint,
                  pick_device, read_meta, sample_texts, self_correct_metrics, verify_all)
from judge import Judge, agreement, decode_completion, passed
from model import CheckpointError, Qwen
from ppo import PPOConfig, ValueHead, group_advantages, ppo_update, token_logprobs


# -----------------------------------------------------------------------------
# Config: each field is a command-line flag (--prompts-per-step ...); its comment is the --help text.


@dataclass
class TrainConfig:
    # run
    stage: str = "rl"  # rl: the self-reward loop; sft: supervised fine-tuning on --data; srdata: self-correction data
    task: str = "countdown"  # task (a module in tasks/)
    model: str = DEFAULT_MODEL  # starting checkpoint folder (default: the embedded tiny model)
    out: str = ""  # output folder (default: runs/<task>-<stage>-<date>-<time>)
    resume: str = ""  # continue the run saved in this folder (flags not given are taken from it)
    steps: int = 200  # RL steps: one batch of rollouts and one PPO update each
    seed: int = 0  # seed of the problems, the sampling and the update order
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N
    dtype: str = "auto"  # compute dtype: bf16 (fp32 master weights and optimizer), fp32; auto: bf16 on CUDA
    prompt_style: str = ""  # prompt style (default: the model folder's nano_rlsr.json, else full)
    # problems and rollouts
    problems: str = "task"  # task: the task's generator; self: the policy proposes them
    prompts_per_step: int = 8  # problems per step
    group_size: int = 8  # rollouts per problem (G)
    temperature: float = 1.0  # rollout sampling temperature
    top_p: float = 1.0  # rollout nucleus sampling
    max_new_tokens: int = 256  # longest rollout, in tokens
    propose_n: int = 16  # --problems self: proposals sampled per step
    propose_examples: int = 3  # --problems self: example problems shown in the propose prompt
    propose_max_new_tokens: int = 128  # --problems self: longest proposal, in tokens
    # rewards
    reward: str = "self"  # self: the policy judges its own answers (RLSR); verifier: the formal checker
    judge: str = "live"  # live: the current policy; frozen: the initial model; or a checkpoint folder
    judge_samples: int = 1  # verdicts averaged per judged answer
    judge_temperature: float = 1.0  # judge sampling temperature
    judge_max_new_tokens: int = 256  # longest judge output, in tokens
    # optimisation
    lr: float = 0.0  # peak learning rate (0: 1e-6 for rl, 3e-4 for sft)
    weight_decay: float = 0.0  # AdamW weight decay
    ppo_epochs: int = 1  # PPO passes over each batch of rollouts
    minibatch_size: int = 0  # rollouts per optimizer step (0: the whole batch)
    micro_batch_size: int = 0  # rollouts per forward/backward, gradients accumulated (0: the minibatch)
    clip_eps: float = 0.2  # PPO ratio clip range [1 - eps, 1 + eps]
    kl_coef: float = 0.001  # k3 KL penalty to the initial model (0: no reference copy)
    entropy_coef: float = 0.0  # entropy bonus
    max_grad_norm: float = 1.0  # clip the gradient norm before each optimizer step
    advantage: str = "group"  # group: GRPO, RLSR's choice; gae: a value head (classic PPO)
    scale_std: bool = True  # group advantages divided by the group's std (off: Dr. GRPO)
    # eval, logs, checkpoints
    eval_interval: int = 20  # held-out eval every this many steps, at the start and the end (0: never)
    eval_n: int = 64  # held-out (test split) problems
    eval_temperature: float = 0.0  # held-out sampling temperature (0: greedy)
    save_interval: int = 20  # checkpoint every this many steps and at the end
    progress: bool = True  # show a tqdm bar
    # memory and scale-out (one process, or torchrun --nproc_per_node N train.py ...)
    grad_ckpt: str = "off"  # activation checkpointing: off, or layer (backward recomputes each decoder layer)
    ref_placement: str = "shard"  # KL reference and frozen judge: shard (on the device), cpu (moved in per pass)
    compile: bool = False  # torch.compile the decode step of rollouts, proposals and the judge (CUDA only)
    # supervised stage (--stage sft)
    data: str = ""  # sft: JSONL file, one {"messages": [{"role": ..., "content": ...}, ...]} a line
    epochs: int = 1  # sft: passes over the data
    batch_size: int = 32  # sft: examples per optimizer step (bucketed by length)
    max_len: int = 512  # sft: longest example in tokens (longer ones are skipped)
    warmup: int = 100  # sft: linear warmup steps, then cosine decay to 10% of --lr
    log_interval: int = 50  # sft: optimizer steps per log line
    # self-rewarding correction (answer -> [VERIFY] -> correction; --stage srdata, then sft, then rl)
    self_correct: bool = False  # rl: rollouts are [VERIFY] trajectories, rewarded on their final answer only
    max_turns: int = 2  # self-correction: corrections allowed after the first answer
    sr_problems: int = 2000  # srdata: training problems the policy answers
    sr_samples: int = 4  # srdata: own answers sampled per problem (first attempts and corrections)
    sr_robust: float = 0.1  # srdata: share of right first answers given the right -> [VERIFY] wrong -> right kind
    sr_checks: str = "task"  # srdata: the check before a verdict: task (worked check) or own (policy's, if right)


CHOICES = dict(stage=("rl", "sft", "srdata"), dtype=("auto", "bf16", "fp32"), problems=("task", "self"),
               reward=("self", "verifier"), advantage=("group", "gae"), grad_ckpt=("off", "layer"),
               ref_placement=("shard", "cpu"), sr_checks=("own", "task"))
# the only fields a --resume may change: how long to run and what to log
RUN_FIELDS = ("steps", "resume", "out", "eval_interval", "save_interval", "progress")


class UsageError(Exception):
    """Bad input found after parsing (a data file, an output folder): printed as one line."""


# -----------------------------------------------------------------------------
# The RL loop


def train_rl(cfg: TrainConfig):
    task = tasks.get(cfg.task)
    rank, world, device = init_distributed(pick_device(cfg.device))  # (0, 1, device) without torchrun
    mixed, autocast = mixed_precision(cfg, device)
    compute_dtype = torch.bfloat16 if mixed else torch.float32
    os.makedirs(cfg.out, exist_ok=True)
    ckpt = latest_checkpoint(cfg.out) if cfg.resume else None  # None also when killed before the first save
    state = load_trainer_state(ckpt, cfg, world, device) if ckpt else None

    # models: the policy (fp32 master weights), the sampler (the policy, or its bf16 copy on one GPU),
    # the frozen reference (the initial model: KL anchor, and the judge with --judge frozen); under
    # torchrun each is FSDP-sharded (the policy gathered as bf16 for compute with mixed precision)
    policy, tok, meta = load_checkpoint(ckpt or cfg.model, device, torch.float32)
    check_lengths(policy, max_new_tokens=cfg.max_new_tokens, judge_max_new_tokens=cfg.judge_max_new_tokens,
                  propose_max_new_tokens=cfg.propose_max_new_tokens)
    policy.grad_ckpt = cfg.grad_ckpt == "layer"
    if world > 1:
        shard(policy, device, mixed)
    sampler = policy
    if mixed and world == 1:
        sampler = Qwen.from_pretrained(ckpt or cfg.model, dtype=compute_dtype, device=device)
    frozen_device = device if cfg.ref_placement == "shard" else torch.device("cpu")  # --ref-placement cpu
    reference = None
    if cfg.kl_coef > 0 or cfg.judge == "frozen":
        reference = Qwen.from_pretrained(cfg.model, dtype=compute_dtype, device=frozen_device).requires_grad_(False)
    judge = None
    if cfg.reward == "self":
        judge_model, judge_tok, judge_style = sampler, tok, cfg.prompt_style
        if cfg.judge == "frozen":
            judge_model = reference
        elif cfg.judge != "live":
            judge_model, judge_tok, judge_meta = load_checkpoint(cfg.judge, frozen_device, compute_dtype)
            judge_style = judge_meta.get("prompt_style", cfg.prompt_style)
        judge = Judge(judge_model, judge_tok, task, samples=cfg.judge_samples, temperature=cfg.judge_temperature,
                      max_new_tokens=cfg.judge_max_new_tokens, style=judge_style, compile=cfg.compile)
    frozen = [m for m in (reference, judge and judge.model) if m is not None and m is not sampler]
    judge_frozen = [judge.model] if judge and judge.model is not sampler else []  # resident while generating
    if world > 1 and cfg.ref_placement == "shard":
        for m in {id(m): m for m in frozen}.values():
            shard(m, device, mixed=False)  # already in the compute dtype
    if not cfg.resume and rank == 0:  # written once the models load: --resume reads it, and refuses a changed one
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2)
    value_head = ValueHead(policy.config.hidden_size).to(device) if cfg.advantage == "gae" else None
    params = list(policy.parameters()) + (list(value_head.parameters()) if value_head else [])
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay, fused=True)
    ppo_cfg = PPOConfig(epochs=cfg.ppo_epochs, minibatch_size=cfg.minibatch_size // world,  # rows per rank
                        micro_batch_size=cfg.micro_batch_size, clip_eps=cfg.clip_eps, kl_coef=cfg.kl_coef,
                        entropy_coef=cfg.entropy_coef, max_grad_norm=cfg.max_grad_norm,
                        temperature=cfg.temperature, advantage=cfg.advantage, group_size=cfg.group_size,
                        scale_std=cfg.scale_std)

    start = 0
    if ckpt:  # resume: weights came from the checkpoint folder, the rest from trainer_state.pt (+ shards)
        start = state["step"]
        if world == 1:
            optimizer.load_state_dict(state["optimizer"])
        else:
            shard_file = os.path.join(ckpt, f"optimizer.rank{rank}.pt")
            set_optimizer_state_dict(policy, optimizer, torch.load(shard_file, map_location=device, weights_only=False))
        if value_head is not None:
            value_head.load_state_dict(state["value_head"])
        set_rng_state(state["rng"])
    metrics_file = os.path.join(cfg.out, "metrics.jsonl")
    samples_file = os.path.join(cfg.out, "samples.jsonl")
    for file in (metrics_file, samples_file) if rank == 0 else ():  # drop lines after the checkpoint (a killed run)
        truncate_jsonl(file, start)
    difficulty = meta.get("difficulty", {})  # task knobs the model folder asks for (the tiny model's)
    heldout = task.make_problems(cfg.eval_n, seed=cfg.seed, split="test", **difficulty) if cfg.eval_interval else []

    def run_eval(step):  # each rank evaluates every world-th held-out problem; the results are merged
        t0 = time.time()
        mine, r = heldout[rank::world], None
        with resident([sampler], device, generate=True):
            if mine and cfg.self_correct:  # held-out trajectories: heldout_acc is the final answer's
                r = evaluate_self_correct(sampler, tok, task, mine, max_turns=cfg.max_turns,
                                          temperature=cfg.eval_temperature, max_new_tokens=cfg.max_new_tokens,
                                          style=cfg.prompt_style, seed=cfg.seed)
                r = {"mean@1": r["final_acc"], "format_rate": None, **r}
            elif mine:
                r = evaluate(sampler, tok, task, mine, samples=1, temperature=cfg.eval_temperature,
                             max_new_tokens=cfg.max_new_tokens, style=cfg.prompt_style, seed=cfg.seed)
        parts = [(n, p) for n, p in all_ranks((len(mine), r)) if n]
        keys = (("mean@1", "mean_length", "turn1_acc", "delta_i2c", "delta_c2i") if cfg.self_correct
                else ("mean@1", "format_rate", "mean_length"))
        if len(parts) == 1:
            r = parts[0][1]
        else:  # (verification accuracies are ratios over per-rank subsets: logged on one process only)
            r = {k: sum(n * p[k] for n, p in parts) / len(heldout) for k in keys}
        if cfg.self_correct:
            return {"heldout_acc": r["mean@1"], "heldout_turn1_acc": r["turn1_acc"],
                    "heldout_delta_i2c": r["delta_i2c"], "heldout_delta_c2i": r["delta_c2i"],
                    "heldout_verify_acc_correct": r.get("verify_acc_correct"),
                    "heldout_verify_acc_wrong": r.get("verify_acc_wrong"), "heldout_mean_length": r["mean_length"],
                    "time_eval": time.time() - t0}
        return {"heldout_acc": r["mean@1"], "heldout_format_rate": r["format_rate"],
                "heldout_mean_length": r["mean_length"], "time_eval": time.time() - t0}

    if start == 0 and cfg.eval_interval:
        first = run_eval(0)
        if rank == 0:
            append_jsonl(metrics_file, {"step": 0, **first})
            print(f"step 0: {eval_note(first)} ({cfg.eval_n} problems)")
    last_acc = None
    bar = tqdm(range(start + 1, cfg.steps + 1), initial=start, total=cfg.steps, disable=not cfg.progress or rank > 0,
               dynamic_ncols=True, desc=f"rlsr {cfg.task}")
    quota = cfg.prompts_per_step // world  # problems per rank: rank r owns the step's problems r*quota ... +quota-1
    for step in bar:
        torch.manual_seed(derive_seed(cfg.seed, step, "torch"))  # the update order: a function of (seed, step)
        timer = Timer()

        # 1. problems -> G rollouts each -> rewards (this rank's share; full weights gathered for generation)
        groups, source = [], {}
        with resident([sampler, *judge_frozen], device, generate=True):
            if cfg.problems == "self":
                with timer("generate"):
                    proposed = propose_problems(cfg, sampler, tok, task, step, difficulty)  # the same on every rank
                index = list(range(rank, len(proposed), world))
                candidates = score(cfg, task, judge, rollout(cfg, sampler, tok, task, proposed, index, step, "self",
                                                             timer), step, "self", timer)
                groups = [g for g in candidates if len({r["reward"] for r in g}) > 1][:quota]
                source = {"proposed_valid": len(proposed), "problems_self": len(groups)}
            if len(groups) < quota:  # task problems (top-up when self-proposed ones were too few)
                problems = task.make_problems(cfg.prompts_per_step, seed=derive_seed(cfg.seed, step, "problems"),
                                              split="train", **difficulty)
                index = list(range(rank * quota, (rank + 1) * quota - len(groups)))
                groups += score(cfg, task, judge, rollout(cfg, sampler, tok, task, problems, index, step, "task",
                                                          timer), step, "task", timer)
        rows = [r for g in groups for r in g]

        # 2. advantages and the PPO update (fp32 master weights; bf16 autocast with --dtype bf16)
        with timer("update"):
            policy.train()
            batch = ppo_batch(rows, tok.pad_id, device)
            batch["rewards"] = torch.tensor([r["reward"] for r in rows], device=device)
            if cfg.advantage == "group":  # GRPO: each reward against its group's mean (and std)
                batch["advantages"] = group_advantages(batch["rewards"], cfg.group_size, cfg.scale_std)
            with autocast, resident([reference] if cfg.kl_coef > 0 else [], device):
                stats = ppo_update(policy, optimizer, batch, ppo_cfg, ref_model=reference, value_head=value_head)
            policy.eval()
            if sampler is not policy:
                copy_weights(sampler, policy)

        # 3. log (and held-out eval, checkpoint): every rank's rows and stats, written by rank 0
        if world > 1:
            stats = merge_stats(all_ranks((stats, float(batch["response_mask"].sum()))))
            groups = [g for part in all_ranks([[light(r) for r in g] for g in groups]) for g in part]
            rows = [r for g in groups for r in g]
            if source:
                source["problems_self"] = len([g for g in groups if g[0]["what"] == "self"])
        line = step_metrics(step, groups, rows, stats, cfg, source)
        if cfg.eval_interval and (step % cfg.eval_interval == 0 or step == cfg.steps):
            line.update(run_eval(step))
            last_acc = line["heldout_acc"]
            if rank == 0:
                bar.write(f"step {step}: {eval_note(line)} ({cfg.eval_n} problems)")
        line.update(timer.times(), lr=optimizer.param_groups[0]["lr"])
        if rank == 0:
            append_jsonl(metrics_file, line)
            append_jsonl(samples_file, example_line(step, rows[0], tok))
        bar.set_postfix(reward=f"{line['reward_mean']:.3f}", judge_agree=fmt(line.get("judge_accuracy")),
                        heldout_acc=fmt(last_acc))
        if step % cfg.save_interval == 0 or step == cfg.steps:
            save_checkpoint(cfg, policy, tok, meta, optimizer, value_head, step)
    bar.close()
    if rank == 0:
        print(run_summary(metrics_file))
        print(f"done: {cfg.steps} steps; metrics in {metrics_file}, model folder in {os.path.join(cfg.out, 'ckpt')}")
    return metrics_file


# -----------------------------------------------------------------------------
# Helpers of the loop: problems, rollouts, rewards, the PPO batch, metrics


def run_summary(metrics_file) -> str:
    """Held-out accuracy first -> last, and the judge against the verifier summed over the run."""
    with open(metrics_file) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    accs = [(m["step"], m["heldout_acc"]) for m in lines if "heldout_acc" in m]
    out = []
    if accs:
        out.append(f"held-out accuracy {accs[0][1]:.3f} (step {accs[0][0]}) -> {accs[-1][1]:.3f} (step {accs[-1][0]})")
    n = {k: sum(m.get(f"judge_{k}") or 0 for m in lines) for k in ("tp", "fp", "tn", "fn")}
    if sum(n.values()):
        precision = n["tp"] / (n["tp"] + n["fp"]) if n["tp"] + n["fp"] else float("nan")
        recall = n["tp"] / (n["tp"] + n["fn"]) if n["tp"] + n["fn"] else float("nan")
        out.append(f"judge vs verifier over the run: TP {n['tp']} FP {n['fp']} TN {n['tn']} FN {n['fn']}, "
                   f"precision {precision:.3f}, recall {recall:.3f}")
    return "; ".join(out) or "no held-out eval or judge verdicts in this run"


def eval_note(line) -> str:
    """The held-out figures of a metrics line, for the console."""
    note = f"held-out accuracy {line['heldout_acc']:.3f}"
    if "heldout_turn1_acc" in line:
        note += (f" (final; turn 1 {line['heldout_turn1_acc']:.3f}, i->c {line['heldout_delta_i2c']:.3f}, "
                 f"c->i {line['heldout_delta_c2i']:.3f})")
    return note


def mixed_precision(cfg, device):
    """-> (mixed, autocast context): bf16 compute over fp32 weights (so that small Adam updates do
    not vanish in bf16 rounding) with --dtype bf16, or auto on CUDA; plain fp32 otherwise."""
    mixed = cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")
    return mixed, torch.autocast(device.type, dtype=torch.bfloat16) if mixed else nullcontext()


def check_lengths(model, **lengths):
    """A length flag the model's positions cannot hold is one line here, not an index error later."""
    limit = model.config.max_position_embeddings
    for name, n in lengths.items():
        if n >= limit:
            raise UsageError(f"--{name.replace('_', '-')} {n}: the model has only {limit} positions "
                             f"(max_position_embeddings), prompt included")


def derive_seed(seed: int, step: int, what: str) -> int:
    """A seed for one purpose at one step: runs (and resumed runs) see the same problems and samples."""
    return zlib.crc32(f"{seed}/{step}/{what}".encode())


def propose_problems(cfg, model, tok, task, step, difficulty) -> list[dict]:
    """The policy writes problems: propose_prompt with a few example problems, parse_problem
    validates, duplicates (and copies of the examples) are dropped. No answers, no verifier."""
    examples = task.make_problems(cfg.propose_examples, seed=derive_seed(cfg.seed, step, "examples"), split="train",
                                  **difficulty)
    prompt = tok.encode_chat(task.propose_prompt(examples, style=cfg.prompt_style))
    out = sample.generate(model, [prompt], n=cfg.propose_n, max_new_tokens=cfg.propose_max_new_tokens,
                          temperature=cfg.temperature, top_p=cfg.top_p, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                          seed=derive_seed(cfg.seed, step, "propose"), compile=cfg.compile)
    seen = {json.dumps(p, sort_keys=True) for p in examples}
    problems = []
    for i in range(cfg.propose_n):
        problem = task.parse_problem(decode_completion(tok, out.completion(i)))
        key = json.dumps(problem, sort_keys=True)
        if problem is not None and key not in seen:
            seen.add(key)
            problems.append(problem)
    return problems


def rollout(cfg, model, tok, task, problems, index, step, what, timer) -> list[dict]:
    """G completions for each problems[i], i in index -> one row per completion (with its extracted
    answer). Each problem's samples are seeded by its index in the step's list, not by the batch or
    the rank, so any number of ranks samples the same rollouts."""
    if not index:
        return []
    G = cfg.group_size
    make_prompt = (lambda p: tasks.self_correct_prompt(task, p, style=cfg.prompt_style)) if cfg.self_correct else \
        (lambda p: task.prompt(p, style=cfg.prompt_style))
    prompts = [tok.encode_chat(make_prompt(problems[i])) for i in index]
    with timer("generate"):
        out = sample.generate(model, prompts, n=G, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                              seed=[derive_seed(cfg.seed, step, f"rollout/{what}/{i}") for i in index],
                              compile=cfg.compile)
    rows = []
    for i in range(len(prompts) * G):
        ids = out.completion(i)
        text = decode_completion(tok, ids)
        truncated, answer, extra = out.finish_reasons[i] == "length", task.extract_answer(text), {}
        if cfg.self_correct:  # cut after "[VERIFY] correct" or the turn limit: later tokens get no loss
            traj = tasks.parse_trajectory(text, cfg.max_turns, task.extract_answer)
            if traj.end < len(text):
                ids, text, truncated = ids[:tokens_for_chars(tok, ids, traj.end)], text[:traj.end], False
            answer = traj.final  # the reward is on the final answer only (the paper's guard)
            extra = dict(first=traj.first, first_verdict=traj.first_verdict, attempts=len(traj.turns))
        rows.append(dict(problem=problems[index[i // G]], prompt=prompts[i // G], completion=ids, text=text,
                         logp=out.logprobs[i, :len(ids)].float().cpu(), truncated=truncated, answer=answer,
                         what=what, index=index[i // G], sample=i % G, **extra))
    return rows


def tokens_for_chars(tok, ids, n_chars) -> int:
    """The fewest leading tokens of `ids` whose decoded text covers its first n_chars characters."""
    lo, hi = 0, len(ids)
    while lo < hi:  # decoded length grows with the token count: binary search
        mid = (lo + hi) // 2
        if len(tok.decode(ids[:mid])) >= n_chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


def score(cfg, task, judge, rows, step, what, timer) -> list[list[dict]]:
    """Rewards for the rows (self: the judge's mean verdict; verifier: 1 if correct), grouped by problem.

    The verifier runs on every row, but under --reward self its result is only logged ("correct")."""
    problems, answers = [r["problem"] for r in rows], [r["answer"] for r in rows]
    with timer("verify"):
        correct = verify_all(task, problems, answers)
    if cfg.reward == "verifier":
        rewards, texts = [float(c) for c in correct], [[] for _ in rows]
    else:
        with timer("judge"):
            seeds = [derive_seed(cfg.seed, step, f"judge/{what}/{r['index']}/{r['sample']}") for r in rows]
            rewards, texts = judge.score(problems, answers, seed=seeds)  # per answer: the same on any rank count
    for r, c, w, t in zip(rows, correct, rewards, texts):
        r.update(correct=c, reward=float(w), judge_texts=t)
    if cfg.self_correct:  # the first answer's correctness: logged (turn-1 accuracy), never rewarded
        with timer("verify"):
            for r, c in zip(rows, verify_all(task, problems, [r["first"] for r in rows])):
                r["first_correct"] = c
    G = cfg.group_size
    return [rows[i:i + G] for i in range(0, len(rows), G)]


def ppo_batch(rows, pad_id, device) -> dict:
    """Prompt + completion per row, right-padded; response_mask and old_logp at the completion tokens
    (position t is token t, ppo.py's convention)."""
    T = max(len(r["prompt"]) + len(r["completion"]) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T)
    old_logp = torch.zeros(len(rows), T)
    for b, r in enumerate(rows):
        p, c = len(r["prompt"]), len(r["completion"])
        ids[b, :p + c] = torch.tensor(r["prompt"] + r["completion"])
        mask[b, p:p + c] = 1
        old_logp[b, p:p + c] = r["logp"]
    return {"input_ids": ids.to(device), "response_mask": mask.to(device), "old_logp": old_logp.to(device)}


def step_metrics(step, groups, rows, stats, cfg, source) -> dict:
    n = len(rows)
    rewards = [r["reward"] for r in rows]
    mean = sum(rewards) / n
    lengths = [len(r["completion"]) for r in rows]
    line = {"step": step, "reward_mean": mean, "reward_std": math.sqrt(sum((x - mean) ** 2 for x in rewards) / n),
            "rollout_acc": sum(r["correct"] for r in rows) / n,  # the verifier: measured, not used (--reward self)
            "format_rate": sum(r["answer"] is not None for r in rows) / n,
            "groups_mixed": sum(len({r["reward"] for r in g}) > 1 for g in groups) / len(groups),
            "len_mean": sum(lengths) / n, "len_max": max(lengths),
            "truncated_rate": sum(r["truncated"] for r in rows) / n}
    if cfg.problems == "self":
        line.update(source)
    if cfg.self_correct:  # rollout_acc is the final answer's; a falling turn-1 accuracy shows answering wrong on purpose
        m = self_correct_metrics([r["first_correct"] for r in rows], [r["correct"] for r in rows],
                                 [r["first_verdict"] for r in rows])
        line.update({f"sc_{k}": m[k] for k in ("turn1_acc", "final_acc", "delta_i2c", "delta_c2i",
                                               "verify_acc_correct", "verify_acc_wrong")},
                    sc_mean_attempts=sum(r["attempts"] for r in rows) / n)
    if cfg.reward == "self":  # the judge against the verifier, over the answers it judged
        judged = [r for r in rows if r["judge_texts"]]
        stats_j = agreement([passed(r["reward"]) for r in judged], [r["correct"] for r in judged])
        line.update({f"judge_{k}": v for k, v in stats_j.items()}, judge_judged=len(judged))
    line.update(kl=stats.get("kl_ref", 0.0), clip_frac=stats.get("clip_frac", 0.0), entropy=stats.get("entropy"),
                approx_kl=stats.get("approx_kl"), loss=stats.get("loss"), grad_norm=stats.get("grad_norm"),
                sampler_logp_err=stats.get("sampler_logp_err"))
    return line


def example_line(step, row, tok) -> dict:
    """One rollout per step, for reading what the model writes and what the judge says."""
    return {"step": step, "problem": row["problem"], "completion": row["text"], "answer": row["answer"],
            "reward": row["reward"], "correct": row["correct"], "judge": row["judge_texts"]}


class Timer:
    """Seconds spent per phase of a step: `with timer("generate"): ...`; .times() -> {"time_generate": s}."""

    def __init__(self):
        self.t0, self.spent = time.time(), {k: 0.0 for k in ("generate", "judge", "verify", "update")}

    @contextmanager
    def __call__(self, name):
        t = time.time()
        yield
        self.spent[name] += time.time() - t

    def times(self) -> dict:
        return {**{f"time_{k}": v for k, v in self.spent.items()}, "time_step": time.time() - self.t0}


def fmt(x):
    return "-" if x is None else f"{x:.3f}"


def copy_weights(dst, src):
    with torch.no_grad():
        for d, s in zip(dst.parameters(), src.parameters()):
            d.copy_(s)


# -----------------------------------------------------------------------------
# Several processes (torchrun): FSDP2 sharding, gathering for generation, rank 0 writes.
# Every function here is a no-op (or the identity) in a single process.


def init_distributed(device) -> tuple[int, int, torch.device]:
    """-> (rank, world size, this rank's device). Under torchrun (WORLD_SIZE > 1) joins the process
    group: nccl with one GPU per rank (cuda:LOCAL_RANK), gloo on the CPU. Alone: (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        dist.barrier()  # every rank has checked its flags (--out is fresh) before rank 0 writes config.json
    return dist.get_rank(), dist.get_world_size(), device


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def shard(model, device, mixed):
    """FSDP2 over all ranks: each decoder layer, then the root (embeddings, final norm, lm_head), so a
    layer's full weights exist only during its forward and backward. Mixed precision: fp32 shards (the
    master weights; Adam's states follow them), gathered as bf16 for compute, gradients reduced in fp32."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(torch.bfloat16, reduce_dtype=torch.float32) if mixed else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


@contextmanager
def resident(models, device, generate=False):
    """The models ready for one pass on `device`: a --ref-placement cpu model is moved in (and back out
    after); with generate=True an FSDP model's full weights are gathered on every rank once for the
    whole block (and freed after), since ranks stop decoding at different steps and so no collective
    may run inside `generate`. Costs one all-gather of the weights and a full copy per rank meanwhile."""
    models = list({id(m): m for m in models if m is not None}.values())
    sharded = [m for m in models if isinstance(m, FSDPModule)] if generate else []
    moved = [m for m in models if not isinstance(m, FSDPModule) and m.output_weight.device != device]
    for m in moved:
        m.to(device)
    for m in sharded:
        for layer in m.model.layers:
            layer.set_reshard_after_forward(False, recurse=False)  # stay gathered across decode steps
        for part in (m, *m.model.layers):
            part.unshard()
    try:
        yield
    finally:
        for m in sharded:
            for layer in m.model.layers:
                layer.set_reshard_after_forward(True, recurse=False)
            for part in (m, *m.model.layers):
                part.reshard()
        for m in moved:
            m.to("cpu")


def all_ranks(obj) -> list:
    """obj from every rank, in rank order ([obj] in a single process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def light(row) -> dict:
    """A rollout row without its tensors, for gathering to rank 0's metrics."""
    return {k: v for k, v in row.items() if k not in ("logp", "prompt")}


def merge_stats(per_rank) -> dict:
    """[(ppo_update stats, response tokens)] of all ranks -> one dict: token-weighted means; loss and
    grad_norm are already global (the loss is normalised by all ranks' tokens): plain means;
    sampler_logp_err: the max."""
    total = sum(n for _, n in per_rank) or 1.0
    out = {}
    for k in per_rank[0][0]:
        values = [st[k] for st, _ in per_rank]
        if k in ("loss", "grad_norm"):
            out[k] = sum(values) / len(values)
        elif k == "sampler_logp_err":
            out[k] = max(values)
        else:
            out[k] = sum(v * n for v, (_, n) in zip(values, per_rank)) / total
    return out


def full_model(policy):
    """A plain Qwen with the full weights: the policy itself in one process; under torchrun the
    shards gathered to rank 0's CPU (None on the other ranks; every rank must call this)."""
    if not isinstance(policy, FSDPModule):
        return policy
    state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    with torch.device("meta"):
        model = Qwen(policy.config)
    model.load_state_dict(state, assign=True)
    return model


def barrier():
    if dist.is_initialized():
        dist.barrier()


# -----------------------------------------------------------------------------
# Checkpoints: OUT/ckpt/ = a model folder + trainer_state.pt (+ optimizer.rankN.pt under torchrun),
# replaced atomically


def save_checkpoint(cfg, policy, tok, meta, optimizer, value_head, step):
    """Write OUT/ckpt.tmp, then swap it in with renames: a kill at any moment leaves a whole checkpoint.
    Under torchrun rank 0 writes the model folder (full weights gathered to it) and trainer_state.pt,
    and every rank its optimizer shard; a resume needs the same number of ranks."""
    final, tmp, old = (os.path.join(cfg.out, name) for name in ("ckpt", "ckpt.tmp", "ckpt.old"))
    world = dist.get_world_size() if dist.is_initialized() else 1
    model = full_model(policy)
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        save_model_folder(tmp, model, tok, meta, cfg)
    barrier()  # the folder exists before the ranks write their shards into it
    if world > 1:
        torch.save(get_optimizer_state_dict(policy, optimizer),
                   os.path.join(tmp, f"optimizer.rank{dist.get_rank()}.pt"))
    barrier()
    if is_main():
        torch.save({"step": step, "optimizer": optimizer.state_dict() if world == 1 else None, "world_size": world,
                    "rng": get_rng_state(), "config": asdict(cfg),
                    "value_head": value_head.state_dict() if value_head is not None else None},
                   os.path.join(tmp, "trainer_state.pt"))
        if os.path.exists(final):
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()  # nobody reads or rewrites the folder before the swap is done


def load_trainer_state(ckpt, cfg, world, device) -> dict:
    """trainer_state.pt of a checkpoint; refuses one saved by another number of ranks (its optimizer
    state is sharded per rank)."""
    state = torch.load(os.path.join(ckpt, "trainer_state.pt"), map_location=device, weights_only=False)
    saved = state.get("world_size", 1)
    if saved != world:
        run_with = "python train.py" if saved == 1 else f"torchrun --nproc_per_node {saved} train.py"
        raise UsageError(f"--resume {cfg.out}: {ckpt} was saved by {saved} process(es), this run has {world}: "
                         f"resume with {run_with} (the model folder {ckpt} itself loads anywhere)")
    return state


def latest_checkpoint(out: str) -> str | None:
    """OUT/ckpt, or OUT/ckpt.old when a kill fell between save_checkpoint's two renames."""
    for name in ("ckpt", "ckpt.old"):
        path = os.path.join(out, name)
        if os.path.exists(os.path.join(path, "trainer_state.pt")):
            return path
    return None


def save_model_folder(path, model, tok, meta, cfg):
    """A folder Qwen.from_pretrained and transformers load: weights, config, tokenizer, nano_rlsr.json."""
    model.save_pretrained(path)
    tok.save_pretrained(path)
    if meta or cfg.prompt_style != "full":
        with open(os.path.join(path, META_FILE), "w") as f:
            json.dump({**meta, "prompt_style": cfg.prompt_style}, f, indent=2)


def get_rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


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


# -----------------------------------------------------------------------------
# Supervised stage: chat examples, loss on the assistant turns only


def train_sft(cfg: TrainConfig):
    device = pick_device(cfg.device)
    _, autocast = mixed_precision(cfg, device)
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
            with autocast:
                hidden = model(ids, return_hidden=True)
            on = mask[:, 1:]  # hidden[t] predicts token t+1
            loss = -token_logprobs(hidden[:, :-1][on], model.output_weight, ids[:, 1:][on]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            step += 1
            loss_sum += float(loss.detach())
            tokens += int(on.sum())
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
    save_model_folder(cfg.out, model, tok, meta, cfg)
    print(f"sft: wrote {cfg.out}")
    return cfg.out


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


# -----------------------------------------------------------------------------
# Self-rewarding correction data (stage 1 of Xiong et al., 2025): sequential rejection sampling on
# the policy's own samples, labelled by the verifier


def build_srdata(cfg: TrainConfig):
    """OUT/srdata.jsonl: one [VERIFY] trajectory per kept own answer, for --stage sft.

    The policy answers --sr-problems training problems --sr-samples times (--temperature); the
    verifier labels each answer. Kept: as many right as wrong first answers (balanced), one
    trajectory each, of three kinds (the paper's):
      wrong -> [VERIFY] wrong -> right;   right -> [VERIFY] correct;
      right -> [VERIFY] wrong -> right (robustness: a share --sr-robust of the right ones are candidates,
      kept where the policy's own judge wrongly failed the answer, so that a mistaken verdict is
      followed by a right answer again, not by a wrong one).
    The check before each verdict is the task's worked check (--sr-checks task, the default: the tiny
    model's own checks often reach the right verdict through wrong arithmetic, "40=20 yes"), or with
    --sr-checks own the policy's own judge text, kept when its verdict agrees with the verifier
    (rejection sampling), else the task's; the robustness kind always shows the policy's own failing
    check, since its own mistake is what it is about. Corrections are the policy's
    own right answers to the same problem, else the task's solution. stats.json counts each fallback.
    """
    task = tasks.get(cfg.task)
    device = pick_device(cfg.device)
    model, tok, meta = load_checkpoint(cfg.model, device, torch.float32)
    check_lengths(model, max_new_tokens=cfg.max_new_tokens, judge_max_new_tokens=cfg.judge_max_new_tokens)
    style, rng = cfg.prompt_style, random.Random(cfg.seed)
    problems = task.make_problems(cfg.sr_problems, seed=derive_seed(cfg.seed, 0, "srdata"), split="train",
                                  **meta.get("difficulty", {}))
    prompts = [tok.encode_chat(task.prompt(p, style=style)) for p in problems]
    texts, _ = sample_texts(model, tok, prompts, cfg.max_new_tokens, cfg.temperature, cfg.seed, batch_size=256,
                            n=cfg.sr_samples)
    own = [(i // cfg.sr_samples, attempt_text(t), task.extract_answer(t)) for i, t in enumerate(texts)]
    own = [o for o in own if o[2] is not None]  # an answerless sample is no attempt to verify
    ok = verify_all(task, [problems[i] for i, _, _ in own], [a for _, _, a in own])
    right = [o for o, c in zip(own, ok) if c]
    wrong = [o for o, c in zip(own, ok) if not c]
    by_problem = {}  # the policy's own right attempts per problem: the pool of corrections
    for o in right:
        by_problem.setdefault(o[0], []).append(o)
    rng.shuffle(right)
    rng.shuffle(wrong)
    k = min(len(right), len(wrong))
    bases = [(o, True) for o in right[:k]] + [(o, False) for o in wrong[:k]]
    stats = {"samples": len(texts), "answered": len(own), "right": len(right), "wrong": len(wrong),
             "kinds": {"wrong_right": 0, "right": 0, "right_wrong_right": 0},
             "own_corrections": 0, "solution_corrections": 0, "own_checks": 0, "task_checks": 0}

    def correction(i):  # a right attempt for problem i: the policy's own when it has one
        if by_problem.get(i):
            return (*rng.choice(by_problem[i])[1:], True, "own")
        text = task.solution_text(problems[i], rng, style=style)
        return text, task.extract_answer(text), True, "solution"

    plan = []  # (problem, [(attempt, answer, the verdict it gets, source)], kind) per trajectory
    for (i, attempt, answer), is_right in bases:
        if not is_right:
            plan.append((i, [(attempt, answer, False, "own"), correction(i)], "wrong_right"))
        elif rng.random() < cfg.sr_robust:  # a candidate: kept only if the policy's own check failed it
            plan.append((i, [(attempt, answer, False, "own"), correction(i)], "right_wrong_right"))
        else:
            plan.append((i, [(attempt, answer, True, "own")], "right"))

    # the policy judges every answer of the plan once; its check is kept when its verdict is the one given
    judged = [(i, t[1]) for i, turns, _ in plan for t in turns]
    judge = Judge(model, tok, task, samples=1, temperature=cfg.judge_temperature,
                  max_new_tokens=cfg.judge_max_new_tokens, style=style, batch_size=256)
    rewards, judge_texts = judge.score([problems[i] for i, _ in judged], [a for _, a in judged], seed=cfg.seed + 1)
    rows, pos = [], 0
    for i, turns, kind in plan:
        verdicts = list(zip(rewards[pos:pos + len(turns)], judge_texts[pos:pos + len(turns)]))
        pos += len(turns)
        if kind == "right_wrong_right" and passed(verdicts[0][0]):  # its own check passed it: a plain right
            kind, turns, verdicts = "right", [turns[0][:2] + (True, "own")], verdicts[:1]
        parts = []
        for j, ((attempt, answer, says_correct, source), (reward, texts_j)) in enumerate(zip(turns, verdicts)):
            if j > 0:
                stats[f"{source}_corrections"] += 1
            own = cfg.sr_checks == "own" or kind == "right_wrong_right"  # that kind is about its own mistake
            if own and texts_j and passed(reward) == says_correct:
                stats["own_checks"] += 1
                check = tasks.check_text(texts_j[0])
            else:
                stats["task_checks"] += 1
                check = tasks.check_text(task.judge_text(problems[i], answer, style=style))
            parts += [attempt, check, tasks.verdict_text(says_correct)]
        stats["kinds"][kind] += 1
        reply = "\n".join(x for x in parts if x)
        rows.append({"messages": tasks.self_correct_prompt(task, problems[i], style=style)
                     + [{"role": "assistant", "content": reply}]})
    rng.shuffle(rows)
    os.makedirs(cfg.out, exist_ok=True)
    data = os.path.join(cfg.out, "srdata.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(cfg.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    print(f"srdata: {len(rows)} trajectories in {data}; {json.dumps(stats)}")
    return data


def attempt_text(text: str) -> str:
    """A sampled answer's text up to the end of its last answer block (what comes after is dropped)."""
    end = text.rfind(tasks.ANSWER_CLOSE)
    return text[:end + len(tasks.ANSWER_CLOSE)].strip() if end >= 0 else text.strip()


# -----------------------------------------------------------------------------
# Command line: flags from TrainConfig; --resume takes the saved config and refuses a changed one


def field_docs(cls) -> dict:
    """name -> (section, doc): the comment after each field in the class source and the section
    comment above it (its --help text and heading)."""
    docs, section = {}, ""
    for line in inspect.getsource(cls).splitlines():
        if re.match(r"\s+# ", line):
            section = line.strip()[2:]
        m = re.match(r"\s+(\w+): [^=]+= .*?  # (.*)$", line)
        if m:
            docs[m.group(1)] = (section, m.group(2))
    return docs


METAVARS = dict(model="DIR", out="DIR", resume="DIR", judge="MODE|DIR", data="FILE", task="NAME", device="DEVICE",
                prompt_style="STYLE")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="train.py", description=__doc__.split("\n\n")[0],
                    epilog=__doc__.split("\n\n", 1)[1].split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    groups, docs = {}, field_docs(TrainConfig)
    for f in fields(TrainConfig):
        section, doc = docs[f.name]
        if section not in groups:
            groups[section] = parser.add_argument_group(section)
        doc = doc.replace("%", "%%")
        if "default" not in doc:
            doc += f" (default: {f.default if f.default != '' else 'none'})"
        kw = dict(default=argparse.SUPPRESS, help=doc)
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = type(f.default)
            kw["choices"] = CHOICES.get(f.name)
            kind = {int: "N", float: "X"}.get(type(f.default), "STR")
            kw["metavar"] = None if f.name in CHOICES else METAVARS.get(f.name, kind)
        groups[section].add_argument("--" + f.name.replace("_", "-"), **kw)
    return parser


def normalise(name, value):
    """Paths become absolute, so a run resumed from another folder compares equal."""
    if name in ("model", "data") and value:
        return os.path.abspath(value)
    if name == "judge" and value not in ("live", "frozen"):
        return os.path.abspath(value)
    return value


def parse_config(argv=None) -> TrainConfig:
    parser = build_parser()
    given = {k: normalise(k, v) for k, v in vars(parser.parse_args(argv)).items()}  # only flags on the line
    if given.get("resume"):
        out = given["resume"]
        saved_file = os.path.join(out, "config.json")
        if not os.path.exists(saved_file):
            parser.error(f"--resume {out}: no config.json there (not a train.py output folder)")
        with open(saved_file) as f:
            saved = json.load(f)
        if "out" in given and os.path.abspath(given["out"]) != os.path.abspath(out):
            parser.error("--resume OUT continues in OUT: leave --out out (or give the same folder)")
        for k, v in given.items():
            if k not in RUN_FIELDS and saved.get(k) != v:
                parser.error(f"--resume {out}: the saved run has --{k.replace('_', '-')} {saved.get(k)!r}, "
                             f"not {v!r} (only {', '.join('--' + f.replace('_', '-') for f in RUN_FIELDS)} "
                             f"may change on resume)")
        unknown = set(saved) - {f.name for f in fields(TrainConfig)}
        if unknown:
            parser.error(f"--resume {out}: config.json has unknown fields {sorted(unknown)} (another version?)")
        cfg = TrainConfig(**{**saved, **given, "out": out})
        problem = validate(cfg, fresh=False)
        if problem:
            parser.error(problem)
        return cfg

    # a fresh run: defaults < the model folder's nano_rlsr.json "train_defaults" < flags given
    model = given.get("model", DEFAULT_MODEL)
    try:
        check_model_dir(model)
        meta = read_meta(model)
    except CheckpointError as e:
        parser.error(str(e))
    names = {f.name for f in fields(TrainConfig)} - {"model", "out", "resume", "stage"}
    defaults = {k: v for k, v in (meta.get("train_defaults") or {}).items() if k in names}
    cfg = TrainConfig(**{**defaults, **given})
    cfg.lr = cfg.lr or (1e-6 if cfg.stage == "rl" else 3e-4)
    cfg.prompt_style = cfg.prompt_style or meta.get("prompt_style", "full")
    cfg.out = cfg.out or os.path.join("runs", f"{cfg.task}-{cfg.stage}-{time.strftime('%Y%m%d-%H%M%S')}")
    problem = validate(cfg, fresh=True)
    if problem:
        parser.error(problem)
    return cfg


def validate(cfg: TrainConfig, fresh: bool) -> str | None:
    """The first thing wrong with a config, as one line (None when it is fine)."""
    try:
        tasks.get(cfg.task)
        pick_device(cfg.device)
    except ValueError as e:
        return str(e)
    positive = ["steps", "prompts_per_step", "group_size", "max_new_tokens", "judge_samples",
                "judge_max_new_tokens", "ppo_epochs", "save_interval", "epochs", "batch_size", "max_len",
                "log_interval", "propose_n", "propose_max_new_tokens", "sr_problems", "sr_samples"]
    for name in positive:
        if getattr(cfg, name) < 1:
            if name == "prompts_per_step":  # the problem set of every step
                return "--prompts-per-step must be >= 1 (an empty problem set has nothing to train on)"
            return f"--{name.replace('_', '-')} must be >= 1"
    for name in ("eval_interval", "minibatch_size", "micro_batch_size", "propose_examples", "warmup", "kl_coef",
                 "entropy_coef", "weight_decay", "temperature", "judge_temperature", "eval_temperature"):
        if getattr(cfg, name) < 0:
            return f"--{name.replace('_', '-')} must be >= 0"
    if cfg.max_turns < 0 or not 0 <= cfg.sr_robust <= 1:
        return "--max-turns must be >= 0 and --sr-robust in [0, 1]"
    if cfg.eval_interval and cfg.eval_n < 1:
        return "--eval-n must be >= 1 (or --eval-interval 0 to skip the held-out eval)"
    if cfg.stage == "rl" and cfg.advantage == "group" and cfg.group_size < 2:
        return "--group-size must be >= 2 for group advantages (one sample has no group to compare with)"
    if cfg.temperature == 0 or not 0 < cfg.top_p <= 1 or cfg.lr <= 0:
        return "--temperature must be > 0 for rollouts, --top-p in (0, 1], --lr > 0"
    if cfg.judge not in ("live", "frozen"):
        try:
            check_model_dir(cfg.judge)
        except CheckpointError as e:
            return f"--judge must be live, frozen or a checkpoint folder ({e})"
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's process count
    if world > 1 and cfg.stage in ("sft", "srdata"):
        return f"--stage {cfg.stage} runs in one process (torchrun is for the RL stage)"
    if world > 1 and cfg.advantage == "gae":
        return "--advantage gae runs in one process (its value head is not sharded): use group under torchrun"
    for name in ("prompts_per_step", "minibatch_size"):
        if world > 1 and getattr(cfg, name) % world:
            return (f"--{name.replace('_', '-')} {getattr(cfg, name)} must be a multiple of the {world} torchrun "
                    f"processes (each rank takes an equal share)")
    if cfg.stage == "sft":
        if not cfg.data:
            return "--stage sft needs --data FILE.jsonl (one {\"messages\": [...]} chat example a line)"
        if not os.path.isfile(cfg.data):
            return f"--data {cfg.data}: no such file"
    elif cfg.stage == "rl" and fresh and os.path.exists(os.path.join(cfg.out, "config.json")):
        return f"--out {cfg.out} already holds a run: --resume {cfg.out} continues it, or pick another --out"
    return None


def main(argv=None):
    other_rank = int(os.environ.get("RANK", "0")) > 0  # under torchrun rank 0 alone reports bad flags
    try:
        with open(os.devnull, "w") as devnull, redirect_stderr(devnull) if other_rank else nullcontext():
            cfg = parse_config(argv)
    except SystemExit:
        if other_rank:  # torchrun stops all ranks at the first exit: let rank 0 print its line first
            time.sleep(3)
        raise
    try:
        if cfg.stage == "sft":
            return train_sft(cfg)
        if cfg.stage == "srdata":
            return build_srdata(cfg)
        return train_rl(cfg)
    except (CheckpointError, UsageError) as e:
        if not is_main():  # one line, from rank 0 (as above)
            time.sleep(3)
            sys.exit(1)
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"interrupted: python train.py --resume {cfg.out} continues from its last checkpoint")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
