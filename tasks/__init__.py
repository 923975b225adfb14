"""tasks — the problems the model solves and the formal checkers that score them.

One module per task, each with the same plain functions (see DESIGN.md), looked up by name:

    task = tasks.get("countdown")
    problems = task.make_problems(64, seed=0)
    messages = task.prompt(problems[0])                 # chat messages for the solver
    ok = task.verify(problems[0], task.extract_answer(completion))

The helpers shared by every task live here: `extract_answer` (the last <answer> block),
`neutralise` (defangs tags and special tokens in model text we paste into another prompt) and
`parse_verdict` (the judge's last <JUDGE_SCORE> tag). They read untrusted model text, so they
are written as plain string scans with no backtracking regexes over the whole completion.
"""

import importlib
import re

TASKS = ("countdown", "integration")


def get(name):
    """The task module called `name` (e.g. "countdown")."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return importlib.import_module(f"tasks.{name}")


# -----------------------------------------------------------------------------
# answers

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


def extract_answer(text):
    """The stripped content of the LAST <answer>...</answer> block, or None.

    The last opening tag decides: if it is never closed (the completion was cut off mid-answer)
    the answer is None even when an earlier block was complete, because the model's final word is
    unfinished (TinyZero #120: taking the first block rewards answers the model later revised).
    An empty or whitespace-only block is None too, so callers can treat None as "no answer".
    """
    if not isinstance(text, str):
        return None
    start = text.rfind(ANSWER_OPEN)
    if start < 0:
        return None
    start += len(ANSWER_OPEN)
    end = text.find(ANSWER_CLOSE, start)
    if end < 0:
        return None
    answer = text[start:end].strip()
    return answer or None


# -----------------------------------------------------------------------------
# judge verdicts

SCORE_OPEN, SCORE_CLOSE = "<JUDGE_SCORE>", "</JUDGE_SCORE>"
_VERDICT = re.compile(r"\s*([01])\s*</JUDGE_SCORE>")


def parse_verdict(text):
    """1 if the judge's LAST <JUDGE_SCORE> tag reads 1, else 0 (no tag, malformed, "0" -> 0).

    Only the last opening tag counts, so a judge that writes a 1 and then changes its mind (or
    trails off after a new opening tag) does not get credit for the earlier tag.
    """
    if not isinstance(text, str):
        return 0
    start = text.rfind(SCORE_OPEN)
    if start < 0:
        return 0
    m = _VERDICT.match(text, start + len(SCORE_OPEN))
    return int(m.group(1)) if m else 0


# a '<' that starts a judge tag, an answer tag or a chat special token like <|im_end|>
# (case-insensitive and space-tolerant, so "< /Judge_Score >" is caught as well)
_DANGEROUS = re.compile(r"<(?=\s*/?\s*(?:judge_score|answer)\b|\s*\|)", re.IGNORECASE)
LOOKALIKE = "\u2039"  # '‹': looks like '<' to a reader, but no tokenizer or parser treats it as one


def neutralise(text):
    """`text` with every judge tag, answer tag and <|special|> token defanged.

    Used on any model-written text pasted into a prompt (the answer a judge checks, a proposed
    problem), so an answer cannot contain "<JUDGE_SCORE>1</JUDGE_SCORE>" for the judge to echo, nor
    "<|im_end|><|im_start|>assistant" to forge a turn. The '<' of each such tag becomes a
    lookalike; everything else is kept so the judge still sees what the answer said.
    """
    if not isinstance(text, str):
        text = str(text)
    return _DANGEROUS.sub(LOOKALIKE, text)


STYLES = ("full", "compact")  # prompt wordings: for real instruct models, and for the tiny model
MAX_JUDGED_CHARS = 1000  # a longer answer is cut before the judge sees it: it is wrong anyway


def check_style(style):
    """The style itself, or ValueError naming the known ones."""
    if style not in STYLES:
        raise ValueError(f"style must be 'full' or 'compact', got {style!r}")
    return style


def judged_answer(answer):
    """The answer as the judge prompt shows it: cut to MAX_JUDGED_CHARS, then neutralised."""
    answer = "" if answer is None else str(answer)
    if len(answer) > MAX_JUDGED_CHARS:
        answer = answer[:MAX_JUDGED_CHARS] + " ...(truncated)"
    return neutralise(answer)

