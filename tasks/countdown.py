"""countdown — reach a target with + - * / using each given number exactly once.

Problems are {"numbers": [ints], "target": int}. Every generated target is the value of a random
expression over the numbers, so every generated problem is solvable. Answers are checked exactly:
the answer is parsed with Python's `ast` into a whitelist (integer literals, + - * /, unary minus,
parentheses), each given number must appear exactly once, and the value is computed with
`Fraction` arithmetic (no floats, no tolerance, division by zero is wrong). Nothing is executed.

Prompt styles: "full" is the TinyZero/RLSR wording for real instruct models; "compact" is a very
short wording for the tiny model trained from scratch ("nums 3 5 7 target 22").
"""

import ast
import hashlib
import operator
import random
import re
from collections import Counter
from fractions import Fraction

from tasks import check_style, extract_answer, judged_answer, neutralise, parse_verdict  # noqa: F401

# -----------------------------------------------------------------------------
# the four operations, written once: generation, checking, solving and worked steps all use them

OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


def apply(op, a, b):
    """a op b for Fractions (op one of + - * /); raises ZeroDivisionError on x/0."""
    return OPERATIONS[op](a, b)


# -----------------------------------------------------------------------------
# problems

DEFAULTS = dict(
    min_count=3,      # fewest numbers in a problem
    max_count=4,      # most numbers in a problem (3-4 as in TinyZero; up to 6 supported)
    min_number=1,     # smallest number
    max_number=99,    # largest number
    min_target=1,     # smallest target
    max_target=999,   # largest target
)
LIMITS = dict(min_count=3, max_count=6, min_number=1, max_number=1000, min_target=1, max_target=100_000)
TEST_FRACTION = 10  # one problem key in TEST_FRACTION belongs to the held-out test split


def problem_key(problem):
    """Canonical text of a problem: the numbers as a multiset plus the target."""
    return " ".join(map(str, sorted(problem["numbers"]))) + " -> " + str(problem["target"])


def split_of(problem):
    """'test' or 'train': a fixed hash partition of problem keys, so the splits never overlap."""
    digest = hashlib.sha256(("countdown:" + problem_key(problem)).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_FRACTION == 0 else "train"


def _difficulty(overrides):
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown countdown difficulty knob(s): {sorted(unknown)} (known: {sorted(DEFAULTS)})")
    d = {**DEFAULTS, **overrides}
    if not LIMITS["min_count"] <= d["min_count"] <= d["max_count"] <= LIMITS["max_count"]:
        raise ValueError(f"count range must lie within 3..6, got {d['min_count']}..{d['max_count']}")
    if not 1 <= d["min_number"] <= d["max_number"]:
        raise ValueError("need 1 <= min_number <= max_number")
    if not d["min_target"] <= d["max_target"]:
        raise ValueError("need min_target <= max_target")
    return d


def _random_value(rng, values):
    """The value of a random expression tree over all `values` (Fractions), or None on x/0."""
    values = list(values)
    while len(values) > 1:
        i, j = rng.sample(range(len(values)), 2)
        a, b = values[i], values[j]
        op = rng.choice("+-*/")
        if op == "/" and b == 0:
            return None
        values = [v for k, v in enumerate(values) if k not in (i, j)] + [apply(op, a, b)]
    return values[0]


def make_problems(n, seed, split="train", **difficulty):
    """`n` distinct solvable problems of the given split ("train" or "test"), fixed by `seed`.

    Difficulty knobs (see DEFAULTS): min_count/max_count, min_number/max_number,
    min_target/max_target. The target is the value of a random expression over the numbers,
    redrawn until it is an integer in the target range.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = _difficulty(difficulty)
    rng = random.Random(f"countdown/{split}/{seed}")
    problems, seen = [], set()
    for _ in range(1000 * n + 10_000):
        if len(problems) == n:
            break
        count = rng.randint(d["min_count"], d["max_count"])
        numbers = [rng.randint(d["min_number"], d["max_number"]) for _ in range(count)]
        for _ in range(50):  # a few expressions per draw of numbers before drawing new numbers
            value = _random_value(rng, [Fraction(v) for v in numbers])
            if value is not None and value.denominator == 1 and d["min_target"] <= value <= d["max_target"]:
                break
        else:
            continue
        problem = {"numbers": numbers, "target": int(value)}
        key = problem_key(problem)
        if split_of(problem) != split or key in seen:
            continue
        seen.add(key)
        problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"only {len(problems)} distinct {split} problems found for these difficulty knobs")
    return problems


# -----------------------------------------------------------------------------
# the verifier

MAX_ANSWER_CHARS = 300   # a 6-number expression needs well under 100 characters
MAX_PAREN_DEPTH = 30     # deeper nesting is never needed and Python's parser gives up near 200
_ALLOWED_CHARS = frozenset("0123456789+-*/() \t\n")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_LEADING_ZERO = re.compile(r"(?<![0-9])0[0-9]")


def parse(answer):
    """The answer as a small tree of ("num", int) / ("neg", t) / (op, a, b), or None.

    Model text never reaches `ast.parse` unless it is short and made only of ASCII digits,
    + - * / ( ) and spaces, so names, attributes, calls, strings, unicode digits, hex, float or
    underscore literals are all impossible; the tree is then whitelisted, which rejects what those
    characters can still spell (**, //, a leading unary +).
    """
    if not isinstance(answer, str):
        return None
    answer = answer.strip()
    if not answer or len(answer) > MAX_ANSWER_CHARS or not _ALLOWED_CHARS.issuperset(answer):
        return None
    if _LEADING_ZERO.search(answer):
        return None  # "07" is not how anyone writes 7 (and Python would not parse it)
    depth = 0
    for ch in answer:  # bound the nesting before Python's own (recursive) parser sees it
        depth += (ch == "(") - (ch == ")")
        if depth > MAX_PAREN_DEPTH or depth < 0:
            return None
    try:
        tree = ast.parse(answer, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return _whitelist(tree)


def _whitelist(node):
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return ("num", node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _whitelist(node.operand)
        return None if inner is None else ("neg", inner)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _whitelist(node.left), _whitelist(node.right)
        return None if a is None or b is None else (_BINOPS[type(node.op)], a, b)
    return None  # Pow, FloorDiv, Mod, calls, names, anything else


def numbers_used(tree):
    """The integer literals of a parsed answer, left to right."""
    if tree[0] == "num":
        return [tree[1]]
    return [n for child in tree[1:] for n in numbers_used(child)]


def evaluate(tree):
    """Exact value of a parsed answer as a Fraction; raises ZeroDivisionError on x/0."""
    kind = tree[0]
    if kind == "num":
        return Fraction(tree[1])
    if kind == "neg":
        return -evaluate(tree[1])
    return apply(kind, evaluate(tree[1]), evaluate(tree[2]))


def verify(problem, answer):
    """True iff `answer` uses each of the problem's numbers exactly once and equals the target."""
    try:
        tree = parse(answer)
        if tree is None or Counter(numbers_used(tree)) != Counter(problem["numbers"]):
            return False
        return evaluate(tree) == problem["target"]
    except (ZeroDivisionError, RecursionError, KeyError, TypeError):
        return False


# -----------------------------------------------------------------------------
# a bounded brute-force solver (logs how many proposed problems are solvable; never a reward)

def _fmt(v):
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def _operand(v):
    # a step's operand in parentheses when it is negative or a fraction, so "(7/2)*4=14" reads right
    return _fmt(v) if v.denominator == 1 and v >= 0 else f"({_fmt(v)})"


def _combine(a, b, op):
    """Combine two partial results (value, text, precedence, steps) with `op`, or None on x/0."""
    (va, ta, pa, sa), (vb, tb, pb, sb) = a, b
    if op == "/" and vb == 0:
        return None
    v = apply(op, va, vb)
    prec = PRECEDENCE[op]
    # parenthesise only where needed: a-(b+c), a*(b+c), a/(b*c)
    left = f"({ta})" if pa < prec else ta
    right = f"({tb})" if pb < prec or (pb == prec and op in "-/") else tb
    step = f"{_operand(va)}{op}{_operand(vb)}={_fmt(v)}"
    return (v, f"{left}{op}{right}", prec, sa + sb + (step,))


def _search(numbers, target, rng=None, max_nodes=200_000, nice=False):
    """DFS over ways to combine the numbers pairwise; the first item reaching target, else None.
    `nice` keeps every intermediate value a non-negative integer (easier worked steps to learn)."""
    items = [(Fraction(n), str(n), 3, ()) for n in numbers]
    target = Fraction(target)
    dead, budget = set(), [max_nodes]  # dead: multisets of values that cannot reach the target

    def dfs(items):
        if len(items) == 1:
            return items[0] if items[0][0] == target else None
        key = tuple(sorted(it[0] for it in items))
        if key in dead:
            return None
        pairs = [(i, j) for i in range(len(items)) for j in range(len(items)) if i != j]
        if rng is not None:
            rng.shuffle(pairs)
        for i, j in pairs:
            ops = ["+", "*", "-", "/"] if rng is None else rng.sample("+*-/", 4)
            for op in ops:
                if op in "+*" and i > j and rng is None:
                    continue  # commutative: one order is enough for a plain search
                budget[0] -= 1
                if budget[0] < 0:
                    raise TimeoutError
                c = _combine(items[i], items[j], op)
                if c is None or (nice and (c[0] < 0 or c[0].denominator != 1)):
                    continue
                rest = [it for k, it in enumerate(items) if k not in (i, j)]
                found = dfs(rest + [c])
                if found is not None:
                    return found
        dead.add(key)
        return None

    try:
        return dfs(items)
    except TimeoutError:
        return None


def solve(numbers, target, rng=None, max_nodes=200_000):
    """An expression (text) over all `numbers` equal to `target`, or None if none was found
    within `max_nodes` combinations. With `rng` the search order is random, so repeated calls give
    varied solutions. For logs (how many proposed problems are solvable), never for rewards."""
    found = _search(numbers, target, rng, max_nodes)
    return None if found is None else found[1]


# -----------------------------------------------------------------------------
# prompts

SOLVER_SYSTEM = ("You are a helpful assistant. You first think about the reasoning process in the mind "
                 "and then provide the user with the answer.")
SOLVER_USER = ("Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
               "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work "
               "in <think> </think> tags. And return the final answer in <answer> </answer> tags, for "
               "example <answer> (1 + 2) / 3 </answer>.")


def problem_text(problem):
    """The canonical one-line text of a problem, e.g. "nums 3 5 7 target 22"."""
    return "nums " + " ".join(map(str, problem["numbers"])) + f" target {problem['target']}"


def prompt(problem, style="full"):
    """Solver messages: TinyZero/RLSR's Countdown prompt ("full") or "nums 3 5 7 target 22"."""
    if check_style(style) == "compact":
        return [{"role": "user", "content": problem_text(problem)}]
    user = SOLVER_USER.format(numbers=list(problem["numbers"]), target=problem["target"])
    return [{"role": "system", "content": SOLVER_SYSTEM}, {"role": "user", "content": user}]


JUDGE_SYSTEM = "You are an expert at checking arithmetic."
JUDGE_USER = ("Numbers: {numbers}. Target: {target}.\nProposed answer: {answer}\n"
              "Check the proposed answer: it must be an expression that uses each of the numbers exactly "
              "once (and no other numbers) with only +, -, *, / and parentheses, and it must evaluate to "
              "exactly {target}. Work it out step by step: list the numbers the answer uses, compute its "
              "value, and compare it with the target. Then output <JUDGE_SCORE>1</JUDGE_SCORE> if the "
              "answer is correct, or <JUDGE_SCORE>0</JUDGE_SCORE> if it is not.")


def judge_prompt(problem, answer, style="full"):
    """Judge messages: the problem and the extracted answer only (neutralised), never the reasoning."""
    answer = judged_answer(answer)
    if check_style(style) == "compact":
        return [{"role": "user", "content": f"check {problem_text(problem)} answer {answer}"}]
    user = JUDGE_USER.format(numbers=list(problem["numbers"]), target=problem["target"], answer=answer)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


PROPOSE_USER = ("Here are some Countdown problems. Each gives a list of numbers and a target; a solution "
                "combines every number exactly once with +, -, *, / and parentheses to reach the target.\n"
                "{examples}\nWrite one new Countdown problem of similar difficulty ({lo} to {hi} numbers, "
                "each between {nmin} and {nmax}, a whole-number target) together with a solution of it: "
                "choose the numbers, combine them step by step, and take the result as the target. Then "
                "give the problem and its solution in <answer> </answer> tags in exactly this form: "
                "<answer>nums 3 5 7 target 22 by 3*5+7</answer>")


def propose_prompt(examples, style="full"):
    """Messages asking the model to write a new problem like `examples` (a list of problems)."""
    lines = "\n".join(problem_text(e) for e in examples)
    if check_style(style) == "compact":
        return [{"role": "user", "content": "propose\n" + lines}]
    counts = [len(e["numbers"]) for e in examples] or [DEFAULTS["min_count"], DEFAULTS["max_count"]]
    nums = [v for e in examples for v in e["numbers"]] or [DEFAULTS["min_number"], DEFAULTS["max_number"]]
    user = PROPOSE_USER.format(examples=lines, lo=min(counts), hi=max(counts), nmin=min(nums), nmax=max(nums))
    return [{"role": "system", "content": SOLVER_SYSTEM}, {"role": "user", "content": user}]


# "nums 3 5 7 target 22", "numbers: [3, 5, 7], target: 22", ... (separators are never empty, so no backtracking blow-up)
_PROBLEM = re.compile(r"\bnum(?:ber)?s?\s*:?\s*\[?\s*(\d{1,7}(?:(?:\s*,\s*|\s+)\d{1,7}){0,9})\s*\]?\s*[,;.]?\s*"
                      r"target\s*:?\s*(\d{1,7})\b", re.IGNORECASE)


def parse_problem(text, **limits):
    """A problem from model text ("nums 3 5 7 target 22", inside <answer> tags or not), or None.

    The last problem-shaped line counts. It must have 3..6 numbers, each in [1, 1000], and a
    target in [1, 100000] (override with min_count=, max_count=, min_number=, ...). Solvability is
    not required here (see `solve`): that is only measured, for the logs.
    """
    if not isinstance(text, str):
        return None
    lim = {**LIMITS, **limits}
    text = (extract_answer(text) or text)[-2000:]  # a proposal is one short line; ignore the rest
    matches = list(_PROBLEM.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    numbers = [int(v) for v in re.findall(r"\d+", m.group(1))]
    target = int(m.group(2))
    if not lim["min_count"] <= len(numbers) <= lim["max_count"]:
        return None
    if not all(lim["min_number"] <= v <= lim["max_number"] for v in numbers):
        return None
    if not lim["min_target"] <= target <= lim["max_target"]:
        return None
    return {"numbers": numbers, "target": target}


_WITNESS = re.compile(r"^\s*(?:by|via|with|solution|:|=)\s*:?\s*(.{1,200}?)\s*$", re.IGNORECASE | re.DOTALL)


def parse_proposal(text, **limits):
    """A proposal with its witness, "<answer>nums 4 9 2 target 34 by 4*9-2</answer>" -> (problem,
    witness expression text) or None. The witness is only parsed here (the judge decides whether it
    is right); a proposal without one is no proposal."""
    if not isinstance(text, str):
        return None
    body = (extract_answer(text) or "")[-2000:]
    matches = list(_PROBLEM.finditer(body))
    problem = parse_problem(body, **limits) if matches else None
    if problem is None:
        return None
    witness = _WITNESS.match(body[matches[-1].end():])
    if witness is None or parse(witness.group(1)) is None:
        return None
    return problem, witness.group(1)


def solvable(problem, max_nodes=200_000) -> bool:
    """Whether some expression reaches the target (a bounded search; for measuring proposals only)."""
    return solve(problem["numbers"], problem["target"], max_nodes=max_nodes) is not None


def proposal_text(rng, style="compact", **difficulty):
    """A correct proposer response: numbers drawn as make_problems draws them, an expression over them
    worked step by step, and its value as the target -> "steps\n<answer>nums ... target T by EXPR</answer>"."""
    d = _difficulty(difficulty)
    for _ in range(10_000):
        numbers = [rng.randint(d["min_number"], d["max_number"]) for _ in range(rng.randint(d["min_count"],
                                                                                           d["max_count"]))]
        expr = _random_expression(rng, numbers)
        tree = parse(expr) if expr else None
        try:
            value, steps = _steps(tree) if tree else (None, None)
        except ZeroDivisionError:
            continue
        if value is not None and value.denominator == 1 and d["min_target"] <= value <= d["max_target"]:
            problem = {"numbers": numbers, "target": int(value)}
            if split_of(problem) == "train":
                line = f"<answer>{problem_text(problem)} by {expr}</answer>"
                if check_style(style) == "compact":
                    return "\n".join(steps) + "\n" + line
                return f"<think> {', '.join(x.replace('=', ' = ') for x in steps)}. </think>\n{line}"
    raise ValueError("no proposal found for these difficulty knobs")


# -----------------------------------------------------------------------------
# supervised data for the tiny model

def solution_text(problem, rng, style="compact"):
    """A correct solver response: the worked steps, then <answer>expression</answer>."""
    found = (_search(problem["numbers"], problem["target"], rng, max_nodes=200_000, nice=True)
             or _search(problem["numbers"], problem["target"], rng, max_nodes=2_000_000))
    if found is None:
        raise ValueError(f"no solution found for {problem_text(problem)}")
    _, expr, _, steps = found
    if check_style(style) == "compact":
        return "\n".join(steps) + f"\n<answer>{expr}</answer>"
    work = ", ".join(s.replace("=", " = ") for s in steps)
    return f"<think> {work}, which is the target. </think>\n<answer> {expr} </answer>"


def _steps(tree):
    """(value, steps) of a parsed answer, evaluating in order; raises ZeroDivisionError."""
    kind = tree[0]
    if kind == "num":
        return Fraction(tree[1]), []
    if kind == "neg":
        v, steps = _steps(tree[1])
        return -v, steps if tree[1][0] == "num" else steps + [f"-({_fmt(v)})={_fmt(-v)}"]
    (a, sa), (b, sb) = _steps(tree[1]), _steps(tree[2])
    steps = sa + sb
    if kind == "/" and b == 0:
        raise ZeroDivisionError(steps + [f"{_operand(a)}/0 undefined"])
    v = apply(kind, a, b)
    return v, steps + [f"{_operand(a)}{kind}{_operand(b)}={_fmt(v)}"]


def judge_text(problem, answer, style="compact"):
    """The ideal judge response: check the numbers, evaluate step by step, compare, then the verdict
    (which always agrees with `verify`)."""
    verdict = int(verify(problem, answer))
    tree = parse(answer)
    need = " ".join(map(str, sorted(problem["numbers"])))
    if tree is None:
        lines = ["not a valid expression"]
    else:
        used = " ".join(map(str, sorted(numbers_used(tree))))
        if used != need:
            lines = [f"uses {used} need {need} no"]
        else:
            lines = [f"uses {used} need {need} ok"]
            try:
                value, steps = _steps(tree)
                ok = value == problem["target"]
                lines += steps + [f"{_fmt(value)}{'=' if ok else '!='}{problem['target']} {'yes' if ok else 'no'}"]
            except ZeroDivisionError as e:
                lines += e.args[0] + ["division by zero no"]
    if check_style(style) == "full":
        lines = ["Let me check the answer."] + lines
    return "\n".join(lines) + f"\n<JUDGE_SCORE>{verdict}</JUDGE_SCORE>"


def _random_expression(rng, numbers):
    """Text of a random expression tree over all `numbers` (may divide by zero)."""
    items = [(Fraction(n), str(n), 3, ()) for n in numbers]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        c = _combine(items[i], items[j], rng.choice("+-*/"))
        if c is None:
            return None
        items = [it for k, it in enumerate(items) if k not in (i, j)] + [c]
    return items[0][1]


def near_miss(problem, rng):
    """A plausible WRONG answer of the kind a weak model writes: the right numbers but a value a
    little off (or a wrong operator), a number used twice or left out, or a wrong number."""
    numbers, target = list(problem["numbers"]), problem["target"]
    for _ in range(100):
        kind = rng.choice(["off", "off", "twice", "missing", "wrong"])
        if kind == "off":  # right numbers: the closest of a few random expressions that misses
            best = None
            for _ in range(30):
                expr = _random_expression(rng, rng.sample(numbers, len(numbers)))
                if expr is None:
                    continue
                v = evaluate(parse(expr))
                if v != target and (best is None or abs(v - target) < best[0]):
                    best = (abs(v - target), expr)
            answer = None if best is None else best[1]
        elif kind == "twice":  # one number replaced by another from the list
            i, j = rng.sample(range(len(numbers)), 2)
            answer = _random_expression(rng, [numbers[j] if k == i else v for k, v in enumerate(numbers)])
        elif kind == "missing":
            answer = _random_expression(rng, rng.sample(numbers, len(numbers) - 1))
        else:  # a number off by a little, as if misread
            i = rng.randrange(len(numbers))
            wrong = [v + rng.choice([-2, -1, 1, 2]) if k == i else v for k, v in enumerate(numbers)]
            answer = _random_expression(rng, [max(v, 0) for v in wrong])
        if answer is not None and not verify(problem, answer):
            return answer
    return "+".join(map(str, numbers)) + "+1"  # always wrong: 1 is an extra number
