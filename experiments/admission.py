"""How the policy's own judge admits its own Countdown proposals (the admission step of --problems self, measured).

    python experiments/admission.py                         # the shipped model, 400 proposals
    python experiments/admission.py --model DIR --n 800

The model writes n proposals at T=1 (three held-out problems shown, as build_tiny.py measures
them); its greedy judge, on the judge prompt RL uses, admits a proposal when it passes the witness.
The verifier only measures here. Printed as one JSON line:
  proposals   valid proposals, right witnesses, admitted, admitted problems that are solvable, and
              the admitted wrong witnesses split into wrong numbers / wrong value
  judge_text  the judge's own lines on every witness it saw: "uses A need B ok|no" where its two
              written lists differ or agree, and "X=T yes" / "X!=T no" where its X and T differ or
              agree, each with how often the decision after them was wrong; its copies of the lists
  commuted    admission when the judge must also pass the witness with + and * operands swapped
  band        the admitted problems solved G times at T=1 and judged: for each learnability band,
              the problems it keeps, their solvable share and the judge's precision on their rollouts
"""

import argparse
import json
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import quiet_threads  # noqa: E402,F401  (before torch: idle OpenMP threads sleep)
import sample  # noqa: E402
import tasks  # noqa: E402
from checkpoint import CheckpointError, read_meta  # noqa: E402
from judge import Judge, agreement, passed  # noqa: E402
from model import Qwen  # noqa: E402
from tasks import countdown  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

BANDS = [(0.25, 0.75), (0.375, 0.75), (0.5, 0.75), (0.5, 1.0), (0.25, 1.0)]
_LISTS = re.compile(r"^uses ([\d ]+) need ([\d ]+) (ok|no)$")
_VALUE = re.compile(r"^(-?\d+)(!?=)(\d+) (yes|no)$")


def expression_text(tree, outer=0, right=False):
    """A parsed answer back to text, with only the parentheses it needs."""
    if tree[0] == "num":
        return str(tree[1])
    if tree[0] == "neg":
        return f"-({expression_text(tree[1])})"
    prec = countdown.PRECEDENCE[tree[0]]
    text = expression_text(tree[1], prec) + tree[0] + expression_text(tree[2], prec, right=True)
    return f"({text})" if prec < outer or (right and prec == outer) else text


def commuted(tree):
    """The same expression with the operands of every + and * swapped (same value, same numbers)."""
    if tree[0] == "num":
        return tree
    if tree[0] == "neg":
        return ("neg", commuted(tree[1]))
    a, b = commuted(tree[1]), commuted(tree[2])
    return (tree[0], b, a) if tree[0] in "+*" else (tree[0], a, b)


def judge_text_counts(problem, witness, text, counts):
    """Tally the judge's own comparisons in `text` (the shipped compact judge format) into `counts`."""
    def add(key, n=1):
        counts[key] = counts.get(key, 0) + n

    need = " ".join(map(str, sorted(problem["numbers"])))
    uses = " ".join(map(str, sorted(countdown.numbers_used(countdown.parse(witness)))))
    for line in text.splitlines():
        m = _LISTS.match(line.strip())
        if m:
            differ = m.group(1).strip() != m.group(2).strip()
            key = "lists_differ" if differ else "lists_agree"
            add(key)
            if (m.group(3) == "ok") == differ:
                add(key + "_decided_wrong")
            add("need_copied_right", m.group(2).strip() == need)
            add("uses_copied_right", m.group(1).strip() == uses)
        m = _VALUE.match(line.strip())
        if m:
            differ = m.group(1) != m.group(3)
            key = "value_differ" if differ else "value_agree"
            add(key)
            if (m.group(4) == "yes") == differ:
                add(key + "_decided_wrong")


def band_rows(model, tok, task, judge, problems, solvable, g, seed, style, max_new_tokens) -> list[dict]:
    """Each problem solved g times at T=1 and judged; per band in BANDS, the problems whose pass rate
    falls inside it, their solvable share and the judge's precision on their rollouts."""
    answers, rows = [], []
    if problems:
        prompts = [tok.encode_chat(task.prompt(p, style=style)) for p in problems]
        solved = sample.completions(model, tok, prompts, n=g, max_new_tokens=max_new_tokens, temperature=1.0,
                                    seed=seed + 1, batch_size=256)
        answers = [task.extract_answer(c.text) for c in solved]
        rows = [problems[k // g] for k in range(len(answers))]
    rewards, _ = judge.score(rows, answers, seed=seed) if rows else ([], [])
    correct = [task.verify(p, a) for p, a in zip(rows, answers)]
    rates = [sum(passed(r) for r in rewards[j * g:(j + 1) * g]) / g for j in range(len(problems))]
    out = []
    for low, high in BANDS:
        kept = [j for j, rate in enumerate(rates) if low <= rate <= high]
        ks = [j * g + k for j in kept for k in range(g)]
        precision = agreement([passed(rewards[k]) for k in ks], [correct[k] for k in ks])["precision"]
        out.append({"band": [low, high], "kept": len(kept), "solvable": sum(solvable[j] for j in kept) / max(1, len(kept)),
                    "judge_precision": precision})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                    "assets", "tiny-countdown"), help="a Countdown model folder")
    ap.add_argument("--n", type=int, default=400, help="proposals written")
    ap.add_argument("--rollouts", type=int, default=8, help="T=1 solutions per admitted problem (band)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if not os.path.isdir(args.model):
        ap.error(f"--model {args.model}: no such folder")
    try:
        meta = read_meta(args.model)
    except CheckpointError as e:
        ap.error(f"--model {args.model}: {e}")
    if meta.get("task", "countdown") != "countdown":
        ap.error(f"--model {args.model}: a model for {meta.get('task')}, not countdown")
    task = tasks.get("countdown")
    try:
        model, tok = Qwen.from_pretrained(args.model), Tokenizer.from_pretrained(args.model)
    except CheckpointError as e:
        ap.error(f"--model {args.model}: {e}")
    difficulty, limits = meta.get("difficulty", {}), meta.get("train_defaults", {})
    style = meta.get("prompt_style", "compact")
    judge = Judge(model, tok, task, samples=1, temperature=0.0, max_new_tokens=limits.get("judge_max_new_tokens", 96),
                  style=style)  # as in RL
    rng = random.Random(args.seed)
    shown = task.make_problems(300, 0, split="test", **difficulty)
    prompts = [tok.encode_chat(task.propose_prompt(rng.sample(shown, 3), style=style)) for _ in range(args.n)]
    texts = [c.text for c in sample.completions(model, tok, prompts, max_new_tokens=96, temperature=1.0, seed=args.seed,
                                                batch_size=256)]
    parsed = [p for p in map(task.parse_proposal, texts) if p]
    problems, witnesses = [p for p, _ in parsed], [w for _, w in parsed]
    right = [task.verify(p, w) for p, w in parsed]
    solvable = [task.solvable(p) for p in problems]
    verdicts, judge_texts = judge.score(problems, witnesses, seed=args.seed)
    admitted = [i for i, v in enumerate(verdicts) if passed(v)]
    wrong_numbers = [i for i in admitted if not right[i] and sorted(countdown.numbers_used(countdown.parse(witnesses[i])))
                     != sorted(problems[i]["numbers"])]
    out = {"model": args.model, "n": args.n, "seed": args.seed, "proposals": {
        "valid": len(parsed), "witness_right": sum(right), "admitted": len(admitted),
        "admitted_solvable": sum(solvable[i] for i in admitted) / max(1, len(admitted)),
        "admitted_wrong_numbers": len(wrong_numbers),
        "admitted_wrong_value": sum(not right[i] for i in admitted) - len(wrong_numbers)}}
    counts = {}
    for p, w, t in zip(problems, witnesses, judge_texts):
        if t:
            judge_text_counts(p, w, t[0], counts)
    out["judge_text"] = counts

    swapped = [expression_text(commuted(countdown.parse(w))) for w in witnesses]
    verdicts2, _ = judge.score(problems, swapped, seed=args.seed)
    both = [i for i in admitted if passed(verdicts2[i])]
    out["commuted"] = {"admitted": len(both), "admitted_solvable": sum(solvable[i] for i in both) / max(1, len(both))}

    out["band"] = band_rows(model, tok, task, judge, [problems[i] for i in admitted],
                            [solvable[i] for i in admitted], args.rollouts, args.seed, style,
                            limits.get("max_new_tokens", 64))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
