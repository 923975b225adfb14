"""integration — indefinite integrals; the answer is sympy-syntax text, checked by differentiation.

Problems are {"integrand": "x*sin(x)", "antiderivative": "sin(x) - x*cos(x)"} (the antiderivative
is optional: proposed problems have none). Generated problems use the backward trick: draw a random
elementary F and ask for the integral of F', so an elementary antiderivative always exists. A fixed
set of Integration Bee-style integrals written for this project (tasks/data/integration_bee.jsonl)
is `make_problems(n, 0, "bee")`.

The answer language and the check live in tasks/calculus.py: answers are tokenised, whitelisted and
parsed by our own parser, never executed and never handed to sympy's parser. `verify` runs the check
in a worker process from tasks/pool.py under a hard time limit: a check that runs past it is False,
and its worker is killed and replaced.
"""

import hashlib
import json
import os
import random

from tasks import check_style, extract_answer, judged_answer, neutralise, parse_verdict  # noqa: F401
from tasks.calculus import (Reject, check_job, fast_check, has_x, parse, parse_integrand, symbol_x, to_sympy,
                            tokenize, values_at, warm_up)
from tasks.pool import Pool

# -----------------------------------------------------------------------------
# problems: random antiderivatives differentiated (the backward trick), and a fixed Bee set

DEFAULTS = dict(
    depth=2,       # nesting of function compositions in the antiderivative (1..3)
    max_terms=2,   # terms in the antiderivative (1..3)
    max_len=90,    # longest integrand text, in characters
)
TEST_FRACTION = 10  # one integrand in TEST_FRACTION belongs to the held-out test split
BEE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "integration_bee.jsonl")


def _read_bee():
    """The Integration Bee-style integrals written for this project: [(integrand, antiderivative)]."""
    with open(BEE_FILE) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(row["integrand"], row["antiderivative"]) for row in rows]


BEE = _read_bee()


def canonical(text):
    """sympy's printed form of a whitelisted expression (one spelling per expression), or None."""
    node = parse(text)
    if node is None:
        return None
    try:
        return str(to_sympy(node))
    except (Reject, RecursionError, ValueError, TypeError, ZeroDivisionError):
        return None


def split_of(problem):
    """'test' or 'train': a fixed hash partition of integrands, so the splits never overlap."""
    digest = hashlib.sha256(("integration:" + problem["integrand"]).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_FRACTION == 0 else "train"


def _random_antiderivative(rng, depth, max_terms):
    """A random elementary F: sums of powers, compositions, products and quotients."""
    import sympy as sp  # imported on first use: `import tasks` stays light
    x = symbol_x()
    R = sp.Rational
    outer = [sp.sin, sp.cos, sp.exp, sp.log, sp.atan, sp.sqrt, sp.tan, sp.sinh, sp.cosh]

    def coef():
        return rng.choice([1, 1, 1, 2, 3, 4, -1, -2, R(1, 2), R(1, 3), R(3, 2)])

    def linear():
        return rng.choice([1, 1, 2, 3, -1, R(1, 2)]) * x + rng.choice([0, 0, 1, -1, 2, -2, 3])

    def inner(d):
        if d <= 1:
            return rng.choice([x, x, linear(), x ** 2, x ** 2 + rng.choice([1, 2, 4]), x ** 3])
        return atom(d - 1)

    def atom(d):
        kind = rng.choice(["power", "compose", "compose", "parts", "product", "chain", "quotient", "log"])
        if kind == "power":
            return x ** rng.choice([2, 3, 4, 5, -1, -2, R(1, 2), R(3, 2), R(1, 3)])
        if kind == "compose":
            return rng.choice(outer)(inner(d))
        if kind == "parts":  # x^k g(ax): what integration by parts undoes
            g = rng.choice([sp.sin, sp.cos, sp.exp, sp.log, sp.atan])
            return x ** rng.choice([1, 1, 2]) * g(rng.choice([1, 2, 3]) * x)
        if kind == "product":
            return rng.choice([sp.exp, sp.sin, sp.sqrt])(linear()) * rng.choice(outer)(inner(d - 1 if d > 1 else 1))
        if kind == "chain":
            return rng.choice(outer)(inner(d)) ** rng.choice([2, 3])
        if kind == "quotient":
            return rng.choice([1, x, sp.exp(x), sp.sin(x)]) / (x ** rng.choice([1, 2]) + rng.choice([1, 2, 3]))
        return sp.log(x ** rng.choice([1, 2]) + rng.choice([1, 2, 4]))

    return sum(coef() * atom(depth) for _ in range(rng.randint(1, max_terms)))


def make_problems(n, seed, split="train", **difficulty):
    """`n` distinct problems of the split, fixed by `seed`.

    split "train" / "test": generated (F random, integrand F'), a fixed hash partition apart, and
    never one of the Bee integrals; split "bee": the first n of the fixed Integration Bee-style set
    (seed ignored). Difficulty knobs (see DEFAULTS): depth, max_terms, max_len.
    """
    if split == "bee":
        if n > len(BEE):
            raise ValueError(f"the bee set has {len(BEE)} problems, asked for {n}")
        return [{"integrand": canonical(f), "antiderivative": canonical(F)} for f, F in BEE[:n]]
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'bee', got {split!r}")
    unknown = set(difficulty) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown integration difficulty knob(s): {sorted(unknown)} (known: {sorted(DEFAULTS)})")
    d = {**DEFAULTS, **difficulty}
    import sympy as sp
    x = symbol_x()
    rng = random.Random(f"integration/{split}/{seed}")
    seen = {canonical(f) for f, _ in BEE}  # never train or test on the Bee set
    problems = []
    for _ in range(200 * n + 1000):
        if len(problems) == n:
            break
        F = _random_antiderivative(rng, d["depth"], d["max_terms"])
        f = sp.diff(F, x)
        if not f.has(x) or f.has(sp.I, sp.zoo, sp.nan, sp.oo) or F.has(sp.I, sp.zoo, sp.nan, sp.oo):
            continue
        integrand, antiderivative = str(f), str(F)
        if len(integrand) > d["max_len"] or integrand in seen:
            continue
        if canonical(integrand) != integrand or parse(antiderivative) is None:
            continue  # printed forms our parser does not read back exactly are dropped
        problem = {"integrand": integrand, "antiderivative": antiderivative}
        if split_of(problem) != split:
            continue
        if not fast_check(integrand, antiderivative):
            continue  # values too large or singular everywhere we look: the checker could not tell
        seen.add(integrand)
        problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"only {len(problems)} distinct {split} problems found for these difficulty knobs")
    return problems


# -----------------------------------------------------------------------------
# the verifier: the check of tasks/calculus.py in killable worker processes

TIMEOUT = 2.0  # default hard limit per verification, in seconds
POOL = Pool(check_job, setup=warm_up)  # the worker processes; started on the first verification


def shutdown():
    """Stop the verifier's worker processes (also runs at exit)."""
    POOL.close()


def verify_many(problems, answers, timeout=TIMEOUT, workers=None):
    """[verify(p, a) for p, a in zip(problems, answers)], spread over worker processes.

    Each answer gets its own `timeout` seconds of worker time; one that runs out is False (its
    worker is killed and replaced). Malformed answers are rejected here without a worker.
    """
    results = [False] * len(answers)
    todo, jobs = [], []
    for i, (problem, answer) in enumerate(zip(problems, answers)):
        if not isinstance(problem, dict) or parse(answer) is None:
            continue
        integrand = problem.get("integrand")
        if parse_integrand(integrand) is None:
            continue
        todo.append(i)
        jobs.append([integrand, answer, timeout])
    for i, verdict in zip(todo, POOL.map(jobs, timeout, workers, default=False)):
        results[i] = verdict
    return results


def verify(problem, answer, timeout=TIMEOUT):
    """True iff `answer` (sympy-syntax text) is an antiderivative of the problem's integrand, up
    to a constant. Runs in a worker process under a hard `timeout` (False when it runs out).

    Where the integrand is real for x > 0 the answer is checked there (as integral tables and Bee
    answer keys mean it: acosh(x) passes for 1/sqrt(x**2 - 1)), otherwise for x < 0, otherwise
    wherever it is finite. Agreement means within 1e-8 of the interval's scale. The first call in
    a process waits for the worker to start (about a second); that wait is not charged to `timeout`.
    """
    return verify_many([problem], [answer], timeout, workers=1)[0]


# -----------------------------------------------------------------------------
# prompts

SOLVER_SYSTEM = ("You are a helpful assistant. You first think about the reasoning process in the mind "
                 "and then provide the user with the answer.")
# RLSR's integration instruction (it asks for sympy syntax, which is what the checker reads)
SOLVER_USER = ("{problem}\nSolve the following integral. Provide ONLY your antiderivative as a valid Python "
               "sympy expression e.g  <answer>cos(x**2)+ ln(x)+(1/3)*x**3</answer> wrapped in a <answer> tags. "
               "Importantly, put * between terms you want to multiply! Show your full working out before "
               "solving, don't include any constants of integration. DO NOT OUTPUT IN LATEX FORMAT. OUTPUT IN "
               "SYMPY in <answer> tags.")
JUDGE_SYSTEM = "You are an expert at mathematical differentiation."
# RLSR's integration judge: differentiate the answer and compare with the integrand
JUDGE_USER = ("Please check if the following is a valid function: {answer}. If it is, differentiate it and "
              "determine if it is functionally equal to {integrand}. Output <JUDGE_SCORE>1</JUDGE_SCORE> if they "
              "are equal. Output <JUDGE_SCORE>0</JUDGE_SCORE> if they are not equal or if it is not a valid "
              "function. Ignore constants of integration.")
PROPOSE_USER = ("Here are some indefinite integrals:\n{examples}\nWrite one new indefinite integral of similar "
                "difficulty whose antiderivative is an elementary function (sums, products and compositions of "
                "powers, exp, log, trigonometric and inverse trigonometric functions). Write the integrand in "
                "sympy syntax with x as the variable. Think first, then give the problem in <answer> </answer> "
                "tags in exactly this form: <answer>integrate(x*exp(x), x)</answer>")


def problem_text(problem):
    """The canonical text of a problem, as RLSR writes it: "integrate(x*sin(x), x)"."""
    return f"integrate({problem['integrand']}, x)"


def prompt(problem, style="full"):
    """Solver messages: RLSR's integration prompt ("full") or just "integrate(f, x)" ("compact")."""
    if check_style(style) == "compact":
        return [{"role": "user", "content": problem_text(problem)}]
    return [{"role": "system", "content": SOLVER_SYSTEM},
            {"role": "user", "content": SOLVER_USER.format(problem=problem_text(problem))}]


def judge_prompt(problem, answer, style="full"):
    """Judge messages: the integrand and the extracted answer only (neutralised), never the reasoning."""
    answer, integrand = judged_answer(answer), neutralise(problem["integrand"])
    if check_style(style) == "compact":
        return [{"role": "user", "content": f"check integrate({integrand}, x) answer {answer}"}]
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_USER.format(answer=answer, integrand=integrand)}]


def propose_prompt(examples, style="full"):
    """Messages asking the model to write a new integral like `examples` (a list of problems)."""
    lines = "\n".join(problem_text(e) for e in examples)
    if check_style(style) == "compact":
        return [{"role": "user", "content": "propose\n" + lines}]
    return [{"role": "system", "content": SOLVER_SYSTEM},
            {"role": "user", "content": PROPOSE_USER.format(examples=lines)}]


MAX_PROPOSED_TOKENS = 120  # a proposed integrand is short
MAX_CALL_NESTING = 3      # sin(exp(log(...))) at most


def _call_nesting(node):
    inner = [_call_nesting(c) for c in (node[2] if node[0] == "call" else node[1:]) if isinstance(c, tuple)]
    return (node[0] == "call") + max(inner, default=0)


def _looks_integrable(node):
    """Cheap filters for a proposed integrand: small, depends on x, no x**x-style towers, finite
    and moderate at most of a few points on x > 0. (Whether an elementary antiderivative exists is
    undecidable cheaply; this only throws out what clearly is not a sensible exercise.)"""
    if not has_x(node) or _call_nesting(node) > MAX_CALL_NESTING:
        return False

    def towers(n):  # x in both base and exponent, or x in an exponent of an exponent
        if n[0] == "**" and has_x(n[2]) and has_x(n[1]):
            return True
        children = n[2] if n[0] == "call" else [c for c in n[1:] if isinstance(c, tuple)]
        return any(towers(c) for c in children)

    if towers(node):
        return False
    values = values_at(node, (0.3, 0.7, 1.3, 2.1, 3.7))
    moderate = sum(v is not None and abs(v) < 1e10 for v in values)
    return moderate >= 3  # mostly finite and moderate on 0 < x < 4, where the checker looks first


def parse_problem(text):
    """A problem from model text ("integrate(f, x)", in <answer> tags or not, or a bare integrand),
    or None. The integrand must pass the answer whitelist, be short, depend on x and look like a
    sensible exercise; it is returned in sympy's canonical spelling."""
    if not isinstance(text, str):
        return None
    text = (extract_answer(text) or text)[-2000:]
    start = text.rfind("integrate(")
    if start >= 0:
        body, depth = text[start + len("integrate("):], 1
        for end, ch in enumerate(body):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
        else:
            return None
        integrand, comma, var = body[:end].rpartition(",")
        if not comma or var.strip() != "x":
            return None
    else:
        integrand = text.strip()
    tokens = tokenize(integrand)
    if tokens is None or len(tokens) > MAX_PROPOSED_TOKENS or ("name", "C") in tokens:
        return None
    node = parse(integrand)
    if node is None or not _looks_integrable(node):
        return None
    integrand = canonical(integrand)
    if integrand is None or "x" not in integrand or len(integrand) > 200:
        return None
    return {"integrand": integrand}


# -----------------------------------------------------------------------------
# supervised data for the tiny model

def _antiderivative(problem):
    F = problem.get("antiderivative")
    if not F or parse(F) is None:
        raise ValueError(f"problem has no usable antiderivative: {problem!r}")
    return F


def solution_text(problem, rng, style="compact"):
    """A correct solver response ending in <answer>F</answer> (needs the problem's antiderivative)."""
    F = _antiderivative(problem)
    if check_style(style) == "compact":
        return f"<answer>{F}</answer>"
    return (f"<think> An antiderivative of {problem['integrand']} is {F}; differentiating it gives back "
            f"{problem['integrand']}. </think>\n<answer> {F} </answer>")


def judge_text(problem, answer, style="compact"):
    """The ideal judge response: differentiate the answer, compare with the integrand, then the
    verdict (which always agrees with `verify`)."""
    verdict = int(verify(problem, answer))
    node = parse(answer)
    lines = []
    try:
        import sympy as sp
        x = symbol_x()
        derivative = str(sp.diff(to_sympy(node, x), x)) if node is not None else None
    except (Reject, RecursionError, ValueError, TypeError, ZeroDivisionError):
        derivative = None
    if derivative is None:
        lines.append("not a valid function")
    else:
        lines += [f"d/dx {answer.strip()} = {derivative}", f"integrand {problem['integrand']}",
                  "same" if verdict else "differs"]
    if check_style(style) == "full":
        lines = ["Let me differentiate the answer and compare it with the integrand."] + lines
    return "\n".join(lines) + f"\n<JUDGE_SCORE>{verdict}</JUDGE_SCORE>"


_PARTNERS = {"sin": "cos", "cos": "sin", "sinh": "cosh", "cosh": "sinh", "tan": "cot", "cot": "tan",
             "asin": "acos", "acos": "asin", "atan": "asin", "exp": "log", "log": "exp", "sqrt": "log",
             "sec": "csc", "csc": "sec", "tanh": "atan", "asinh": "atan", "acosh": "asinh"}


def near_miss(problem, rng):
    """A plausible WRONG answer: a sign error, a missing or extra factor, a wrong function or a
    wrong power in the problem's antiderivative (what a weak model gets wrong)."""
    import sympy as sp
    x = symbol_x()
    F = to_sympy(parse(_antiderivative(problem)), x)
    for _ in range(30):
        kind = rng.choice(["sign", "factor", "function", "power"])
        terms = list(sp.Add.make_args(F))
        k = rng.randrange(len(terms))
        if kind == "sign":
            terms[k] = -terms[k]
            wrong = sp.Add(*terms)
        elif kind == "factor":
            terms[k] = terms[k] * rng.choice([2, sp.Rational(1, 2), 3, sp.Rational(1, 3)])
            wrong = sp.Add(*terms)
        elif kind == "function":
            calls = [a for a in sp.preorder_traversal(F)
                     if isinstance(a, sp.Function) and a.func.__name__ in _PARTNERS]
            if not calls:
                continue
            a = rng.choice(calls)
            wrong = F.xreplace({a: getattr(sp, _PARTNERS[a.func.__name__])(*a.args)})
        else:
            powers = [p for p in sp.preorder_traversal(F) if isinstance(p, sp.Pow) and p.exp.is_Number]
            if not powers:
                continue
            p = rng.choice(powers)
            wrong = F.xreplace({p: p.base ** (p.exp + rng.choice([1, -1]))})
        text = str(wrong)
        if parse(text) is not None and not verify(problem, text):
            return text
    return f"{F} + x"  # always wrong: its derivative is off by 1
