"""Self-rewarding correction on the tiny model: srdata -> SFT (stage 1) -> RL (stage 2) -> eval.

    python experiments/self_correct.py                     # writes runs/self-correct, prints the table
    python experiments/self_correct.py --quick             # a smoke run of the same pipeline

1. Stage 1 data (train.py --stage srdata): the tiny model answers training problems several times;
   the verifier labels the answers; balanced right/wrong first answers become [VERIFY] trajectories.
2. Stage 1 (train.py --stage sft) on those trajectories.
3. Stage 2 (train.py --self-correct --reward verifier): PPO on whole trajectories, reward = the
   final answer's correctness only; turn-1 accuracy is logged next to it.
4. eval.py --self-correct on held-out problems (greedy): the intrinsic baseline (the untrained
   model asked in a second turn to correct its answer), after stage 1, after stage 2. One markdown
   table on stdout, all numbers in OUT/results.json.
Everything is seeded; the same command gives the same table on the same machine and torch build.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tasks  # noqa: E402
from eval import DEFAULT_MODEL, SELF_CORRECT_ROWS, evaluate_self_correct, load_checkpoint  # noqa: E402
from train import TrainConfig, build_srdata, train_rl, train_sft  # noqa: E402


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


def main():
    ap = argparse.ArgumentParser(description="Self-rewarding correction on the tiny model (see the module docstring).")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="starting model folder")
    ap.add_argument("--out", default=os.path.join("runs", "self-correct"), help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sr-problems", type=int, default=1000, help="stage-1 data: training problems")
    ap.add_argument("--sr-samples", type=int, default=8, help="stage-1 data: own answers per problem")
    ap.add_argument("--sr-checks", default="task", choices=["task", "own"], help="stage-1 data: checks (see train.py)")
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
    torch.manual_seed(args.seed)
    if os.path.exists(os.path.join(args.out, "stage2", "config.json")):
        sys.exit(f"error: {args.out} already holds a run; pass another --out or remove it")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    meta = load_checkpoint(args.model)[2]
    style = meta.get("prompt_style", "full")
    common = dict(model=args.model, seed=args.seed, device="cpu", prompt_style=style, progress=False,
                  max_turns=args.max_turns)

    # 1. stage-1 data from the model's own samples, 2. SFT on it
    srdata = os.path.join(args.out, "srdata")
    data = build_srdata(TrainConfig(**common, stage="srdata", out=srdata, sr_problems=args.sr_problems,
                                    sr_samples=args.sr_samples, sr_checks=args.sr_checks, max_new_tokens=64,
                                    judge_max_new_tokens=96))
    print(f"[{time.time() - t0:.0f}s] stage-1 data")
    stage1 = os.path.join(args.out, "stage1")
    train_sft(TrainConfig(**{**common, "model": args.model}, stage="sft", data=data, out=stage1,
                          epochs=args.sft_epochs, lr=args.sft_lr, batch_size=64, warmup=20, max_len=400))
    print(f"[{time.time() - t0:.0f}s] stage 1 (SFT) done")

    # 3. stage 2: PPO on whole trajectories, verifier reward on the final answer
    stage2 = os.path.join(args.out, "stage2")
    if args.rl_steps:
        train_rl(TrainConfig(**{**common, "model": stage1}, stage="rl", out=stage2, self_correct=True,
                             reward="verifier", steps=args.rl_steps, lr=args.rl_lr, max_new_tokens=args.max_new_tokens,
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
    print(markdown(columns))
    print(f"[{time.time() - t0:.0f}s] wrote {os.path.join(args.out, 'results.json')}")


if __name__ == "__main__":
    main()
