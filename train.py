"""train.py — the RLSR loop: problems -> G rollouts -> self-reward -> group advantages -> PPO.

    python train.py --task countdown                          # RLSR on the embedded tiny model
    python train.py --task countdown --reward verifier        # the formal-verifier baseline
    python train.py --task countdown --problems self          # the policy also writes the problems
    python train.py --resume runs/countdown-rl-...            # continue an interrupted run exactly
    python train.py --model DIR --self-correct --reward verifier   # stage 2 of self-rewarding correction
    torchrun --nproc_per_node 8 train.py --model DIR ...      # the same loop on 8 GPUs, sharded by FSDP2

One step (train_rl: every stage a call, numbered as in the code):
  1. problems: this rank's share of the step's -- the task's generator (a pure function of (seed,
     step)), or the policy's proposals that its own judge admits (propose.py)
  2. G rollouts per problem, sampled by the policy
  3. rewards: the policy judging its own extracted answers (RLSR), or the formal verifier (baseline);
     the verifier is called on every rollout, but under self-reward only to measure (rollout
     accuracy, the judge's TP/FP/TN/FN); proposed problems: the groups inside the learnability band,
     a short step filled from the problem buffer, then from the task
  4. advantages: each reward against its group's mean (GRPO), computed with everything else the update
     needs (ppo.prepare: the old and reference log-probs, gae's values)
  5. the PPO update (ppo.update; fp32 master weights; bf16 autocast per forward on CUDA or with --dtype bf16)
  6. one line of OUT/metrics.jsonl; held-out accuracy every --eval-interval steps; OUT/ckpt/ (a
     model folder + trainer state, replaced atomically) every --save-interval steps

Settings: config.py (dataclass defaults < the model folder's nano_rlsr.json < flags). Processes and
devices: distributed.py. Checkpoints: checkpoint.py. Supervised fine-tuning: sft.py.
"""

import quiet_threads  # noqa: F401  (first: OpenMP reads its settings when torch loads)

import json
import math
import os
import random
import sys
import time
import zlib
from contextlib import contextmanager, nullcontext, redirect_stderr
from dataclasses import asdict, dataclass, replace

import torch
from tqdm import tqdm

import memory
import ppo
import sample
import tasks
from checkpoint import (append_jsonl, check_lengths, latest_checkpoint, load_checkpoint, load_trainer_state,
                        restore, save_checkpoint, truncate_jsonl)
from config import TrainConfig, UsageError, config_from_flags
from distributed import (all_ranks, close, compute_dtype, gather_groups, init_distributed, is_main, merge_stats,
                         pick_device, rank_and_world, resident, shard)
from eval import evaluate, evaluate_self_correct, self_correct_metrics
from judge import Judge, agreement, confusion_rates, passed
from model import CheckpointError, Qwen
from propose import ProblemBuffer, Proposer
from sft import pad_batch
from trackers import TrackerError, open_trackers


# -----------------------------------------------------------------------------
# The RL loop


def train_rl(cfg: TrainConfig, hook=None) -> str:
    """Run cfg.steps RL steps (continuing a --resume); -> the path of OUT/metrics.jsonl.

    hook(phase, "start" | "end", models, data), when given, is called around each phase a step times
    (Timer: "generate", "judge", "verify", "update"), with the run's Models: bench/gpu_check.py's probe."""
    task = tasks.get(cfg.task)
    rank, world, device = init_distributed(pick_device(cfg.device))  # (0, 1, device) without torchrun
    dtype = compute_dtype(cfg.dtype, device)
    os.makedirs(cfg.out, exist_ok=True)
    ckpt = latest_checkpoint(cfg.out) if cfg.resume else None  # None also when killed before the first save
    state = load_trainer_state(ckpt, cfg.out, device) if ckpt else None
    m = load_models(cfg, ckpt, task, device, dtype, world)
    if not cfg.resume and rank == 0:  # written once the models load: --resume reads it, and refuses a changed one
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2)
    cfg = sized_to_memory(cfg, m, task, device, dtype, world)  # CUDA without --micro-batch-size: from the plan
    value_head = ppo.ValueHead(m.policy.config.hidden_size).to(device) if cfg.advantage == "gae" else None
    params = list(m.policy.parameters()) + (list(value_head.parameters()) if value_head else [])
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay, fused=True)
    start = restore(ckpt, state, m.policy, optimizer, value_head, device) if ckpt else 0
    buffer = ProblemBuffer(state.get("problem_buffer") if ckpt else None)  # --problems self: recent own problems
    proposer = Proposer(cfg, task, buffer) if cfg.problems != "task" else None
    log = RunLog(cfg, start)
    heldout = task.make_problems(cfg.eval_n, seed=cfg.seed, split="test", **cfg.difficulty) if cfg.eval_interval else []
    if start == 0 and cfg.eval_interval:
        log.heldout({"step": 0, **heldout_eval(cfg, m, task, heldout, device)}, print)

    bar = tqdm(range(start + 1, cfg.steps + 1), initial=start, total=cfg.steps, disable=not cfg.progress or rank > 0,
               dynamic_ncols=True, desc=f"rlsr {cfg.task}")
    quota = cfg.prompts_per_step // world  # problems per rank: rank r owns the step's problems r*quota ... +quota-1
    last_acc = None
    for step in bar:
        torch.manual_seed(derive_seed(cfg.seed, step, "torch"))  # the update order: a function of (seed, step)
        timer = Timer(hook, m)
        with resident([m.sampler, *m.judge_frozen], device, generate=True):  # full weights for generation
            # 1. problems (this rank's share): the task's, or the policy's proposals its own judge admits
            problems, index, what = step_problems(cfg, m, task, step, quota, proposer, timer)
            # 2. G rollouts per problem
            rows = rollout(cfg, m.sampler, m.tok, task, problems, index, step, what, timer)
            # 3. rewards: the judge's verdicts (or the verifier's), grouped by problem; of proposed problems
            #    the groups in the learnability band, a short step filled from the buffer, then the task
            groups = score(cfg, task, m.judge, rows, step, what, timer)
            if proposer:
                groups = fill(cfg, m, task, step, quota, proposer.keep(groups, quota), proposer, timer)

        with timer("update"):
            # 4. advantages: each reward against its group's (GRPO), a proposal's (--train-proposer)
            #    against the step's proposals; with the old and reference log-probs the update needs
            batch = ppo_batch([r for g in groups for r in g], proposer.rows() if proposer else [], m.tok.pad_id, device)
            batch = prepare_update(cfg, m, batch, value_head, device, dtype)
            # 5. PPO on the fp32 master weights; the sampler's copy follows
            stats = update_policy(cfg, m, optimizer, batch, value_head, dtype)

        # 6. log (every rank's rows, written by rank 0), held-out eval, checkpoint
        source = proposer.metrics(groups) if proposer else {}
        stats = merge_stats(stats, float(batch["response_mask"].sum()))
        groups = gather_groups(groups)
        line = step_metrics(step, groups, stats, cfg, source)
        if cfg.eval_interval and (step % cfg.eval_interval == 0 or step == cfg.steps):
            line.update(heldout_eval(cfg, m, task, heldout, device))
            last_acc = line["heldout_acc"]
        line.update(timer.times(), lr=optimizer.param_groups[0]["lr"])
        log.step(line, groups[0][0], m.tok, bar)
        bar.set_postfix(reward=f"{line['reward_mean']:.3f}", judge_agree=fmt(line.get("judge_accuracy")),
                        heldout_acc=fmt(last_acc))
        if step % cfg.save_interval == 0 or step == cfg.steps:
            save_checkpoint(cfg, m.policy, m.tok, m.meta, optimizer, value_head, step, buffer.state())
    bar.close()
    log.close()
    if rank == 0:
        print(run_summary(log.metrics_file))
        print(f"done: {cfg.steps} steps; metrics in {log.metrics_file}, model folder in {os.path.join(cfg.out, 'ckpt')}")
        print(f"draw the run: python plot.py {cfg.out}   (writes {os.path.join(cfg.out, 'metrics.png')})")
    return log.metrics_file


# -----------------------------------------------------------------------------
# The models of a run


@dataclass
class Models:
    policy: Qwen          # fp32 master weights, trained (FSDP-sharded under torchrun)
    sampler: Qwen         # generates rollouts: the policy, or its bf16 copy on one GPU
    reference: Qwen | None  # the initial model: KL anchor, and the judge with --judge frozen
    judge: Judge | None   # scores answers under --reward self
    tok: object
    meta: dict            # the starting model folder's nano_rlsr.json

    @property
    def judge_frozen(self) -> list:
        """A judge model other than the sampler (kept resident while generating)."""
        return [self.judge.model] if self.judge and self.judge.model is not self.sampler else []


def load_models(cfg, ckpt, task, device, dtype, world) -> Models:
    """The policy from the checkpoint (resume) or cfg.model, and the models that follow from the config."""
    mixed = dtype == torch.bfloat16
    policy, tok, meta = load_checkpoint(ckpt or cfg.model, device, torch.float32)
    check_lengths(policy, max_new_tokens=cfg.max_new_tokens, judge_max_new_tokens=cfg.judge_max_new_tokens,
                  propose_max_new_tokens=cfg.propose_max_new_tokens)
    policy.grad_ckpt = cfg.grad_ckpt == "layer"
    if world > 1:
        shard(policy, device, mixed)
    sampler = policy
    if mixed and world == 1:
        sampler = Qwen.from_pretrained(ckpt or cfg.model, dtype=dtype, device=device)
    frozen_device = device if cfg.ref_placement == "shard" else torch.device("cpu")  # --ref-placement cpu
    reference = None
    if cfg.kl_coef > 0 or cfg.judge == "frozen":
        reference = Qwen.from_pretrained(cfg.model, dtype=dtype, device=frozen_device).requires_grad_(False)
    judge = None
    if cfg.reward == "self" or cfg.problems == "self":  # (--problems self: the judge also admits proposals)
        judge_model, judge_tok, judge_style = sampler, tok, cfg.prompt_style
        if cfg.judge == "frozen":
            judge_model = reference
        elif cfg.judge != "live":
            judge_model, judge_tok, judge_meta = load_checkpoint(cfg.judge, frozen_device, dtype)
            judge_style = judge_meta.get("prompt_style", cfg.prompt_style)
        judge = Judge(judge_model, judge_tok, task, samples=cfg.judge_samples, temperature=cfg.judge_temperature,
                      max_new_tokens=cfg.judge_max_new_tokens, style=judge_style, compile=cfg.compile)
    frozen = [x for x in (reference, judge and judge.model) if x is not None and x is not sampler]
    if world > 1 and cfg.ref_placement == "shard":
        for x in {id(x): x for x in frozen}.values():
            shard(x, device, mixed=False)  # already in the compute dtype
    return Models(policy, sampler, reference, judge, tok, meta)


def sized_to_memory(cfg, m: Models, task, device, dtype, world) -> TrainConfig:
    """On CUDA without --micro-batch-size: the micro-batch the memory plan fits in this GPU's free memory
    (memory.py; the whole minibatch at once would not fit a real model). Elsewhere cfg unchanged."""
    if cfg.micro_batch_size or device.type != "cuda":
        return cfg
    probe = task.make_problems(64, seed=cfg.seed, split="train", **cfg.difficulty)  # the longest prompt, roughly
    prompt_len = max(len(m.tok.encode_chat(solver_prompt(cfg, task, p))) for p in probe)
    try:
        choice = memory.run_micro_batch(cfg, m.policy.config, world, prompt_len, device, dtype)
    except memory.MemoryPlanError as e:
        choice = (0, str(e))
    choices = all_ranks(choice)  # every rank the same micro-batch (FSDP2's collectives pair up), the smallest
    refused = [why for micro, why in choices if micro == 0]
    if refused:
        raise memory.MemoryPlanError(refused[0])
    micro, peak = min(choices)
    if is_main():
        print(f"micro-batch: {micro} rollouts per forward/backward (the memory plan's peak {peak / 2**30:.1f} GiB "
              f"per GPU, prompts up to {prompt_len} tokens); --micro-batch-size N sets it")
    return replace(cfg, micro_batch_size=micro)


# -----------------------------------------------------------------------------
# Held-out eval and logs


def heldout_eval(cfg, m: Models, task, heldout, device) -> dict:
    """Held-out accuracy (greedy by default): each rank evaluates every world-th problem; merged."""
    t0, (rank, world) = time.time(), rank_and_world()
    mine, r = heldout[rank::world], None
    with resident([m.sampler], device, generate=True):
        if mine and cfg.self_correct:  # held-out trajectories: heldout_acc is the final answer's
            r = evaluate_self_correct(m.sampler, m.tok, task, mine, max_turns=cfg.max_turns,
                                      temperature=cfg.eval_temperature, max_new_tokens=cfg.max_new_tokens,
                                      style=cfg.prompt_style, seed=cfg.seed)
            r = {"mean@1": r["final_acc"], "format_rate": None, **r}
        elif mine:
            r = evaluate(m.sampler, m.tok, task, mine, samples=1, temperature=cfg.eval_temperature,
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


class RunLog:
    """What rank 0 records of a run: OUT/metrics.jsonl (a line per step), OUT/samples.jsonl (an example
    rollout per step), both cut back to the checkpoint's step (a killed run), and the same metrics
    lines to the --report-to trackers (TensorBoard, W&B)."""

    def __init__(self, cfg, start):
        self.cfg, self.main = cfg, is_main()
        self.metrics_file = os.path.join(cfg.out, "metrics.jsonl")
        self.samples_file = os.path.join(cfg.out, "samples.jsonl")
        for file in (self.metrics_file, self.samples_file) if self.main else ():
            truncate_jsonl(file, start)
        self.trackers = open_trackers(cfg.report_to if self.main else [], cfg.out, asdict(cfg), start=start)

    def heldout(self, line, write):
        if self.main:
            self._metrics(line)
            write(f"step {line['step']}: {eval_note(line)} ({self.cfg.eval_n} problems)")

    def step(self, line, row, tok, bar):
        if not self.main:
            return
        if "heldout_acc" in line:
            bar.write(f"step {line['step']}: {eval_note(line)} ({self.cfg.eval_n} problems)")
        self._metrics(line)
        append_jsonl(self.samples_file, example_line(line["step"], row, tok))

    def _metrics(self, line):
        append_jsonl(self.metrics_file, line)
        self.trackers.log(line)

    def close(self):
        self.trackers.close()


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
        rates = {k: float("nan") if v is None else v for k, v in confusion_rates(**n).items()}
        out.append(f"judge vs verifier over the run: TP {n['tp']} FP {n['fp']} TN {n['tn']} FN {n['fn']}, "
                   f"precision {rates['precision']:.3f}, recall {rates['recall']:.3f}")
    return "; ".join(out) or "no held-out eval or judge verdicts in this run"


def eval_note(line) -> str:
    """The held-out figures of a metrics line, for the console."""
    note = f"held-out accuracy {line['heldout_acc']:.3f}"
    if "heldout_turn1_acc" in line:
        note += (f" (final; turn 1 {line['heldout_turn1_acc']:.3f}, i->c {line['heldout_delta_i2c']:.3f}, "
                 f"c->i {line['heldout_delta_c2i']:.3f})")
    return note


# -----------------------------------------------------------------------------
# The stages: problems, rollouts, rewards, the PPO batch, advantages, the update


def derive_seed(seed: int, step: int, what: str) -> int:
    """A seed for one purpose at one step: runs (and resumed runs) see the same problems and samples."""
    return zlib.crc32(f"{seed}/{step}/{what}".encode())


def step_problems(cfg, m, task, step, quota, proposer, timer) -> tuple[list, list, str]:
    """1. The step's problems -> (problems, the indices of those this rank solves, who wrote them):
    the task's (this rank's quota of them), or the proposals the policy's judge admits (every
    world-th of them); every rank gets the same list."""
    rank, world = rank_and_world()
    if proposer is None:
        return task_problems(cfg, task, step), list(range(rank * quota, (rank + 1) * quota)), "task"
    problems = proposer.admitted(m.sampler, m.tok, m.judge, timer,
                                 rng=random.Random(derive_seed(cfg.seed, step, "examples")),
                                 seed=derive_seed(cfg.seed, step, "propose"),
                                 judge_seeds=[derive_seed(cfg.seed, step, f"admit/{i}") for i in range(cfg.propose_n)])
    return problems, list(range(rank, len(problems), world)), "self"


def task_problems(cfg, task, step) -> list[dict]:
    """The step's cfg.prompts_per_step problems from the task's generator: a pure function of (seed, step)."""
    return task.make_problems(cfg.prompts_per_step, seed=derive_seed(cfg.seed, step, "problems"), split="train",
                              **cfg.difficulty)


def fill(cfg, m, task, step, quota, groups, proposer, timer) -> list[list[dict]]:
    """Stages 1-3 again for a step short of learnable proposals: problems admitted at earlier steps
    (the buffer), then, while it is empty, the task's -> this rank's quota groups."""
    rank, _ = rank_and_world()
    what = f"reuse/{rank}"
    again = proposer.from_buffer(quota - len(groups), random.Random(derive_seed(cfg.seed, step, what)))
    rows = rollout(cfg, m.sampler, m.tok, task, again, list(range(len(again))), step, what, timer)
    groups = groups + proposer.renew(score(cfg, task, m.judge, rows, step, what, timer) if rows else [])
    if len(groups) < quota:  # nothing of its own yet: this rank's first task problems
        index = list(range(rank * quota, rank * quota + quota - len(groups)))
        rows = rollout(cfg, m.sampler, m.tok, task, task_problems(cfg, task, step), index, step, "task", timer)
        groups = groups + score(cfg, task, m.judge, rows, step, "task", timer)
    return groups


def rollout(cfg, model, tok, task, problems, index, step, what, timer) -> list[dict]:
    """G completions for each problems[i], i in index -> one row per completion (with its extracted
    answer). Each problem's samples are seeded by its index in the step's list, not by the batch or
    the rank, so any number of ranks samples the same rollouts."""
    if not index:
        return []
    G = cfg.group_size
    prompts = [tok.encode_chat(solver_prompt(cfg, task, problems[i])) for i in index]
    with timer("generate", prompts):
        done = sample.completions(model, tok, prompts, n=G, max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, top_p=cfg.top_p, compile=cfg.compile,
                                  seed=[derive_seed(cfg.seed, step, f"rollout/{what}/{i}") for i in index])
    rows = []
    for i, c in enumerate(done):
        ids, text, truncated, answer, extra = c.ids, c.text, c.truncated, task.extract_answer(c.text), {}
        if cfg.self_correct:  # cut after "[VERIFY] correct" or the turn limit: later tokens get no loss
            traj = tasks.parse_trajectory(text, cfg.max_turns, task.extract_answer)
            if traj.end < len(text):
                ids, text, truncated = ids[:tokens_for_chars(tok, ids, traj.end)], text[:traj.end], False
            answer = traj.final  # the reward is on the final answer only (the paper's guard)
            extra = dict(first=traj.first, first_verdict=traj.first_verdict, attempts=len(traj.turns))
        rows.append(dict(problem=problems[index[i // G]], prompt=prompts[i // G], completion=ids, text=text,
                         logp=c.logp[:len(ids)], truncated=truncated, answer=answer, what=what,
                         index=index[i // G], sample=i % G, **extra))
    return rows


def solver_prompt(cfg, task, problem) -> list[dict]:
    """The chat messages a rollout answers: the task's prompt, or with --self-correct its [VERIFY] variant."""
    if cfg.self_correct:
        return tasks.self_correct_prompt(task, problem, style=cfg.prompt_style)
    return task.prompt(problem, style=cfg.prompt_style)


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
        correct = tasks.verify_all(task, problems, answers)
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
            for r, c in zip(rows, tasks.verify_all(task, problems, [r["first"] for r in rows])):
                r["first_correct"] = c
    G = cfg.group_size
    return [rows[i:i + G] for i in range(0, len(rows), G)]


def ppo_batch(rows, proposals, pad_id, device) -> dict:
    """The rollout rows, then the proposal rows (--train-proposer) -> the PPO batch: input_ids [B, T]
    (prompt + completion per row, right-padded: sft.pad_batch), response_mask [B, T] (1 at the
    completion tokens: position t is token t, ppo.py's convention), old_logp [B, T] (the sampler's,
    there), rewards [B] and proposals (how many rows at the end are proposals)."""
    rows = rows + proposals
    ids, on = pad_batch([(r["prompt"] + r["completion"], [0] * len(r["prompt"]) + [1] * len(r["completion"]))
                         for r in rows], pad_id, "cpu")
    old_logp = torch.zeros(on.shape)
    old_logp[on] = torch.cat([r["logp"] for r in rows])  # row by row, each row's completion in order
    return {"input_ids": ids.to(device), "response_mask": on.float().to(device), "old_logp": old_logp.to(device),
            "rewards": torch.tensor([r["reward"] for r in rows], device=device), "proposals": len(proposals)}


def prepare_update(cfg, m: Models, batch, value_head, device, dtype) -> dict:
    """4. The batch's advantages, and everything else the update needs (ppo.prepare: the policy's old
    log-probs, the reference's, gae's values), in one no-grad pass before the update."""
    with resident([m.reference] if cfg.kl_coef > 0 else [], device):
        return ppo.prepare(m.policy, batch, cfg, ref_model=m.reference, value_head=value_head, compute_dtype=dtype)


def update_policy(cfg, m: Models, optimizer, batch, value_head, dtype) -> dict:
    """5. PPO on the prepared batch (ppo.update); the sampler's bf16 copy (if any) follows."""
    m.policy.train()
    stats = ppo.update(m.policy, optimizer, batch, cfg, value_head=value_head, compute_dtype=dtype)
    m.policy.eval()
    if m.sampler is not m.policy:
        with torch.no_grad():
            for d, s in zip(m.sampler.parameters(), m.policy.parameters()):
                d.copy_(s)
    return stats


def step_metrics(step, groups, stats, cfg, source) -> dict:
    """The step's line of metrics.jsonl: rewards, the verifier's measure of the rollouts, the judge, PPO stats."""
    rows = [r for g in groups for r in g]
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
        distinct = {(json.dumps(r["problem"], sort_keys=True), r["answer"]) for r in judged}  # a greedy judge's work
        line.update({f"judge_{k}": v for k, v in stats_j.items()}, judge_judged=len(judged),
                    judge_distinct=len(distinct))
    line.update(kl=stats.get("kl_ref", 0.0), clip_frac=stats.get("clip_frac", 0.0), entropy=stats.get("entropy"),
                approx_kl=stats.get("approx_kl"), loss=stats.get("loss"), grad_norm=stats.get("grad_norm"),
                sampler_logp_err=stats.get("sampler_logp_err"))
    return line


def example_line(step, row, tok) -> dict:
    """One rollout per step, for reading what the model writes and what the judge says."""
    return {"step": step, "problem": row["problem"], "completion": row["text"], "answer": row["answer"],
            "reward": row["reward"], "correct": row["correct"], "judge": row["judge_texts"]}


class Timer:
    """Seconds spent per phase of a step: `with timer("generate"): ...`; .times() -> {"time_generate": s}.

    hook (train_rl's) is called hook(phase, "start" | "end", models, data) around each phase; data is
    what the phase works on where the caller gives it (the rollout prompts, token-id lists)."""

    def __init__(self, hook=None, models=None):
        self.t0, self.spent = time.time(), {k: 0.0 for k in ("generate", "judge", "verify", "update")}
        self.hook, self.models = hook, models

    @contextmanager
    def __call__(self, name, data=None):
        if self.hook:
            self.hook(name, "start", self.models, data)
        t = time.time()
        yield
        self.spent[name] += time.time() - t
        if self.hook:
            self.hook(name, "end", self.models, data)

    def times(self) -> dict:
        return {**{f"time_{k}": v for k, v in self.spent.items()}, "time_step": time.time() - self.t0}


def fmt(x):
    return "-" if x is None else f"{x:.3f}"


# -----------------------------------------------------------------------------
# Command line


def main(argv=None, hook=None):
    """The command line: flags (argv, default sys.argv) -> train_rl(config, hook)."""
    other_rank = int(os.environ.get("RANK", "0")) > 0  # under torchrun rank 0 alone reports bad flags
    try:
        with open(os.devnull, "w") as devnull, redirect_stderr(devnull) if other_rank else nullcontext():
            cfg = config_from_flags(TrainConfig, argv, prog="train.py", description=__doc__.split("\n\n")[0],
                                    epilog=__doc__.split("\n\n", 1)[1].split("\n\n")[0])
    except SystemExit:
        if other_rank:  # torchrun stops all ranks at the first exit: let rank 0 print its line first
            time.sleep(3)
        raise
    try:
        return train_rl(cfg, hook)
    except (CheckpointError, UsageError, TrackerError) as e:
        if not is_main():  # one line, from rank 0 (as above)
            time.sleep(3)
            sys.exit(1)
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"interrupted: python train.py --resume {cfg.out} continues from its last checkpoint")
    finally:
        close()


if __name__ == "__main__":
    main()
