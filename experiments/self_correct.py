"""Self-rewarding correction on the tiny model: srdata -> SFT (stage 1) -> RL (stage 2) -> eval.

    python experiments/self_correct.py                     # writes runs/self-correct, prints the table
    python experiments/self_correct.py --seeds 0 1 2       # each seed in runs/self-correct/s<seed>; mean ± sd
    python experiments/self_correct.py --quick             # a smoke run of the same pipeline

1. Stage 1 data (build_srdata, below): the tiny model answers training problems several times;
   the verifier labels the answers; balanced right/wrong first answers become [VERIFY] trajectories.
2. Stage 1 (sft.py's train_sft) on those trajectories.
3. Stage 2 (train.py --self-correct --reward verifier): PPO on whole trajectories, reward = the
   final answer's correctness only; turn-1 accuracy is logged next to it.
4. eval.py --self-correct on held-out problems (greedy): the intrinsic baseline (the untrained
   model asked in a second turn to correct its answer), after stage 1, after stage 2. One markdown
   table on stdout, all numbers in OUT/results.json.
Everything is seeded; the same command gives the same table on the same machine and torch build.
"""

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import quiet_threads  # noqa: E402,F401  (before torch: idle OpenMP threads sleep)
import torch  # noqa: E402

import sample  # noqa: E402
import tasks  # noqa: E402
from checkpoint import check_lengths, load_checkpoint  # noqa: E402
from config import DEFAULT_MODEL, SFTConfig, TrainConfig, make_config  # noqa: E402
from distributed import pick_device  # noqa: E402
from eval import SELF_CORRECT_ROWS, evaluate_self_correct  # noqa: E402
from judge import Judge, passed  # noqa: E402
from sft import train_sft  # noqa: E402
from train import derive_seed, train_rl  # noqa: E402
from experiments.rlsr import mean_std  # noqa: E402


def measure(path, problems, args, intrinsic=False):
    model, tok, meta = load_checkpoint(path)
    return evaluate_self_correct(model, tok, tasks.get("countdown"), problems, max_turns=args.max_turns,
                                 temperature=0.0, max_new_tokens=96 if intrinsic else args.max_new_tokens,
                                 style=meta.get("prompt_style", "full"), seed=args.seed, batch_size=256,
                                 intrinsic=intrinsic)


def markdown(columns) -> str:
    """columns: [(name, metrics)] -> a markdown table, one row per metric."""
    lines = ["| | " + " | ".join(name for name, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, key, spec in SELF_CORRECT_ROWS:
        cells = ["-" if r.get(key) is None else format(r[key], spec) for _, r in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Stage-1 data: sequential rejection sampling on the policy's own answers


@dataclass
class SRDataConfig:
    """Settings of the stage-1 data build (the experiment's flags set the ones it changes)."""
    model: str = DEFAULT_MODEL
    out: str = os.path.join("runs", "self-correct", "srdata")
    task: str = "countdown"
    seed: int = 0
    device: str = "cpu"
    prompt_style: str = "full"
    sr_problems: int = 2000      # training problems the policy answers
    sr_samples: int = 4          # own answers sampled per problem (first attempts and corrections)
    sr_robust: float = 0.1       # share of right first answers given the right -> [VERIFY] wrong -> right kind
    sr_checks: str = "task"      # the check before a verdict: task (worked check) or own (policy's, if right)
    temperature: float = 1.0     # sampling temperature of the own answers
    max_new_tokens: int = 256
    judge_temperature: float = 1.0
    judge_max_new_tokens: int = 256


def build_srdata(cfg: SRDataConfig) -> str:
    """OUT/srdata.jsonl: one [VERIFY] trajectory per kept own answer, for sft.py.

    The policy answers cfg.sr_problems training problems cfg.sr_samples times (cfg.temperature); the
    verifier labels each answer. Kept: as many right as wrong first answers (balanced), one
    trajectory each, of three kinds (the paper's):
      wrong -> [VERIFY] wrong -> right;   right -> [VERIFY] correct;
      right -> [VERIFY] wrong -> right (robustness: a share cfg.sr_robust of the right ones are candidates,
      kept where the policy's own judge wrongly failed the answer, so that a mistaken verdict is
      followed by a right answer again, not by a wrong one).
    The check before each verdict is the task's worked check (cfg.sr_checks task, the default: the tiny
    model's own checks often reach the right verdict through wrong arithmetic, "40=20 yes"), or with
    cfg.sr_checks own the policy's own judge text, kept when its verdict agrees with the verifier
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
    done = sample.completions(model, tok, prompts, n=cfg.sr_samples, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, seed=cfg.seed, batch_size=256)
    texts = [c.text for c in done]
    own = [(i // cfg.sr_samples, attempt_text(t), task.extract_answer(t)) for i, t in enumerate(texts)]
    own = [o for o in own if o[2] is not None]  # an answerless sample is no attempt to verify
    ok = tasks.verify_all(task, [problems[i] for i, _, _ in own], [a for _, _, a in own])
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


def main():
    ap = argparse.ArgumentParser(description="Self-rewarding correction on the tiny model (see the module docstring).")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="starting model folder")
    ap.add_argument("--out", default=os.path.join("runs", "self-correct"), help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                    help="run each seed in OUT/s<SEED> (a finished one is reused) and print mean ± sd over them")
    ap.add_argument("--sr-problems", type=int, default=1000, help="stage-1 data: training problems")
    ap.add_argument("--sr-samples", type=int, default=8, help="stage-1 data: own answers per problem")
    ap.add_argument("--sr-checks", default="task", choices=["task", "own"], help="stage-1 data: checks (see build_srdata)")
    ap.add_argument("--sft-epochs", type=int, default=5, help="stage-1 SFT epochs (2 were too few to learn the verdicts)")
    ap.add_argument("--sft-lr", type=float, default=1e-3, help="stage-1 SFT peak lr (2e-3+ was far worse here)")
    ap.add_argument("--rl-steps", type=int, default=60, help="stage-2 PPO steps (0: skip stage 2)")
    ap.add_argument("--rl-lr", type=float, default=3e-5,
                    help="stage-2 lr (the tiny model's RL default, 1e-4, unlearned the corrections in 40 steps)")
    ap.add_argument("--max-turns", type=int, default=2, help="corrections allowed after the first answer")
    ap.add_argument("--max-new-tokens", type=int, default=200, help="longest trajectory, in tokens")
    ap.add_argument("--eval-n", type=int, default=300, help="held-out problems in the final table")
    ap.add_argument("--quick", action="store_true", help="a minute-sized budget (smoke runs)")
    args = ap.parse_args()
    if args.quick:
        args.sr_problems, args.sr_samples, args.sft_epochs, args.rl_steps, args.eval_n = 100, 4, 1, 2, 30
    if not args.seeds:
        print(markdown(run_seed(args)))
        return
    per_seed = []
    for seed in args.seeds:
        one = argparse.Namespace(**{**vars(args), "seed": seed, "out": os.path.join(args.out, f"s{seed}")})
        done = os.path.join(one.out, "results.json")
        if not os.path.exists(done):
            run_seed(one)
        with open(done) as f:
            per_seed.append(json.load(f)["results"])
    names = list(per_seed[0])
    summary = {name: {key: mean_std([r[name][key] for r in per_seed if r[name].get(key) is not None])
                      for _, key, _ in SELF_CORRECT_ROWS} for name in names}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"seeds": args.seeds, "per_seed": per_seed, "mean_sd": summary}, f, indent=2)
    print(f"{len(args.seeds)} seeds ({' '.join(map(str, args.seeds))}), mean ± sd:")
    print(markdown_seeds(names, summary))


def markdown_seeds(names, summary) -> str:
    """The table over seeds: each cell mean ± sd (sample standard deviation), "-" where it does not apply."""
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key, spec in SELF_CORRECT_ROWS:
        cells = []
        for name in names:
            m, sd = summary[name][key]
            if spec == "d":  # a count, the same for every seed
                m, sd, spec = round(m), float("nan"), "d"
            cells.append("-" if math.isnan(m) else format(m, spec) + ("" if math.isnan(sd) else
                                                                    f" ± {format(sd, spec.lstrip('+'))}"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_seed(args) -> list:
    """The whole pipeline for args.seed in args.out -> the table's columns [(name, metrics)]; also
    OUT/results.json."""
    torch.manual_seed(args.seed)
    if os.path.exists(os.path.join(args.out, "stage2", "config.json")):
        sys.exit(f"error: {args.out} already holds a run; pass another --out or remove it")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    meta = load_checkpoint(args.model)[2]
    style = meta.get("prompt_style", "full")

    # 1. stage-1 data from the model's own samples, 2. SFT on it
    srdata = os.path.join(args.out, "srdata")
    data = build_srdata(SRDataConfig(model=args.model, out=srdata, seed=args.seed, prompt_style=style,
                                     sr_problems=args.sr_problems, sr_samples=args.sr_samples,
                                     sr_checks=args.sr_checks, max_new_tokens=64, judge_max_new_tokens=96))
    print(f"[{time.time() - t0:.0f}s] stage-1 data")
    stage1 = os.path.join(args.out, "stage1")
    train_sft(make_config(SFTConfig, model=args.model, data=data, out=stage1, seed=args.seed, device="cpu",
                          epochs=args.sft_epochs, lr=args.sft_lr, batch_size=64, warmup=20, max_len=400,
                          progress=False))
    print(f"[{time.time() - t0:.0f}s] stage 1 (SFT) done")

    # 3. stage 2: PPO on whole trajectories, verifier reward on the final answer (kl_coef 0.001: the
    # setting the README's table was measured with, chosen here over the model folder's 0.1)
    stage2 = os.path.join(args.out, "stage2")
    if args.rl_steps:
        train_rl(make_config(TrainConfig, model=stage1, out=stage2, seed=args.seed, device="cpu", progress=False,
                             self_correct=True, max_turns=args.max_turns, reward="verifier", steps=args.rl_steps,
                             lr=args.rl_lr, max_new_tokens=args.max_new_tokens, kl_coef=0.001,
                             eval_interval=max(1, args.rl_steps // 2), eval_n=100, save_interval=args.rl_steps))
        print(f"[{time.time() - t0:.0f}s] stage 2 (RL) done")

    # 4. the table
    problems = tasks.get("countdown").make_problems(args.eval_n, seed=args.seed, split="test",
                                                    **meta.get("difficulty", {}))
    columns = [("intrinsic (tiny model)", measure(args.model, problems, args, intrinsic=True)),
               ("stage 1 (SFT)", measure(stage1, problems, args))]
    if args.rl_steps:
        columns.append(("stage 1 + 2 (RL)", measure(os.path.join(stage2, "ckpt"), problems, args)))
    with open(os.path.join(srdata, "stats.json")) as f:
        stats = json.load(f)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "srdata": stats,
                   "results": dict(columns), "seconds": round(time.time() - t0)}, f, indent=2)
    print(f"[{time.time() - t0:.0f}s] wrote {os.path.join(args.out, 'results.json')}")
    return columns


if __name__ == "__main__":
    main()
