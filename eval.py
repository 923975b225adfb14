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

train.py's held-out eval calls `evaluate` / `evaluate_self_correct`; `verify_all` is the one way
the formal verifier is called on a batch.
"""

import quiet_threads  # noqa: F401  (first: OpenMP reads its settings when torch loads)

import argparse
import json
import os
import sys

import torch

import sample
import tasks
from checkpoint import load_checkpoint, read_meta
from config import Parser, UsageError, check_task, default_model
from distributed import pick_device
from hub import resolve_model
from judge import Judge, agreement, decode_completion, passed
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
    texts, lengths, truncated = sample_texts(model, tokenizer, prompts, max_new_tokens, temperature, seed,
                                             batch_size, n=samples, finish=True)
    rows_problem = [problems[i // samples] for i in range(len(texts))]
    answers = [task.extract_answer(t) for t in texts]
    correct = verify_all(task, rows_problem, answers)
    per_problem = [correct[i * samples:(i + 1) * samples] for i in range(len(problems))]
    n = len(answers)
    result = {"problems": len(problems), "samples": samples,
              f"mean@{samples}": sum(correct) / n,
              f"pass@{samples}": sum(any(c) for c in per_problem) / len(problems),
              "format_rate": sum(a is not None for a in answers) / n,
              "mean_length": sum(lengths) / n,
              "truncated_rate": sum(truncated) / n}
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


def sample_texts(model, tokenizer, prompts, max_new_tokens, temperature, seed, batch_size=0, n=1, finish=False):
    """n completions per prompt (token-id lists), batch_size prompts per generate call (0: all) ->
    (texts without the stop token, generated lengths[, truncated flags with finish=True]),
    len(prompts) * n each, row i from prompt i // n. Chunk c is seeded seed + its first prompt's index."""
    texts, lengths, truncated = [], [], []
    chunk = batch_size or len(prompts)
    for start in range(0, len(prompts), chunk):
        out = sample.generate(model, prompts[start:start + chunk], n=n, max_new_tokens=max_new_tokens,
                              temperature=temperature, stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
                              seed=seed + start)
        for i in range(len(out.finish_reasons)):
            texts.append(decode_completion(tokenizer, out.completion(i)))
            lengths.append(int(out.lengths[i]))
            truncated.append(out.finish_reasons[i] == "length")
    return (texts, lengths, truncated) if finish else (texts, lengths)


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
    if intrinsic:
        prompts = [tokenizer.encode_chat(task.prompt(p, style=style)) for p in problems]
        attempts, lengths = sample_texts(model, tokenizer, prompts, max_new_tokens, temperature, seed, batch_size)
        first = [task.extract_answer(t) for t in attempts]
        prompts = [tokenizer.encode_chat(tasks.intrinsic_prompt(task, p, t, a or "", style=style))
                   for p, t, a in zip(problems, attempts, first)]
        seconds, lengths2 = sample_texts(model, tokenizer, prompts, max_new_tokens, temperature, seed + 1, batch_size)
        final = [task.extract_answer(t) or a for t, a in zip(seconds, first)]
        verdicts, attempts_n = None, [2] * len(problems)
        lengths = [a + b for a, b in zip(lengths, lengths2)]
    else:
        prompts = [tokenizer.encode_chat(tasks.self_correct_prompt(task, p, style=style)) for p in problems]
        texts, lengths = sample_texts(model, tokenizer, prompts, max_new_tokens, temperature, seed, batch_size)
        trajs = [tasks.parse_trajectory(t, max_turns, task.extract_answer) for t in texts]
        first, final = [t.first for t in trajs], [t.final for t in trajs]
        verdicts, attempts_n = [t.first_verdict for t in trajs], [len(t.turns) for t in trajs]
    first_ok, final_ok = verify_all(task, problems, first), verify_all(task, problems, final)
    result = self_correct_metrics(first_ok, final_ok, verdicts)
    result.update(mode="intrinsic" if intrinsic else "self_rewarding", max_turns=max_turns,
                  mean_attempts=sum(attempts_n) / len(problems), mean_length=sum(lengths) / len(problems))
    return result


def verify_all(task, problems, answers) -> list[bool]:
    """The formal verifier on each (problem, answer); a missing answer is wrong without a call."""
    todo = [i for i, a in enumerate(answers) if a is not None]
    if hasattr(task, "verify_many"):
        verdicts = task.verify_many([problems[i] for i in todo], [answers[i] for i in todo])
    else:
        verdicts = [task.verify(problems[i], answers[i]) for i in todo]
    correct = [False] * len(answers)
    for i, v in zip(todo, verdicts):
        correct[i] = bool(v)
    return correct


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


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to each flag's help unless the help already says what the default is."""

    def _get_help_string(self, action):
        return action.help if "default" in action.help else super()._get_help_string(action)


# answer and judge budgets when neither a flag nor the model folder's train_defaults sets them
EVAL_DEFAULTS = dict(max_new_tokens=256, judge_max_new_tokens=256, judge_temperature=1.0)


def budgets(args, meta) -> dict:
    """EVAL_DEFAULTS' settings for one model: the flag where given, else the model folder's RL setting
    (its train_defaults, as train.py reads them), else EVAL_DEFAULTS."""
    folder = meta.get("train_defaults", {})
    return {k: getattr(args, k) if getattr(args, k) is not None else folder.get(k, v) for k, v in EVAL_DEFAULTS.items()}


def parse_args(argv=None):
    """The parser and its parsed, checked flags (a bad flag ends the run with one line)."""
    ap = Parser(description="Measure checkpoints: verifier accuracy (mean@k, pass@k), format "
                            "rate, lengths, and the model's agreement as a judge of its samples.",
                formatter_class=DefaultsHelp)
    ap.add_argument("--task", default="countdown", help="task name (a module in tasks/)")
    ap.add_argument("--model", nargs="+", default=[], metavar="DIR|ID",
                    help="model folder(s) or hub ids org/name[@revision]; two or more are compared side by side "
                         "(default: assets/tiny-<task>, the task's embedded model)")
    ap.add_argument("--samples", type=int, default=1, metavar="K", help="answers sampled per problem (k of mean@k, pass@k)")
    ap.add_argument("--n", type=int, default=None, help="number of problems (default: 100; --split bee: the whole set)")
    ap.add_argument("--problems", default="", metavar="FILE.jsonl",
                    help="problems to use, one JSON object a line (default: --n generated test-split problems)")
    ap.add_argument("--split", default="test", choices=["train", "test", "bee"],
                    help="split of generated problems, or bee: integration's fixed Integration Bee-style set")
    ap.add_argument("--seed", type=int, default=0, help="seed of the problems and the sampling")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="longest answer, in tokens (default: the model folder's RL setting, else 256)")
    ap.add_argument("--judge-samples", type=int, default=1, help="verdicts per judged answer (0: skip the judge)")
    ap.add_argument("--judge-temperature", type=float, default=None,
                    help="judge sampling temperature (default: the model folder's RL setting, else 1.0)")
    ap.add_argument("--judge-max-new-tokens", type=int, default=None,
                    help="longest judge output, in tokens (default: the model folder's RL setting, else 256)")
    ap.add_argument("--prompt-style", default="", metavar="STYLE",
                    help="prompt style (default: the model folder's nano_rlsr.json, else full)")
    ap.add_argument("--self-correct", action="store_true",
                    help="self-rewarding correction metrics instead: one answer -> [VERIFY] -> correction "
                         "trajectory per problem (turn-1/final accuracy, deltas, verification accuracy)")
    ap.add_argument("--max-turns", type=int, default=2,
                    help="--self-correct: corrections allowed after the first answer")
    ap.add_argument("--intrinsic", action="store_true",
                    help="--self-correct: the intrinsic baseline (asked in a second user turn to correct its answer)")
    ap.add_argument("--batch-size", type=int, default=64, help="prompts per generate call (0: all at once)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--out", default="", metavar="FILE",
                    help="JSON results file (default: eval-<task>.json in the current folder)")
    args = ap.parse_args(argv)
    if args.split == "bee" and args.task != "integration":
        ap.error(f"--split bee: only the integration task has a Bee set, not {args.task}")
    if args.n is None:
        args.n = len(tasks.get("integration").BEE) if args.split == "bee" else 100
    for name in ("samples", "n"):
        if getattr(args, name) < 1 and not (name == "n" and args.problems):
            ap.error(f"--{name} must be >= 1 (an empty problem set has nothing to measure)")
    for name in ("max_new_tokens", "judge_max_new_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.temperature < 0 or (args.judge_temperature or 0) < 0 or args.judge_samples < 0:
        ap.error("temperatures and --judge-samples must be >= 0")
    if args.max_turns < 0:
        ap.error("--max-turns must be >= 0")
    if args.intrinsic and not args.self_correct:
        ap.error("--intrinsic is a --self-correct baseline: pass --self-correct too")
    return ap, args


def measure(path, args, task, problems, device, dtype) -> dict:
    """One model's results row: its budgets (budgets()), prompt style and the metrics."""
    try:
        model, tok, meta = load_checkpoint(path, device, dtype)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    settings = budgets(args, meta)
    limit = model.config.max_position_embeddings
    if max(settings["max_new_tokens"], settings["judge_max_new_tokens"]) >= limit:
        sys.exit(f"error: {path}: the model has only {limit} positions; lower --max-new-tokens "
                 f"and --judge-max-new-tokens")
    style = args.prompt_style or meta.get("prompt_style", "full")
    if args.self_correct:  # the model's own [VERIFY] verdicts are the judge here
        r = evaluate_self_correct(model, tok, task, problems, max_turns=args.max_turns,
                                  temperature=args.temperature, max_new_tokens=settings["max_new_tokens"],
                                  style=style, seed=args.seed, batch_size=args.batch_size, intrinsic=args.intrinsic)
    else:
        judge = None
        if args.judge_samples:
            judge = Judge(model, tok, task, samples=args.judge_samples, temperature=settings["judge_temperature"],
                          max_new_tokens=settings["judge_max_new_tokens"], style=style, batch_size=args.batch_size)
        r = evaluate(model, tok, task, problems, samples=args.samples, temperature=args.temperature,
                     max_new_tokens=settings["max_new_tokens"], style=style, seed=args.seed, judge=judge,
                     batch_size=args.batch_size)
    return {"model": os.path.abspath(path), "prompt_style": style, **settings, **r}


def main(argv=None):
    ap, args = parse_args(argv)
    try:
        task = tasks.get(args.task)
        device = pick_device(args.device)
        # task knobs the (first) model folder asks for, e.g. the tiny model's smaller numbers
        names = args.model or [default_model(args.task)]
        args.model = [resolve_model(p) for p in names]  # hub ids -> cached folders
        for path in filter(os.path.isdir, args.model):  # (a missing folder is reported when it loads)
            check_task(path, args.task)
        difficulty = read_meta(args.model[0]).get("difficulty", {}) if os.path.isdir(args.model[0]) else {}
        problems = read_problems(args.problems) if args.problems else \
            task.make_problems(args.n, seed=args.seed, split=args.split, **difficulty)
    except (ValueError, OSError, CheckpointError, UsageError) as e:
        ap.error(str(e))
    if not problems:
        ap.error("empty problem set: nothing to evaluate")

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results = [measure(path, args, task, problems, device, dtype) for path in args.model]
    print((format_self_correct_table if args.self_correct else format_table)(names, results))
    out = args.out or f"eval-{args.task}.json"
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"task": args.task, "seed": args.seed, "temperature": args.temperature,
                   "self_correct": args.self_correct, "results": results}, f, indent=2)
    print(f"wrote {out}")


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
