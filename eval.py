"""eval.py — measure a checkpoint: accuracy by the formal verifier, and the model as a judge of itself.

    python eval.py --task countdown --model DIR [--samples k] [--n N] [--out FILE]
    python eval.py --task countdown --model BEFORE AFTER          # two folders side by side
    python eval.py --task countdown --model DIR --self-correct [--max-turns 2] [--intrinsic]

For each of N held-out problems the model samples k answers: accuracy is mean@k (the fraction of
all samples the verifier accepts) and pass@k (the fraction of problems with at least one accepted
sample); format rate is the fraction of samples with an answer tag; lengths are generated tokens.
Then the same model judges each of its answered samples (the judge prompt of train.py's
self-reward) and its verdicts are compared with the verifier: TP/FP/TN/FN (positive = "correct"),
precision, recall, accuracy. A table goes to stdout and the numbers to a JSON file.

--self-correct measures self-rewarding correction instead (Xiong et al., 2025; docs/self-correction.md defines
each metric): per problem one trajectory, answer -> [VERIFY] correct|wrong -> corrected answer ...;
turn-1 and final accuracy, their difference, the wrong->right and right->wrong fractions, and how
often the model's own verdict on its first answer is right. --intrinsic: the untrained baseline.

train.py's held-out eval calls `evaluate` / `evaluate_self_correct`; they sample through
`sample.completions` and verify through `tasks.verify_all`.
"""

import quiet_threads  # noqa: F401  (first: OpenMP reads its settings when torch loads)

import json
import os
import sys

import sample
import tasks
from checkpoint import check_lengths, load_checkpoint
from config import EVAL_BUDGETS, EvalConfig, UsageError, make_config, parse_flags
from distributed import compute_dtype, pick_device
from judge import Judge, agreement, passed
from model import CheckpointError


# -----------------------------------------------------------------------------
# Evaluation


def evaluate(model, tokenizer, task, problems, samples: int = 1, temperature: float = 1.0,
             max_new_tokens: int = 256, style: str = "full", seed: int = 0, judge: Judge | None = None,
             batch_size: int = 0) -> dict:
    """Sample `samples` answers per problem, verify them; with a judge, score its agreement."""
    if not problems:
        raise ValueError("empty problem set")
    prompts = [tokenizer.encode_chat(task.prompt(p, style=style)) for p in problems]
    done = sample.completions(model, tokenizer, prompts, n=samples, max_new_tokens=max_new_tokens,
                              temperature=temperature, seed=seed, batch_size=batch_size)
    rows_problem = [problems[i // samples] for i in range(len(done))]
    answers = [task.extract_answer(c.text) for c in done]
    correct = tasks.verify_all(task, rows_problem, answers)
    per_problem = [correct[i * samples:(i + 1) * samples] for i in range(len(problems))]
    n = len(answers)
    result = {"problems": len(problems), "samples": samples,
              f"mean@{samples}": sum(correct) / n,
              f"pass@{samples}": sum(any(c) for c in per_problem) / len(problems),
              "format_rate": sum(a is not None for a in answers) / n,
              "mean_length": sum(len(c.ids) for c in done) / n,
              "truncated_rate": sum(c.truncated for c in done) / n}
    if judge is not None:
        answered = [i for i, a in enumerate(answers) if a is not None and str(a).strip()]
        rewards, _ = judge.score([rows_problem[i] for i in answered], [answers[i] for i in answered],
                                 seed=seed + 1_000_003)
        stats = agreement([passed(r) for r in rewards], [correct[i] for i in answered])
        result.update({f"judge_{k}": v for k, v in stats.items()})
        result["judge_judged"] = len(answered)
    return result


# -----------------------------------------------------------------------------
# Self-rewarding correction (Xiong et al., 2025): answer -> [VERIFY] -> correct, up to max_turns times


def self_correct_metrics(first_correct, final_correct, first_verdicts=None) -> dict:
    """The paper's metrics over N trajectories (lists of N bools; verdicts "correct"/"wrong"/None).

    turn1_acc / final_acc: accuracy of the first / final answer; delta_t1_t2 = final - turn 1;
    delta_i2c / delta_c2i: fraction of problems whose first answer is wrong and final right / right
    and final wrong (so delta_t1_t2 = delta_i2c - delta_c2i); verify_acc_correct / _wrong: of the
    first answers that are right / wrong, the fraction the model's own first verdict calls
    correct / wrong (no verdict counts as a miss; None without verdicts, e.g. the intrinsic baseline).
    """
    n = len(first_correct)
    if n == 0 or len(final_correct) != n or (first_verdicts is not None and len(first_verdicts) != n):
        raise ValueError("self_correct_metrics: need equally long, non-empty lists")
    pairs = list(zip(first_correct, final_correct))
    out = {"n": n, "turn1_acc": sum(first_correct) / n, "final_acc": sum(final_correct) / n,
           "delta_i2c": sum(not a and b for a, b in pairs) / n, "delta_c2i": sum(a and not b for a, b in pairs) / n}
    out["delta_t1_t2"] = out["final_acc"] - out["turn1_acc"]
    out["verify_acc_correct"] = out["verify_acc_wrong"] = out["verified_rate"] = None
    if first_verdicts is not None:
        on_right = [v for c, v in zip(first_correct, first_verdicts) if c]
        on_wrong = [v for c, v in zip(first_correct, first_verdicts) if not c]
        out["verify_acc_correct"] = sum(v == "correct" for v in on_right) / len(on_right) if on_right else None
        out["verify_acc_wrong"] = sum(v == "wrong" for v in on_wrong) / len(on_wrong) if on_wrong else None
        out["verified_rate"] = sum(v is not None for v in first_verdicts) / n  # first attempts given a verdict
    return out


def evaluate_self_correct(model, tokenizer, task, problems, max_turns: int = 2, temperature: float = 0.0,
                          max_new_tokens: int = 256, style: str = "full", seed: int = 0, batch_size: int = 0,
                          intrinsic: bool = False) -> dict:
    """One trajectory per problem -> self_correct_metrics plus mean attempts and length.

    Self-rewarding (default): one completion in the [VERIFY] format (tasks.self_correct_prompt),
    cut by tasks.parse_trajectory at the first "[VERIFY] correct" or after max_turns corrections.
    intrinsic: the baseline without training for it: the plain solver prompt, then a second user turn
    asking the model to review and correct its answer (tasks.intrinsic_prompt); the final answer is
    the second turn's answer, or the first one kept when the second turn gives none.
    """
    if not problems:
        raise ValueError("empty problem set")
    settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
    if intrinsic:
        prompts = [tokenizer.encode_chat(task.prompt(p, style=style)) for p in problems]
        attempts = sample.completions(model, tokenizer, prompts, seed=seed, **settings)
        first = [task.extract_answer(c.text) for c in attempts]
        prompts = [tokenizer.encode_chat(tasks.intrinsic_prompt(task, p, c.text, a or "", style=style))
                   for p, c, a in zip(problems, attempts, first)]
        seconds = sample.completions(model, tokenizer, prompts, seed=seed + 1, **settings)
        final = [task.extract_answer(c.text) or a for c, a in zip(seconds, first)]
        verdicts, attempts_n = None, [2] * len(problems)
        lengths = [len(a.ids) + len(b.ids) for a, b in zip(attempts, seconds)]
    else:
        prompts = [tokenizer.encode_chat(tasks.self_correct_prompt(task, p, style=style)) for p in problems]
        done = sample.completions(model, tokenizer, prompts, seed=seed, **settings)
        trajs = [tasks.parse_trajectory(c.text, max_turns, task.extract_answer) for c in done]
        first, final = [t.first for t in trajs], [t.final for t in trajs]
        verdicts, attempts_n = [t.first_verdict for t in trajs], [len(t.turns) for t in trajs]
        lengths = [len(c.ids) for c in done]
    first_ok, final_ok = tasks.verify_all(task, problems, first), tasks.verify_all(task, problems, final)
    result = self_correct_metrics(first_ok, final_ok, verdicts)
    result.update(mode="intrinsic" if intrinsic else "self_rewarding", max_turns=max_turns,
                  mean_attempts=sum(attempts_n) / len(problems), mean_length=sum(lengths) / len(problems))
    return result


# -----------------------------------------------------------------------------
# CLI


def format_table(names, results) -> str:
    """Rows of metrics, one column per model."""
    k = results[0]["samples"]
    num = lambda x, spec=".3f": "-" if x is None else format(x, spec)  # noqa: E731
    rows = [("problems", [str(r["problems"]) for r in results]),
            (f"accuracy mean@{k}", [num(r[f"mean@{k}"]) for r in results]),
            (f"pass@{k}", [num(r[f"pass@{k}"]) for r in results]),
            ("format rate", [num(r["format_rate"]) for r in results]),
            ("mean length", [num(r["mean_length"], ".1f") for r in results]),
            ("truncated rate", [num(r["truncated_rate"]) for r in results])]
    if "judge_tp" in results[0]:
        rows.append(("judge TP/FP/TN/FN", ["/".join(str(r[f"judge_{c}"]) for c in ("tp", "fp", "tn", "fn"))
                                           for r in results]))
        rows += [(f"judge {c}", [num(r[f"judge_{c}"]) for r in results]) for c in ("precision", "recall", "accuracy")]
    return render_table(names, rows)


SELF_CORRECT_ROWS = [("problems", "n", "d"), ("turn-1 accuracy", "turn1_acc", ".3f"),
                     ("final accuracy", "final_acc", ".3f"), ("delta(t1, t2)", "delta_t1_t2", "+.3f"),
                     ("delta i->c", "delta_i2c", ".3f"), ("delta c->i", "delta_c2i", ".3f"),
                     ("verify acc on correct", "verify_acc_correct", ".3f"),
                     ("verify acc on wrong", "verify_acc_wrong", ".3f"),
                     ("mean attempts", "mean_attempts", ".2f"), ("mean length", "mean_length", ".1f")]


def format_self_correct_table(names, results) -> str:
    """The self-correction metrics, one column per model ("-" where a metric does not apply)."""
    rows = [(label, ["-" if r.get(key) is None else format(r[key], spec) for r in results])
            for label, key, spec in SELF_CORRECT_ROWS]
    return render_table(names, rows)


def render_table(names, rows) -> str:
    """rows [(label, [value text per model])] under a header of short model names."""
    short = [os.path.basename(os.path.normpath(n)) for n in names]
    if len(set(short)) < len(short):  # e.g. two runs' ckpt folders: show their parents too
        short = [os.path.join(*os.path.normpath(n).split(os.sep)[-2:]) for n in names]
    names = short
    width = max(len(r[0]) for r in rows) + 2
    cols = [max(len(n), *(len(r[1][j]) for r in rows)) + 2 for j, n in enumerate(names)]
    lines = ["".ljust(width) + "".join(n.rjust(c) for n, c in zip(names, cols))]
    lines += [label.ljust(width) + "".join(v.rjust(c) for v, c in zip(vals, cols)) for label, vals in rows]
    return "\n".join(lines)


DESCRIPTION = ("eval.py — measure checkpoints: verifier accuracy (mean@k, pass@k), format rate, lengths,\n"
               "and the model's agreement as a judge of its samples.")


def measure(cfg, task, problems, device) -> dict:
    """One model's results row: its budgets and prompt style (its config's) and the metrics."""
    try:
        model, tok, _ = load_checkpoint(cfg.model, device, compute_dtype("auto", device))
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    try:
        check_lengths(model, max_new_tokens=cfg.max_new_tokens, judge_max_new_tokens=cfg.judge_max_new_tokens)
    except UsageError as e:
        sys.exit(f"error: {cfg.model}: {e}")
    if cfg.self_correct:  # the model's own [VERIFY] verdicts are the judge here
        r = evaluate_self_correct(model, tok, task, problems, max_turns=cfg.max_turns, temperature=cfg.temperature,
                                  max_new_tokens=cfg.max_new_tokens, style=cfg.prompt_style, seed=cfg.seed,
                                  batch_size=cfg.batch_size, intrinsic=cfg.intrinsic)
    else:
        judge = None
        if cfg.judge_samples:
            judge = Judge(model, tok, task, samples=cfg.judge_samples, temperature=cfg.judge_temperature,
                          max_new_tokens=cfg.judge_max_new_tokens, style=cfg.prompt_style, batch_size=cfg.batch_size)
        r = evaluate(model, tok, task, problems, samples=cfg.samples, temperature=cfg.temperature,
                     max_new_tokens=cfg.max_new_tokens, style=cfg.prompt_style, seed=cfg.seed, judge=judge,
                     batch_size=cfg.batch_size)
    return {"model": cfg.model, "prompt_style": cfg.prompt_style, **{k: getattr(cfg, k) for k in EVAL_BUDGETS}, **r}


def main(argv=None):
    parser, given = parse_flags(EvalConfig, argv, prog="eval.py", description=DESCRIPTION)
    names = given.pop("model", None) or [""]  # "": the task's embedded model
    try:  # one config per model: each takes its own folder's budgets and prompt style
        configs = [make_config(EvalConfig, **given, model=name) for name in names]
        cfg = configs[0]  # the settings all models share, and the first folder's task knobs
        task, device = tasks.get(cfg.task), pick_device(cfg.device)
        problems = read_problems(cfg.problems) if cfg.problems else \
            task.make_problems(cfg.n, seed=cfg.seed, split=cfg.split, **cfg.difficulty)
    except (ValueError, OSError, UsageError) as e:
        parser.error(str(e))
    if not problems:
        parser.error("empty problem set: nothing to evaluate")

    results = [measure(c, task, problems, device) for c in configs]
    shown = [name or c.model for name, c in zip(names, configs)]  # hub ids as given, not their cache folders
    print((format_self_correct_table if cfg.self_correct else format_table)(shown, results))
    if os.path.dirname(cfg.out):
        os.makedirs(os.path.dirname(cfg.out), exist_ok=True)
    with open(cfg.out, "w") as f:
        json.dump({"task": cfg.task, "seed": cfg.seed, "temperature": cfg.temperature,
                   "self_correct": cfg.self_correct, "results": results}, f, indent=2)
    print(f"wrote {cfg.out}")


def read_problems(path: str) -> list[dict]:
    problems = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    problems.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({e})") from None
    return problems


if __name__ == "__main__":
    main()
