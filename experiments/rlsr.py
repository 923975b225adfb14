"""The miniature RLSR replication: does self-reward teach the tiny model as well as the verifier?

    python experiments/rlsr.py                      # every condition x seeds 0 1 2
    python experiments/rlsr.py --seeds 7 8 9        # other seeds
    python experiments/rlsr.py --conditions verifier self self-proposer    # some of them
    python experiments/rlsr.py --quick              # a minute-sized smoke run of the same script
    python experiments/rlsr.py --task integration   # the integration table (verifier, frozen, live)

From the same start (the task's embedded tiny model, assets/tiny-<task>) and with equal budgets
(same steps, problems per step, rollouts, learning rate), per seed:
  none           no RL: the start model evaluated on the seed's held-out problems
  verifier       reward = the formal checker (the paper's "formal verification" baseline)
  frozen         self reward, judged by the frozen initial model
  live           self reward, judged by the current policy itself (RLSR)
  self-mixed     live + the policy proposes its problems with a simpler filter: no witness; every new
                 valid proposal is solved and kept when its self-rewards are mixed (some pass, some fail)
  self           RLSR's complete loop: proposals with a witness admitted by the policy's own judge,
                 kept inside the learnability band, repeats dropped, the buffer reused
  self-proposer  self + the proposals trained with a learnability reward (--train-proposer)

Every run is a plain `train.py` run in OUT/<condition>-s<seed>/ (finished runs are reused, so an
interrupted experiment continues). The summary — held-out accuracy over training, the judge's
precision/recall on the policy's own samples — goes to OUT/results.json, OUT/results.md and, when
matplotlib is installed (`pip install -e ".[plot]"`), OUT/rlsr.png.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from judge import confusion_rates  # noqa: E402

CONDITIONS = {  # name -> train.py flags (on top of the shared ones)
    "verifier": ["--reward", "verifier"],
    "frozen": ["--judge", "frozen"],
    "live": ["--judge", "live"],
    "self-mixed": ["--judge", "live", "--problems", "self-mixed"],
    "self": ["--judge", "live", "--problems", "self"],
    "self-proposer": ["--judge", "live", "--problems", "self", "--train-proposer"],
}
LABELS = {"none": "(a) no RL", "verifier": "(b) verifier reward", "frozen": "(c) self reward, frozen judge",
          "live": "(d) self reward, live judge (RLSR)", "self-mixed": "(e) self-proposed, earlier filter",
          "self": "(f) complete loop: self-proposed + witness + band", "self-proposer": "(g) (f) + proposer training"}
# per task: the self-reward conditions' goal (gain >= min_gain and >= share of the verifier's gain). The
# targets are the project's own: RLSR (Simonds et al., 2025) finds self reward reaching most of the
# verifier's gain, restated here as >= 80% of it (and, on Countdown, >= +15 points of held-out accuracy).
GOALS = {"countdown": dict(min_gain=0.15, share=0.8),
         "integration": dict(min_gain=None, share=0.8, verifier_gain=0.10)}  # and the verifier gains >= +10 points first
SELF_KEYS = ("self_share", "admitted_solvable", "trained_solvable", "witness_correct",
             "admitted_judge_precision")  # per-step logs of --problems self runs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (one run per condition each)")
    p.add_argument("--task", default="countdown", choices=sorted(GOALS), help="the task trained and evaluated")
    p.add_argument("--model", default="", help="start checkpoint (default: assets/tiny-<task>)")
    p.add_argument("--out", default="", help="output folder (default: runs/rlsr-experiment, "
                                             "runs/rlsr-<task> for another task)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one CPU thread each)")
    p.add_argument("--conditions", nargs="+", default=None, choices=list(CONDITIONS),
                   help="conditions to run (none, no RL, comes with any of them; default: all of them, "
                        "integration: verifier frozen live)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 steps, 16 held-out problems")
    p.add_argument("train_args", nargs=argparse.REMAINDER,
                   help="after --: extra train.py flags for every run (e.g. -- --steps 100 --kl-coef 0.01)")
    args = p.parse_args(argv)
    args.train_args = [a for a in args.train_args if a != "--"]
    if args.quick:
        args.train_args = ["--steps", "4", "--eval-interval", "2", "--eval-n", "16", "--prompts-per-step", "2",
                           "--group-size", "4", "--propose-n", "4"] + args.train_args
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    args.model = args.model or os.path.join(ROOT, "assets", f"tiny-{args.task}")
    args.out = args.out or os.path.join(ROOT, "runs", "rlsr-experiment" if args.task == "countdown"
                                        else f"rlsr-{args.task}")
    if not os.path.isdir(args.model):
        p.error(f"--model {args.model}: not a folder" + (" (build it: python experiments/build_tiny.py --task "
                                                         f"{args.task} --replace-assets)" if "assets" in args.model
                                                         else ""))
    if args.conditions is None:
        args.conditions = list(CONDITIONS) if args.task == "countdown" else ["verifier", "frozen", "live"]
    proposing = [c for c in args.conditions if c in ("self", "self-proposer")]
    if proposing and args.task != "countdown":
        p.error(f"--conditions {' '.join(proposing)}: self-proposed problems need proposals with a witness, "
                f"which only countdown has")
    return args


def run_train(name, seed, args) -> str:
    """One train.py run as a subprocess (one thread); returns its folder. A finished run is reused."""
    out = os.path.join(args.out, f"{name}-s{seed}")
    if os.path.exists(os.path.join(out, "done")):
        return out
    flags = CONDITIONS[name]
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--task", args.task, "--model", args.model,
           "--seed", str(seed), "--out", out, "--no-progress", *flags, *args.train_args]
    if os.path.exists(os.path.join(out, "config.json")):  # interrupted: continue it exactly
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--resume", out, "--no-progress"]
    os.makedirs(out, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.time()
    with open(os.path.join(out, "log.txt"), "a") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise SystemExit(f"error: run {out} failed (exit {code}); see {os.path.join(out, 'log.txt')}")
    with open(os.path.join(out, "done"), "w") as f:
        f.write(f"{time.time() - t0:.0f} s\n")
    print(f"  {name} seed {seed}: done in {time.time() - t0:.0f} s", flush=True)
    return out


def read_metrics(folder) -> list[dict]:
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def curves(lines) -> dict:
    """Held-out accuracy at each eval step, and the judge's counts summed over each eval window."""
    evals = [(m["step"], m["heldout_acc"]) for m in lines if "heldout_acc" in m]
    steps = [s for s, _ in evals]
    judge = []
    for lo, hi in zip(steps, steps[1:]):  # steps (lo, hi]
        n = {k: sum(m.get(f"judge_{k}") or 0 for m in lines if lo < m["step"] <= hi) for k in ("tp", "fp", "tn", "fn")}
        judge.append({"step": hi, **n, **rates(n)})
    reward = [(m["step"], m["reward_mean"], m["rollout_acc"]) for m in lines if "reward_mean" in m]
    own = {k: [m[k] for m in lines if m.get(k) is not None] for k in SELF_KEYS}  # --problems self runs
    return {"heldout": evals, "judge": judge if any(j["tp"] + j["fp"] + j["tn"] + j["fn"] for j in judge) else [],
            "reward": reward, **{k: sum(v) / len(v) for k, v in own.items() if v}}


def rates(n) -> dict:
    """Precision and recall of confusion counts, nan where undefined (nan drops out of mean_std)."""
    r = confusion_rates(n["tp"], n["fp"], n["tn"], n["fn"])
    return {k: float("nan") if r[k] is None else r[k] for k in ("precision", "recall")}


def mean_std(xs):
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1))


def summarise(runs: dict) -> dict:
    """runs: condition -> [curves per seed] -> per condition: final/peak accuracy and judge over the run."""
    out = {}
    for name, per_seed in runs.items():
        start = [c["heldout"][0][1] for c in per_seed]
        final = [c["heldout"][-1][1] for c in per_seed]
        peak = [max(a for _, a in c["heldout"]) for c in per_seed]
        gain = [f - s for f, s in zip(final, start)]
        row = {"seeds": len(per_seed), "start": mean_std(start), "final": mean_std(final), "peak": mean_std(peak),
               "gain": mean_std(gain), "gains": gain}
        if per_seed[0]["judge"]:
            n = {k: sum(j[k] for c in per_seed for j in c["judge"]) for k in ("tp", "fp", "tn", "fn")}
            row["judge"] = {**n, **rates(n)}
            first = [c["judge"][0] for c in per_seed]
            last = [c["judge"][-1] for c in per_seed]
            row["judge_first_window"] = {k: mean_std([j[k] for j in first]) for k in ("precision", "recall")}
            row["judge_last_window"] = {k: mean_std([j[k] for j in last]) for k in ("precision", "recall")}
        for k in SELF_KEYS:
            if any(k in c for c in per_seed):
                row[k] = mean_std([c.get(k, float("nan")) for c in per_seed])
        rewards = [c["reward"][-1][1] for c in per_seed if c["reward"]]
        if rewards:
            row["final_reward"] = mean_std(rewards)
        out[name] = row
    return out


def pct(ms):
    m, s = ms
    if math.isnan(m):
        return "–"
    return f"{100 * m:.1f}" + ("" if math.isnan(s) or s == 0 else f" ± {100 * s:.1f}")


def table(summary, args) -> str:
    """The markdown table; the self-proposed columns only when a condition proposes its problems."""
    proposing = any(k in r for r in summary.values() for k in ("self_share", "admitted_solvable"))
    head = ("| condition | seeds | held-out start | held-out final | peak | gain (points) | "
            "judge precision / recall on own samples (whole run; first -> last window) |")
    if proposing:
        head += " self-proposed share | admitted / trained problems solvable |"
    lines = [head, "|" + "---|" * head.count(" |")]
    for name, r in summary.items():
        j = "–"
        if "judge" in r:
            fw, lw = r["judge_first_window"], r["judge_last_window"]
            j = (f"{r['judge']['precision']:.2f} / {r['judge']['recall']:.2f} "
                 f"({fw['precision'][0]:.2f} / {fw['recall'][0]:.2f} -> {lw['precision'][0]:.2f} / {lw['recall'][0]:.2f})")
        line = (f"| {LABELS[name]} | {r['seeds']} | {pct(r['start'])} | {pct(r['final'])} | {pct(r['peak'])} | "
                f"{pct(r['gain'])} | {j} |")
        if proposing:
            share, admitted, trained = (pct(r[k]) if k in r else "–" for k in ("self_share", "admitted_solvable",
                                                                                  "trained_solvable"))
            line += f" {share} | {admitted if trained == '–' else f'{admitted} / {trained}'} |"
        lines.append(line)
    return "\n".join(lines)


def verdict(summary, task="countdown") -> list[str]:
    """The goals (GOALS[task]): self reward ((c), (d)) gains >= min_gain and >= share of (b)'s gain
    (integration: (b) itself gains >= +10 points); the complete loop ((f), (g)) too, and no
    collapse (final >= peak - 3 points), judge precision on its own rollouts >= 0.8, >= 90% of admitted
    problems solvable, >= 90% of problems self-proposed."""
    if "verifier" not in summary:
        return ["no verifier run: no goal to check"]
    goal = GOALS[task]
    base = summary["verifier"]["gain"][0]
    out = []
    if goal.get("verifier_gain") is not None:
        ok = base >= goal["verifier_gain"]
        out.append(f"{LABELS['verifier']}: gain {100 * base:+.1f} points -> "
                   f"goal (>= +{100 * goal['verifier_gain']:.0f}) " + ("met" if ok else "NOT met"))
    for name in ("frozen", "live", "self", "self-proposer"):
        if name not in summary:
            continue
        r, g = summary[name], summary[name]["gain"][0]
        checks = {f">= {goal['share']:.0%}": g >= goal["share"] * base}
        if goal.get("min_gain") is not None:
            checks = {f">= +{100 * goal['min_gain']:.0f}": g >= goal["min_gain"], **checks}
        if name.startswith("self"):
            checks.update({"no collapse": r["final"][0] >= r["peak"][0] - 0.03,
                           "judge precision >= 0.8": r.get("judge", {}).get("precision", 0) >= 0.8,
                           "solvable >= 90%": r.get("admitted_solvable", (0, 0))[0] >= 0.9,
                           "self-proposed >= 90%": r.get("self_share", (0, 0))[0] >= 0.9})
        meaningful = base > 0 and base >= (goal.get("verifier_gain") or 0)
        share = f"{g / base:.0%}" if meaningful else "n/a (the verifier's gain is below its goal)"
        missed = [k for k, ok in checks.items() if not ok]
        out.append(f"{LABELS[name]}: gain {100 * g:+.1f} points = {share} of the verifier's {100 * base:+.1f} -> "
                   f"goal ({', '.join(checks)}) " + ("met" if not missed else f"NOT met ({', '.join(missed)})"))
    return out


def plot(runs, path, task="countdown") -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e \".[plot]\"): no plot written")
        return False
    colors = {"none": "gray", "verifier": "black", "frozen": "tab:blue", "live": "tab:red", "self-mixed": "tab:orange",
              "self": "tab:green", "self-proposer": "tab:purple"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, per_seed in runs.items():
        steps = [s for s, _ in per_seed[0]["heldout"]]
        accs = [[c["heldout"][i][1] for c in per_seed] for i in range(len(steps))]
        m = [100 * sum(a) / len(a) for a in accs]
        ax1.plot(steps, m, marker="o", color=colors[name], label=LABELS[name])
        if len(per_seed) > 1:
            ax1.fill_between(steps, [100 * min(a) for a in accs], [100 * max(a) for a in accs],
                             color=colors[name], alpha=0.15)
        if per_seed[0]["judge"]:
            js = [s["step"] for s in per_seed[0]["judge"]]
            for key, style in (("precision", "-"), ("recall", "--")):
                vals = [mean_std([c["judge"][i][key] for c in per_seed])[0] for i in range(len(js))]
                ax2.plot(js, vals, style, marker=".", color=colors[name], label=f"{name} {key}")
    ax1.set(xlabel="RL step", ylabel="held-out accuracy (%, greedy)",
            title=f"{task.capitalize()}, tiny model (mean, min-max band)")
    ax2.set(xlabel="RL step", ylabel="vs the verifier", ylim=(0, 1),
            title="judge on the policy's own samples (per eval window)")
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    jobs = [(name, seed) for seed in args.seeds for name in args.conditions]
    print(f"{len(jobs)} runs, {args.jobs} at a time, in {args.out}", flush=True)
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        folders = list(pool.map(lambda job: run_train(*job, args), jobs))
    runs: dict[str, list] = {"none": []}
    for (name, _), folder in zip(jobs, folders):
        runs.setdefault(name, []).append(curves(read_metrics(folder)))
    for c in runs[args.conditions[0]]:  # (a) no RL: the start model on the same held-out problems at every step
        start = c["heldout"][0][1]
        runs["none"].append({"heldout": [(s, start) for s, _ in c["heldout"]], "judge": [], "reward": []})
    summary = summarise(runs)
    md = table(summary, args)
    goal = verdict(summary, args.task)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"task": args.task, "seeds": args.seeds, "train_args": args.train_args, "summary": summary,
                   "curves": runs, "goal": goal, "seconds": time.time() - t0}, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n\n" + "\n".join(f"- {g}" for g in goal) + "\n")
    print(md)
    print("\n".join(goal))
    if plot(runs, os.path.join(args.out, "rlsr.png"), args.task):
        print(f"plot: {os.path.join(args.out, 'rlsr.png')}")
    print(f"results: {args.out}/results.json, results.md ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
