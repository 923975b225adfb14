"""tasks — the problems the model solves and the formal checkers that score them.

One module per task (countdown.py, integration.py), looked up by name; the rest of the project
touches a task only through the plain functions below, so a new task is one new module with the same
names, added to TASKS:

    task = tasks.get("countdown")
    problems = task.make_problems(64, seed=0)
    messages = task.prompt(problems[0])                 # chat messages for the solver
    ok = task.verify(problems[0], task.extract_answer(completion))

The task-module contract. A problem is a JSON-serialisable dict; messages are a list of
{"role", "content"} dicts; `style` is "full" (the published wording, for real instruct models) or
"compact" (a very short wording the tiny model learns from data); an answer is text or None.

  make_problems(n, seed, split="train", **difficulty) -> [problem]
      n distinct problems, the same for the same arguments. "train" and "test" never overlap (see
      split_of; integration also has "bee", a fixed set); difficulty knobs are the keys of DEFAULTS,
      anything else is a ValueError.
  split_of(problem) -> "train" | "test"
      a fixed hash partition: about one problem in TEST_FRACTION belongs to the held-out test split.
  problem_text(problem) -> str
      the canonical one-line text of a problem (it is also the compact prompt).
  prompt(problem, style="full") -> messages
      the solver prompt; the solver ends its answer in <answer> ... </answer>.
  extract_answer(text) -> str | None
      this module's extract_answer (below): the last answer block, shared by every task.
  verify(problem, answer) -> bool
      the formal checker and the ground truth for rewards, evaluation and agreement counts. It never
      executes the answer (no eval, no exec, no handing text to sympy's parser: answers are
      whitelisted and parsed by our own code), is time-bounded, and is False, never an exception, for
      None, malformed, hostile or oversized answers. A task may also offer
      verify_many(problems, answers) -> [bool], the same verdicts for a batch (verify_all below uses it).
  judge_prompt(problem, answer, style="full") -> messages
      what a judge model sees: the problem and the extracted answer only, never the solver's
      reasoning, with the answer cut and neutralised (judged_answer). The verdict is the judge's last
      <JUDGE_SCORE>0|1</JUDGE_SCORE> (parse_verdict).
  propose_prompt(examples, style="full") -> messages; parse_problem(text) -> problem | None
      for problems the model writes itself: parse_problem accepts only a well-formed problem within
      the task's limits, else None, and never raises on model text.
  solution_text(problem, rng, style="compact") -> str
  judge_text(problem, answer, style="compact") -> str
  near_miss(problem, rng) -> str
      supervised data for the tiny model: a correct worked response ending in an answer block; the
      ideal judge response, whose verdict always agrees with verify; a plausible wrong answer (verify
      is False for it).

The helpers shared by every task live here: `verify_all` (a task's verifier on a batch of answers),
`extract_answer` (the last <answer> block), `neutralise` (defangs tags and special tokens in model
text we paste into another prompt) and `parse_verdict` (the judge's last <JUDGE_SCORE> tag), plus the
self-correction trajectory format. The text helpers read untrusted model text, so they are written
as plain string scans with no backtracking
regexes over the whole completion. Helper modules that are not tasks: calculus.py (the integration
answer language: parser, cost limits, numeric evaluation), checks.py (is F an antiderivative of f),
definite.py (the value of a definite integral) and pool.py (killable worker processes with a time
limit per job).
"""

import importlib
import re
from dataclasses import dataclass

TASKS = ("countdown", "integration")


def get(name):
    """The task module called `name` (e.g. "countdown")."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return importlib.import_module(f"tasks.{name}")


def verify_all(task, problems, answers) -> list[bool]:
    """The task's verifier on each (problem, answer) -> [bool], through its verify_many when it has
    one; a missing answer is wrong without a call. The one way a batch of answers is verified."""
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



# -----------------------------------------------------------------------------
# self-rewarding correction (Xiong et al., 2025): answer -> [VERIFY] -> corrected answer -> ...
#
# One assistant completion holds the whole trajectory: an attempt ending in an answer block, a
# self-evaluation ending in "[VERIFY] correct" or "[VERIFY] wrong", and after "wrong" a new attempt
# and its evaluation, up to `max_turns` corrections. Generation runs to the stop token (or the token
# limit); `parse_trajectory` then cuts the text after the first "[VERIFY] correct" or after the
# verdict of the last allowed attempt, so the limit and the stop are enforced after the fact.

VERIFY = "[VERIFY]"
VERDICTS = ("correct", "wrong")
_VERDICT_WORD = re.compile(r"[ \t]*(correct|wrong)\b")
SELF_CORRECT_FULL = ("After your answer, verify it: check it step by step, then write [VERIFY] correct if it is "
                     "right or [VERIFY] wrong if it is not. After [VERIFY] wrong, write a corrected answer in new "
                     "<answer> </answer> tags and verify it the same way. Stop after [VERIFY] correct.")
SELF_CORRECT_COMPACT = " verify"  # "nums 3 5 7 target 22 verify"
INTRINSIC_FULL = ("Review your previous answer and find any problem with it. Then give your final answer, "
                  "corrected if it was wrong, in <answer> </answer> tags.")


@dataclass
class Trajectory:
    """A parsed self-correction trajectory.

    turns: [(answer | None, verdict "correct" | "wrong" | None)], one per attempt in order; the last
        attempt's verdict is None when the text ends before one (unterminated).
    final: the final answer, the last answer block of the kept text (None if missing or unclosed).
    terminated: True when "[VERIFY] correct" or the last allowed attempt's verdict ended it.
    end: the number of characters of the text that belong to the trajectory (the rest is cut).
    """

    turns: list
    final: str | None
    terminated: bool
    end: int

    @property
    def first(self):
        """The first attempt's answer (None when there is none)."""
        return self.turns[0][0] if self.turns else None

    @property
    def first_verdict(self):
        """The verdict on the first attempt: "correct", "wrong" or None."""
        return self.turns[0][1] if self.turns else None


def _next_verdict(text, pos):
    """(start, end, verdict) of the next "[VERIFY] correct|wrong" at or after pos, outside answer
    blocks (a verdict inside an answer is part of the answer); None if there is none."""
    answer = text.find(ANSWER_OPEN, pos)
    while True:
        v = text.find(VERIFY, pos)
        if v < 0:
            return None
        if 0 <= answer < v:  # an answer block opens first: skip past its closing tag
            close = text.find(ANSWER_CLOSE, answer + len(ANSWER_OPEN))
            if close < 0:
                return None  # unclosed: the rest of the text is inside the answer
            pos = close + len(ANSWER_CLOSE)
            answer = text.find(ANSWER_OPEN, pos)
            continue
        m = _VERDICT_WORD.match(text, v + len(VERIFY))
        if m:
            return v, m.end(), m.group(1)
        pos = v + len(VERIFY)  # "[VERIFY]" with no verdict word after it is not a verdict


def parse_trajectory(text, max_turns=2, extract=extract_answer):
    """Split a self-correction completion into attempts and verdicts, cutting it at the first
    "[VERIFY] correct" or at the verdict of attempt max_turns + 1 (max_turns corrections).

    Each attempt's answer is the last answer block before its verdict (`extract`, the task's
    extract_answer). Never raises on malformed text: no verdict at all is one unterminated attempt.
    """
    if not isinstance(text, str):
        text = ""
    if max_turns < 0:
        raise ValueError(f"max_turns must be >= 0, got {max_turns}")
    turns, pos = [], 0
    while True:
        found = _next_verdict(text, pos)
        if found is None:
            break
        start, end, verdict = found
        turns.append((extract(text[pos:start]), verdict))
        pos = end
        if verdict == "correct" or len(turns) == max_turns + 1:
            return Trajectory(turns, extract(text[:end]), True, end)
    if text[pos:].strip():  # an attempt without a verdict: the text ran out (or the model stopped)
        turns.append((extract(text[pos:]), None))
    return Trajectory(turns, extract(text), False, len(text))


def self_correct_prompt(task, problem, style="full"):
    """The solver prompt of `task` plus the instruction to verify and correct (one short word for
    the compact style, whose model learns the format from data)."""
    messages = [dict(m) for m in task.prompt(problem, style=style)]
    extra = SELF_CORRECT_COMPACT if check_style(style) == "compact" else "\n" + SELF_CORRECT_FULL
    messages[-1]["content"] += extra
    return messages


def intrinsic_prompt(task, problem, attempt, answer, style="full"):
    """The intrinsic self-correction baseline's second turn: the plain solver prompt, the model's
    first attempt, then a user turn asking it to review and correct that answer."""
    if check_style(style) == "compact":
        ask = f"check answer {judged_answer(answer)} and correct it"
    else:
        ask = INTRINSIC_FULL
    return task.prompt(problem, style=style) + [{"role": "assistant", "content": attempt},
                                                {"role": "user", "content": ask}]


def check_text(judge_text):
    """A judge's worked check without its verdict tag (the text before the last <JUDGE_SCORE>)."""
    cut = judge_text.rfind(SCORE_OPEN)
    return (judge_text if cut < 0 else judge_text[:cut]).strip()


def verdict_text(correct):
    return f"{VERIFY} {'correct' if correct else 'wrong'}"
