"""eval.py — measure a checkpoint: accuracy by the formal verifier, and the model as a judge of itself.

    python eval.py --task countdown --model DIR [--samples k] [--n N] [--out FILE]
    python eval.py --task countdown --model BEFORE AFTER          # two folders side by side

For each of N held-out problems the model samples k answers: accuracy is mean@k (the fraction of
all samples the verifier accepts) and pass@k (the fraction of problems with at least one accepted
sample); format rate is the fraction of samples with an answer tag; lengths are generated tokens.
Then the same model judges each of its answered samples (the judge prompt of train.py's
self-reward) and its verdicts are compared with the verifier: TP/FP/TN/FN (positive = "correct"),
precision, recall, accuracy. A table goes to stdout and the numbers to a JSON file.

Also home of the checkpoint helpers train.py shares: `load_checkpoint`, `read_meta`, `DEFAULT_MODEL`.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, not spin: 4-60x faster on a busy CPU

import argparse  # noqa: E402  (the line above must run before torch loads OpenMP)
import json
import sys

import torch

import sample
import tasks
from judge import Judge, agreement, decode_completion, passed
from model import CheckpointError, Qwen, QwenConfig, Tokenizer

# the embedded tiny model (built by the README's bootstrap command); used when no --model is given
DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tiny-countdown")
META_FILE = "nano_rlsr.json"  # optional, in a model folder: {"prompt_style": ..., "task": ...}


# -----------------------------------------------------------------------------
# Checkpoint folders


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
    """A cheap look before loading: CheckpointError (one line) when `path` is no checkpoint folder
    (for the default model: that it is not built yet and how to pass another)."""
    if not os.path.isdir(path):
        if os.path.abspath(path) == DEFAULT_MODEL:
            raise CheckpointError(f"the default model {DEFAULT_MODEL} is not built yet (see the README for the "
                                  f"command that builds it); pass --model DIR with a Qwen checkpoint folder")
        raise CheckpointError(f"{path}: no such folder")
    QwenConfig.from_json(os.path.join(path, "config.json"))
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise CheckpointError(f"{path}: no tokenizer.json (a checkpoint folder needs its tokenizer)")


def load_checkpoint(path: str, device="cpu", dtype=torch.float32):
    """-> (model, tokenizer, meta) from a checkpoint folder; CheckpointError (one line) otherwise."""
    check_model_dir(path)
    model = Qwen.from_pretrained(path, dtype=dtype, device=device)
    tokenizer = Tokenizer.from_pretrained(path)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{model.config.vocab_size}")
    return model, tokenizer, read_meta(path)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    return torch.device(name)


# -----------------------------------------------------------------------------
# Evaluation


def evaluate(model, tokenizer, task, problems, samples: int = 1, temperature: float = 1.0,
             max_new_tokens: int = 256, style: str = "full", seed: int = 0, judge: Judge | None = None,
             batch_size: int = 0) -> dict:
    """Sample `samples` answers per problem, verify them; with a judge, score its agreement."""
    if not problems:
        raise ValueError("empty problem set")
    prompts = [tokenizer.encode_chat(task.prompt(p, style=style)) for p in problems]
    rows_problem, answers, lengths, truncated = [], [], [], []
    chunk = batch_size or len(prompts)
    for start in range(0, len(prompts), chunk):
        out = sample.generate(model, prompts[start:start + chunk], n=samples, max_new_tokens=max_new_tokens,
                              temperature=temperature, stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
                              seed=seed + start)
        for i in range(len(out.finish_reasons)):
            rows_problem.append(problems[start + i // samples])
            answers.append(task.extract_answer(decode_completion(tokenizer, out.completion(i))))
            lengths.append(int(out.lengths[i]))
            truncated.append(out.finish_reasons[i] == "length")
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
    short = [os.path.basename(os.path.normpath(n)) for n in names]
    if len(set(short)) < len(short):  # e.g. two runs' ckpt folders: show their parents too
        short = [os.path.join(*os.path.normpath(n).split(os.sep)[-2:]) for n in names]
    names = short
    width = max(len(r[0]) for r in rows) + 2
    cols = [max(len(n), *(len(r[1][j]) for r in rows)) + 2 for j, n in enumerate(names)]
    lines = ["".ljust(width) + "".join(n.rjust(c) for n, c in zip(names, cols))]
    lines += [label.ljust(width) + "".join(v.rjust(c) for v, c in zip(vals, cols)) for label, vals in rows]
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (the full usage is what --help is for); train.py uses it too."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to each flag's help unless the help already says what the default is."""

    def _get_help_string(self, action):
        return action.help if "default" in action.help else super()._get_help_string(action)


def main(argv=None):
    ap = Parser(description="Measure checkpoints: verifier accuracy (mean@k, pass@k), format "
                                             "rate, lengths, and the model's agreement as a judge of its samples.",
                                 formatter_class=DefaultsHelp)
    ap.add_argument("--task", default="countdown", help="task name (a module in tasks/)")
    ap.add_argument("--model", nargs="+", default=[DEFAULT_MODEL], metavar="DIR",
                    help="checkpoint folder(s); two or more are compared side by side "
                         "(default: the embedded tiny model, assets/tiny-countdown)")
    ap.add_argument("--samples", type=int, default=1, metavar="K", help="answers sampled per problem (k of mean@k, pass@k)")
    ap.add_argument("--n", type=int, default=100, help="number of held-out problems")
    ap.add_argument("--problems", default="", metavar="FILE.jsonl",
                    help="problems to use, one JSON object a line (default: --n generated test-split problems)")
    ap.add_argument("--split", default="test", choices=["train", "test"], help="split of generated problems")
    ap.add_argument("--seed", type=int, default=0, help="seed of the problems and the sampling")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="longest answer, in tokens")
    ap.add_argument("--judge-samples", type=int, default=1, help="verdicts per judged answer (0: skip the judge)")
    ap.add_argument("--judge-temperature", type=float, default=1.0, help="judge sampling temperature")
    ap.add_argument("--judge-max-new-tokens", type=int, default=256, help="longest judge output, in tokens")
    ap.add_argument("--prompt-style", default="", metavar="STYLE",
                    help="prompt style (default: the model folder's nano_rlsr.json, else full)")
    ap.add_argument("--batch-size", type=int, default=64, help="prompts per generate call (0: all at once)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--out", default="", metavar="FILE",
                    help="JSON results file (default: eval-<task>.json in the current folder)")
    args = ap.parse_args(argv)
    for name in ("samples", "n"):
        if getattr(args, name) < 1 and not (name == "n" and args.problems):
            ap.error(f"--{name} must be >= 1 (an empty problem set has nothing to measure)")
    for name in ("max_new_tokens", "judge_max_new_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.temperature < 0 or args.judge_temperature < 0 or args.judge_samples < 0:
        ap.error("temperatures and --judge-samples must be >= 0")
    try:
        task = tasks.get(args.task)
        device = pick_device(args.device)
        # task knobs the (first) model folder asks for, e.g. the tiny model's smaller numbers
        difficulty = read_meta(args.model[0]).get("difficulty", {}) if os.path.isdir(args.model[0]) else {}
        problems = read_problems(args.problems) if args.problems else \
            task.make_problems(args.n, seed=args.seed, split=args.split, **difficulty)
    except (ValueError, OSError, CheckpointError) as e:
        ap.error(str(e))
    if not problems:
        ap.error("empty problem set: nothing to evaluate")

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results = []
    for path in args.model:
        try:
            model, tok, meta = load_checkpoint(path, device, dtype)
        except CheckpointError as e:
            sys.exit(f"error: {e}")
        limit = model.config.max_position_embeddings
        if max(args.max_new_tokens, args.judge_max_new_tokens) >= limit:
            sys.exit(f"error: {path}: the model has only {limit} positions; lower --max-new-tokens "
                     f"and --judge-max-new-tokens")
        style = args.prompt_style or meta.get("prompt_style", "full")
        judge = None
        if args.judge_samples:
            judge = Judge(model, tok, task, samples=args.judge_samples, temperature=args.judge_temperature,
                          max_new_tokens=args.judge_max_new_tokens, style=style, batch_size=args.batch_size)
        r = evaluate(model, tok, task, problems, samples=args.samples, temperature=args.temperature,
                     max_new_tokens=args.max_new_tokens, style=style, seed=args.seed, judge=judge,
                     batch_size=args.batch_size)
        results.append({"model": os.path.abspath(path), "prompt_style": style, **r})
        del model

    print(format_table(args.model, results))
    out = args.out or f"eval-{args.task}.json"
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"task": args.task, "seed": args.seed, "temperature": args.temperature,
                   "results": results}, f, indent=2)
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
