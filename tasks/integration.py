"""integration — integrals, indefinite and definite; the answer is sympy-syntax text, checked numerically.

An indefinite problem is {"integrand": "x*sin(x)", "antiderivative": "sin(x) - x*cos(x)"}; its
answer is an antiderivative, checked by differentiation (tasks/checks.py). A definite problem also
has "lower" and "upper" (constants: "0", "pi/2", or a whole "oo", "-oo") and "value" ("pi/4"); its
answer is a finite closed-form number, checked against a 30-digit quadrature of the integral
(tasks/definite.py). The reference fields ("antiderivative", "value") are optional: proposed problems
have none.

Generated problems use the backward trick: draw a random elementary F and ask for the integral of
F', so an elementary antiderivative always exists (atoms="elementary"), or draw integrand terms
with a textbook antiderivative each (atoms="simple": small polynomials, exp/sin/cos of linear
arguments, x times one of those; what a tiny model can learn). A share of them (`definite`) is
definite: F evaluated at bounds drawn from a short list of nice ones. A fixed set of Integration
Bee-style integrals written for this project (tasks/data/integration_bee.jsonl) is
`make_problems(n, 0, "bee")`.

The answer language lives in tasks/calculus.py: answers are tokenised, whitelisted and parsed by our
own parser, never executed and never handed to sympy's parser. `verify` runs the check in a worker
process from tasks/pool.py under a hard time limit: a check that runs past it is False, and its
worker is killed and replaced.
"""

import functools
import hashlib
import json
import os
import random

from tasks import check_style, definite, extract_answer, judged_answer, neutralise, parse_verdict  # noqa: F401
from tasks.calculus import Reject, has_x, parse, parse_integrand, symbol_x, to_sympy, tokenize, values_at
from tasks.checks import check_job, fast_check, warm_up
from tasks.pool import Pool

# -----------------------------------------------------------------------------
# problems: random antiderivatives differentiated (the backward trick), and a fixed Bee set

DEFAULTS = dict(
    atoms="elementary",  # "elementary": compositions, products, quotients, logs; "simple": see the docstring
    depth=2,             # nesting of function compositions in the antiderivative (1..3; elementary only)
    max_terms=2,         # terms in the antiderivative (1..3)
    max_len=90,          # longest integrand text, in characters
    definite=0.25,       # share of definite problems: about a quarter of a real Bee qualifier is definite
)
ATOMS = ("elementary", "simple")
# bounds of generated definite problems (sympy's spelling, so they are canonical)
BOUNDS = {"elementary": [("0", "1"), ("1", "2"), ("0", "2"), ("-1", "1"), ("0", "pi"), ("0", "pi/2"),
                         ("-pi/2", "pi/2"), ("0", "pi/4"), ("1", "E"), ("0", "log(2)"), ("1", "4"), ("-2", "2")],
          "simple": [("0", "1"), ("0", "2"), ("-1", "1"), ("1", "2"), ("0", "pi"), ("0", "pi/2")]}
MAX_VALUE_LEN = 60  # longest value text of a generated definite problem
TEST_FRACTION = 10  # one integrand in TEST_FRACTION belongs to the held-out test split
BEE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "integration_bee.jsonl")
REFERENCE = ("antiderivative", "lower", "upper", "value")  # the optional fields of a problem, in order


def _read_bee():
    """The Integration Bee-style integrals written for this project: problem dicts as in the file."""
    with open(BEE_FILE) as f:
        return [json.loads(line) for line in f if line.strip()]


BEE = _read_bee()


@functools.lru_cache(maxsize=1)
def _bee_integrands():
    return frozenset(canonical(row["integrand"]) for row in BEE)


def canonical(text):
    """sympy's printed form of a whitelisted expression (one spelling per expression), or None."""
    node = parse(text)
    if node is None:
        return None
    try:
        return str(to_sympy(node))
    except (Reject, RecursionError, ValueError, TypeError, ZeroDivisionError):
        return None


def _canonical_field(key, text):
    """canonical() of a problem field; an infinite bound ("oo", "-oo") stays as written (sympy has
    no whitelisted spelling of it, the definite verifier reads it as is)."""
    if key in ("lower", "upper") and text.strip() in definite.INFINITE:
        return text.strip()
    return canonical(text)


def is_definite(problem):
    """Whether the problem asks for a definite integral (it has bounds)."""
    return "lower" in problem or "upper" in problem


def split_of(problem):
    """'test' or 'train': a fixed hash partition of integrands (definite or not, the same integrand
    is always in the same split), so the splits never overlap."""
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


SIMPLE_KINDS = ("power", "exp", "sin", "cos", "x_exp", "x_sin", "x_cos")


def _textbook(kind, c, a, u, n=0):
    """(g, G): the integrand term of `kind` with coefficient c, inner u = a*x + b (power: x**n), and
    the antiderivative one textbook rule gives, written out term by term."""
    import sympy as sp
    x, c = symbol_x(), sp.Rational(c)
    if kind == "power":
        return c * x ** n, c / (n + 1) * x ** (n + 1)
    if kind == "exp":
        return c * sp.exp(u), c / a * sp.exp(u)
    if kind == "sin":
        return c * sp.sin(u), -c / a * sp.cos(u)
    if kind == "cos":
        return c * sp.cos(u), c / a * sp.sin(u)
    if kind == "x_exp":  # by parts, once
        return c * x * sp.exp(u), c / a * x * sp.exp(u) - c / a ** 2 * sp.exp(u)
    if kind == "x_sin":
        return c * x * sp.sin(u), -c / a * x * sp.cos(u) + c / a ** 2 * sp.sin(u)
    return c * x * sp.cos(u), c / a * x * sp.sin(u) + c / a ** 2 * sp.cos(u)


def _textbook_integral(term):
    """The textbook antiderivative of one integrand term of the simple family (c*x**n, c*exp(u),
    c*sin(u), c*cos(u), c*x times one of those; u = a*x + b), or None for any other term."""
    import sympy as sp
    x = symbol_x()
    c, rest = term.as_coeff_Mul()
    factors = [f for f in sp.Mul.make_args(rest) if f != 1]
    calls = [f for f in factors if f.func in (sp.exp, sp.sin, sp.cos)]
    powers = [f for f in factors if f not in calls]
    n = 0 if not powers else 1 if powers == [x] else None
    if len(powers) == 1 and powers[0].is_Pow and powers[0].base == x and powers[0].exp.is_Integer:
        n = int(powers[0].exp)
    if n is None or n < 0 or len(powers) > 1 or len(calls) > 1 or (calls and n > 1):
        return None
    if not calls:
        return _textbook("power", c, 1, x, n)[1]
    u = calls[0].args[0]
    a, b = u.coeff(x), u.subs(x, 0)
    if not (a.is_Rational and b.is_Rational and a != 0 and sp.expand(u - a * x - b) == 0):
        return None
    kind = {sp.exp: "exp", sp.sin: "sin", sp.cos: "cos"}[calls[0].func]
    return _textbook(("x_" if n else "") + kind, c, a, u)[1]


def _simple_pair(rng, max_terms):
    """(f, F): a sum of 1..max_terms integrand terms of different kinds (SIMPLE_KINDS), each with
    the antiderivative one textbook rule gives (power rule, linear substitution, one integration by
    parts)."""
    x = symbol_x()
    chosen, count = [], rng.randint(1, max_terms)
    while len(chosen) < count:
        kind = rng.choice(SIMPLE_KINDS[:1] * 3 + SIMPLE_KINDS)  # powers are the commonest exercise
        if kind not in chosen:
            chosen.append(kind)
    f = F = 0
    for kind in chosen:
        c, a = rng.choice([1, 1, 2, 3, 4, 5, -1, -2, -3]), rng.choice([1, 1, 2, 3, -1])
        shift = 0 if kind.startswith("x_") else rng.choice([0, 0, 0, 1, -1, 2])
        g, G = _textbook(kind, c, a, a * x + shift, n=rng.choice([0, 1, 2, 3]))
        f, F = f + g, F + G
    return f, F


def _difficulty(overrides):
    """DEFAULTS with `overrides`, checked: unknown knobs and impossible values are a ValueError."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown integration difficulty knob(s): {sorted(unknown)} (known: {sorted(DEFAULTS)})")
    d = {**DEFAULTS, **overrides}
    if d["atoms"] not in ATOMS:
        raise ValueError(f"atoms must be one of {ATOMS}, got {d['atoms']!r}")
    if not 0 <= d["definite"] <= 1:
        raise ValueError(f"definite is a share in [0, 1], got {d['definite']!r}")
    return d


def _constant_value(text):
    """The real value of a constant expression (text) as a float, or None if it has none."""
    value = values_at(parse(text), [0])[0]
    return None if value is None or value.imag != 0 else float(value.real)


def _definite_problem(problem, F, lower, upper):
    """`problem` made definite on [lower, upper] with value F(upper) - F(lower), or None when the
    integrand is not finite at both bounds (generated exercises stay regular there, and quick to
    check), the value is not a short real closed form, or the checker does not confirm it (F jumps
    in between, the integrand is complex there)."""
    import sympy as sp
    x = symbol_x()
    ends = [_constant_value(lower), _constant_value(upper)]
    if any(v is None for v in values_at(parse(problem["integrand"]), ends)):
        return None
    a, b = (to_sympy(parse(t)) for t in (lower, upper))
    value = F.subs(x, b) - F.subs(x, a)
    if value.has(sp.I, sp.zoo, sp.nan, sp.oo, -sp.oo):
        return None
    text = str(value)
    if len(text) > MAX_VALUE_LEN or canonical(text) != text:
        return None
    if not definite.check(problem["integrand"], lower, upper, text):
        return None
    return {"integrand": problem["integrand"], "lower": lower, "upper": upper,
            "antiderivative": problem["antiderivative"], "value": text}


def make_problems(n, seed, split="train", **difficulty):
    """`n` distinct problems of the split, fixed by `seed`.

    split "train" / "test": generated, a fixed hash partition apart, and never one of the Bee
    integrands; problem i is definite when floor((i + 1) * definite) > floor(i * definite), so the
    first k problems hold floor(k * definite) definite ones, for every k (a batch of 8 at the default
    share: 2). Split "bee": the first n of the fixed
    Integration Bee-style set (seed ignored). Difficulty knobs (see DEFAULTS): atoms, depth,
    max_terms, max_len, definite.
    """
    if split == "bee":
        if n > len(BEE):
            raise ValueError(f"the bee set has {len(BEE)} problems, asked for {n}")
        return [{k: _canonical_field(k, row[k]) for k in ("integrand", *REFERENCE) if k in row} for row in BEE[:n]]
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'bee', got {split!r}")
    d = _difficulty(difficulty)
    import sympy as sp
    x = symbol_x()
    rng = random.Random(f"integration/{split}/{seed}")
    seen = set(_bee_integrands())  # never train or test on the Bee set
    problems = []
    for _ in range(200 * n + 1000):
        if len(problems) == n:
            break
        if d["atoms"] == "simple":
            f, F = _simple_pair(rng, d["max_terms"])
        else:
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
        k = len(problems)
        if int((k + 1) * d["definite"]) > int(k * d["definite"]):
            problem = _definite_problem(problem, F, *rng.choice(BOUNDS[d["atoms"]]))
            if problem is None:
                continue
        seen.add(integrand)
        problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"only {len(problems)} distinct {split} problems found for these difficulty knobs")
    return problems


# -----------------------------------------------------------------------------
# the verifier: the checks of tasks/checks.py and tasks/definite.py in killable worker processes

TIMEOUT = 2.0  # default hard limit per verification, in seconds
POOL = Pool(check_job, setup=warm_up)  # the worker processes; started on the first verification


def shutdown():
    """Stop the verifier's worker processes (also runs at exit)."""
    POOL.close()


def _job(problem, answer, timeout):
    """The worker job for (problem, answer), or None when either is malformed (then it is False)."""
    if not isinstance(problem, dict) or parse(answer) is None:
        return None
    integrand = problem.get("integrand")
    if parse_integrand(integrand) is None:
        return None
    if not is_definite(problem):
        return [integrand, answer, timeout]
    lower, upper = problem.get("lower"), problem.get("upper")
    if definite.bounds(lower, upper) is None:
        return None
    return [integrand, answer, timeout, lower, upper]


def verify_many(problems, answers, timeout=TIMEOUT, workers=None):
    """[verify(p, a) for p, a in zip(problems, answers)], spread over worker processes.

    Each answer gets its own `timeout` seconds of worker time; one that runs out is False (its
    worker is killed and replaced). Malformed answers are rejected here without a worker.
    """
    results = [False] * len(answers)
    todo, jobs = [], []
    for i, (problem, answer) in enumerate(zip(problems, answers)):
        job = _job(problem, answer, timeout)
        if job is not None:
            todo.append(i)
            jobs.append(job)
    for i, verdict in zip(todo, POOL.map(jobs, timeout, workers, default=False)):
        results[i] = verdict
    return results


def verify(problem, answer, timeout=TIMEOUT):
    """Indefinite: True iff `answer` (sympy-syntax text) is an antiderivative of the problem's
    integrand, up to a constant. Where the integrand is real for x > 0 the answer is checked there
    (as integral tables and Bee answer keys mean it: acosh(x) passes for 1/sqrt(x**2 - 1)), otherwise
    for x < 0, otherwise wherever it is finite; agreement means within 1e-8 of the interval's scale
    (1e-20 pointwise at 40 digits for what short intervals cannot decide).
    Definite: True iff `answer` is a constant whose value is the integral's, to 1e-12 of the integral
    of |integrand| (tasks/definite.py).
    Runs in a worker process under a hard `timeout` (False when it runs out). The first call in a
    process waits for the worker to start (about a second); that wait is not charged to `timeout`.
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
# the same instruction for a definite integral: the answer is its exact value
SOLVER_USER_DEFINITE = ("{problem}\nSolve the following definite integral. Provide ONLY its exact value as a valid "
                        "Python sympy expression e.g  <answer>pi/4 - ln(2)/2</answer> wrapped in a <answer> tags. "
                        "Importantly, put * between terms you want to multiply! Show your full working out before "
                        "solving; give the exact value, not a decimal approximation. DO NOT OUTPUT IN LATEX FORMAT. "
                        "OUTPUT IN SYMPY in <answer> tags.")
JUDGE_SYSTEM = "You are an expert at mathematical differentiation."
# RLSR's integration judge: differentiate the answer and compare with the integrand
JUDGE_USER = ("Please check if the following is a valid function: {answer}. If it is, differentiate it and "
              "determine if it is functionally equal to {integrand}. Output <JUDGE_SCORE>1</JUDGE_SCORE> if they "
              "are equal. Output <JUDGE_SCORE>0</JUDGE_SCORE> if they are not equal or if it is not a valid "
              "function. Ignore constants of integration.")
# a definite answer has no function to differentiate: the judge finds an antiderivative, confirms it
# by differentiating it (the easy direction, as above) and evaluates it at the bounds
JUDGE_USER_DEFINITE = ("Please check if the following is a valid number: {answer}. If it is, find an antiderivative "
                       "F(x) of {integrand} and confirm it by differentiating it: F'(x) must equal {integrand}. Then "
                       "evaluate F({upper}) - F({lower}) and determine if it is equal to {answer}. Output "
                       "<JUDGE_SCORE>1</JUDGE_SCORE> if they are equal. Output <JUDGE_SCORE>0</JUDGE_SCORE> if they "
                       "are not equal or if it is not a valid number.")
PROPOSE_USER = ("Here are some integrals:\n{examples}\nWrite one new integral of similar difficulty whose "
                "antiderivative is an elementary function (sums, products and compositions of powers, exp, log, "
                "trigonometric and inverse trigonometric functions). Write the integrand in sympy syntax with x as "
                "the variable. Think first, then give the problem in <answer> </answer> tags in exactly this form: "
                "<answer>integrate(x*exp(x), x)</answer>, or for a definite integral "
                "<answer>integrate(x*exp(x), (x, 0, 1))</answer>")


def problem_text(problem, defang=False):
    """The canonical text of a problem, as RLSR writes it: "integrate(x*sin(x), x)", or
    "integrate(x*sin(x), (x, 0, pi))" when definite. `defang`: each field neutralised (for prompts
    that show a problem whose fields may come from model text)."""
    field = (lambda k: neutralise(problem[k])) if defang else (lambda k: problem[k])
    if is_definite(problem):
        return f"integrate({field('integrand')}, (x, {field('lower')}, {field('upper')}))"
    return f"integrate({field('integrand')}, x)"


def prompt(problem, style="full"):
    """Solver messages: RLSR's integration prompt ("full") or just the problem text ("compact")."""
    if check_style(style) == "compact":
        return [{"role": "user", "content": problem_text(problem)}]
    user = SOLVER_USER_DEFINITE if is_definite(problem) else SOLVER_USER
    return [{"role": "system", "content": SOLVER_SYSTEM},
            {"role": "user", "content": user.format(problem=problem_text(problem))}]


def judge_prompt(problem, answer, style="full"):
    """Judge messages: the problem and the extracted answer only (neutralised), never the reasoning.
    Indefinite: differentiate the answer; definite: find, confirm and evaluate an antiderivative."""
    answer = judged_answer(answer)
    if check_style(style) == "compact":
        return [{"role": "user", "content": f"check {problem_text(problem, defang=True)} answer {answer}"}]
    integrand = neutralise(problem["integrand"])
    if is_definite(problem):
        user = JUDGE_USER_DEFINITE.format(answer=answer, integrand=integrand, lower=neutralise(problem["lower"]),
                                          upper=neutralise(problem["upper"]))
    else:
        user = JUDGE_USER.format(answer=answer, integrand=integrand)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def propose_prompt(examples, style="full"):
    """Messages asking the model to write a new integral like `examples` (a list of problems)."""
    lines = "\n".join(problem_text(e, defang=True) for e in examples)
    if check_style(style) == "compact":
        return [{"role": "user", "content": "propose\n" + lines}]
    return [{"role": "system", "content": SOLVER_SYSTEM},
            {"role": "user", "content": PROPOSE_USER.format(examples=lines)}]


MAX_PROPOSED_TOKENS = 120  # a proposed integrand is short
MAX_CALL_NESTING = 3      # sin(exp(log(...))) at most


def _call_nesting(node):
    inner = [_call_nesting(c) for c in (node[2] if node[0] == "call" else node[1:]) if isinstance(c, tuple)]
    return (node[0] == "call") + max(inner, default=0)


def _looks_integrable(node, points=(0.3, 0.7, 1.3, 2.1, 3.7), real=False):
    """Cheap filters for a proposed integrand: small, depends on x, no x**x-style towers, finite
    and moderate (and `real`) at most of `points` (a few on x > 0, or inside a definite integral's
    bounds, where it must be real).
    (Whether an elementary antiderivative exists, or a definite integral converges, is not decided
    cheaply; this only throws out what clearly is not a sensible exercise.)"""
    if not has_x(node) or _call_nesting(node) > MAX_CALL_NESTING:
        return False

    def towers(n):  # x in both base and exponent, or x in an exponent of an exponent
        if n[0] == "**" and has_x(n[2]) and has_x(n[1]):
            return True
        children = n[2] if n[0] == "call" else [c for c in n[1:] if isinstance(c, tuple)]
        return any(towers(c) for c in children)

    if towers(node):
        return False
    values = values_at(node, points)
    moderate = sum(v is not None and abs(v) < 1e10 and (not real or abs(v.imag) <= 1e-9 * (1 + abs(v)))
                   for v in values)
    return moderate >= 0.6 * len(points)  # mostly real, finite and moderate where the checker looks first


MAX_BOUND = 100  # proposed bounds lie in [-MAX_BOUND, MAX_BOUND]


def _top_level_split(text):
    """`text` split at the commas outside parentheses, or None if its parentheses do not balance."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return None
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]] if depth == 0 else None


def _integrate_call(text):
    """(integrand, bounds) from the last "integrate(f, x)" or "integrate(f, (x, a, b))" in `text`;
    bounds is None or (a, b) as text; None if there is no well-formed call."""
    start = text.rfind("integrate(")
    body, depth = text[start + len("integrate("):], 1
    for end, ch in enumerate(body):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            break
    else:
        return None
    parts = _top_level_split(body[:end])
    if parts is None or len(parts) != 2:
        return None
    integrand, var = parts[0], parts[1].strip()
    if var == "x":
        return integrand, None
    if not (var.startswith("(") and var.endswith(")")):
        return None
    spec = _top_level_split(var[1:-1])
    if spec is None or len(spec) != 3 or spec[0].strip() != "x":
        return None
    return integrand, (spec[1], spec[2])


def _parse_bounds(lower, upper):
    """Canonical (lower, upper) for a proposed definite integral, or None: constants, real, finite,
    distinct and within MAX_BOUND."""
    lower, upper = canonical(lower), canonical(upper)
    if lower is None or upper is None or definite.bounds(lower, upper) is None:
        return None
    values = [_constant_value(t) for t in (lower, upper)]
    if any(v is None or abs(v) > MAX_BOUND for v in values) or values[0] == values[1]:
        return None
    return lower, upper


def parse_problem(text):
    """A problem from model text ("integrate(f, x)" or "integrate(f, (x, a, b))", in <answer> tags
    or not, or a bare integrand), or None. The integrand must pass the answer whitelist, be short,
    depend on x and look like a sensible exercise (on the interval, when definite); the bounds must
    be real constants within MAX_BOUND. Fields come back in sympy's canonical spelling."""
    if not isinstance(text, str):
        return None
    text = (extract_answer(text) or text)[-2000:]
    bounds = None
    if "integrate(" in text:
        call = _integrate_call(text)
        if call is None:
            return None
        integrand, bounds = call
    else:
        integrand = text.strip()
    tokens = tokenize(integrand)
    if tokens is None or len(tokens) > MAX_PROPOSED_TOKENS or ("name", "C") in tokens:
        return None
    node = parse(integrand)
    if node is None:
        return None
    problem = {}
    if bounds is not None:
        bounds = _parse_bounds(*bounds)
        if bounds is None:
            return None
        a, b = (_constant_value(t) for t in bounds)
        if not _looks_integrable(node, [a + (b - a) * k / 8 for k in range(1, 8)], real=True):
            return None
        problem = {"lower": bounds[0], "upper": bounds[1]}
    elif not _looks_integrable(node):
        return None
    integrand = canonical(integrand)
    if integrand is None or "x" not in integrand or len(integrand) > 200:
        return None
    return {"integrand": integrand, **problem}


# -----------------------------------------------------------------------------
# supervised data for the tiny model: worked solutions, worked judgements, near misses

MAX_STEP_TERMS = 4  # an antiderivative with more terms is integrated / differentiated in one line


def _antiderivative(problem):
    F = problem.get("antiderivative")
    if not F or parse(F) is None:
        raise ValueError(f"problem has no usable antiderivative: {problem!r}")
    return F


def _sympy(text):
    return to_sympy(parse(text), symbol_x())


def _terms(expr):
    """The terms of a sum, one per step (the whole expression when there are too many)."""
    terms = expr.as_ordered_terms()  # in printed order
    return terms if len(terms) <= MAX_STEP_TERMS else [expr]


def reference_answer(problem):
    """The problem's own correct answer: its value when definite, else its antiderivative."""
    return _value(problem) if is_definite(problem) else _antiderivative(problem)


def _value(problem):
    """The reference value of a definite problem (text): its "value", else F(upper) - F(lower)."""
    if problem.get("value"):
        return problem["value"]
    return str(_antiderivative_at(problem, "upper") - _antiderivative_at(problem, "lower"))


def _antiderivative_at(problem, end):
    """The reference antiderivative at the bound `end` ("lower" or "upper"), a sympy number: its
    limit from inside the interval where F is 0*log(0) or the like there (x**4*log(x)/4 at 0)."""
    import sympy as sp
    F, x, at, other = _sympy(_antiderivative(problem)), symbol_x(), _sympy(problem[end]), _sympy(
        problem["upper" if end == "lower" else "lower"])
    value = F.subs(x, at)
    if value.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
        value = sp.limit(F, x, at, "+" if bool(other > at) else "-")
    return value


def _evaluation_steps(problem):
    """Lines evaluating the reference antiderivative at the bounds: "F(1) = ...", "F(0) = ..."."""
    return [f"F({problem[end]}) = {_antiderivative_at(problem, end)}" for end in ("upper", "lower")]


def solution_text(problem, rng, style="compact"):
    """A correct solver response ending in an answer block. Compact: one "int g = G" line per
    integrand term (when each has a textbook antiderivative), then (definite) F at both bounds, then
    the answer. Needs the problem's antiderivative, or (definite) its value."""
    if is_definite(problem):
        value = _value(problem)
        F = problem.get("antiderivative")
        steps = []
        if F:
            steps = (_integration_steps(problem)[0] or [f"F = {F}"]) + _evaluation_steps(problem)
        if check_style(style) == "compact":
            return "\n".join(steps + [f"<answer>{value}</answer>"])
        work = f"An antiderivative of {problem['integrand']} is {F}; " if F else ""
        return (f"<think> {work}the integral from {problem['lower']} to {problem['upper']} is {value}. </think>\n"
                f"<answer> {value} </answer>")
    if check_style(style) == "compact":
        steps, F = _integration_steps(problem)
        return "\n".join(steps + [f"<answer>{F}</answer>"])
    F = _antiderivative(problem)
    return (f"<think> An antiderivative of {problem['integrand']} is {F}; differentiating it gives back "
            f"{problem['integrand']}. </think>\n<answer> {F} </answer>")


def _integration_steps(problem):
    """ "int g = G" per term g of the integrand when every term has a textbook antiderivative
    (the simple family), with the answer they add up to; else ([], the reference antiderivative)."""
    import sympy as sp
    F = _antiderivative(problem)
    terms = _sympy(problem["integrand"]).as_ordered_terms()
    found = [_textbook_integral(g) for g in terms] if len(terms) <= MAX_STEP_TERMS else [None]
    if any(G is None for G in found):
        return [], F
    return [f"int {g} = {G}" for g, G in zip(terms, found)], str(sp.Add(*found))


def _differentiation_steps(answer):
    """ "d/dx G = g" per term G of the answer, then "sum ..." when there are several; None if the
    answer is not a valid function."""
    import sympy as sp
    x = symbol_x()
    node = parse(answer)
    try:
        expr = to_sympy(node, x) if node is not None else None
        if expr is None:
            return None
        terms = _terms(expr)
        lines = [f"d/dx {term} = {sp.diff(term, x)}" for term in terms]
        return lines + ([f"sum {sp.diff(expr, x)}"] if len(terms) > 1 else [])
    except (Reject, RecursionError, ValueError, TypeError, ZeroDivisionError):
        return None


def judge_text(problem, answer, style="compact"):
    """The ideal judge response, then the verdict (which always agrees with `verify`).
    Indefinite: differentiate the answer term by term and compare with the integrand. Definite:
    take an antiderivative, confirm it by differentiating it, evaluate it at the bounds and
    compare with the answer (the reference value alone when the problem has no antiderivative)."""
    verdict = int(verify(problem, answer))
    node = parse(answer)
    if not is_definite(problem):
        steps = _differentiation_steps(answer)
        if steps is None:
            lines = ["not a valid function"]
        else:
            lines = steps + [f"integrand {problem['integrand']}", "same" if verdict else "differs"]
        intro = "Let me differentiate the answer and compare it with the integrand."
    else:
        if node is None or has_x(node):
            lines = ["not a valid number"]
        else:
            lines = []
            if problem.get("antiderivative"):
                F = _antiderivative(problem)
                lines += [f"F = {F}", f"d/dx F = {_sympy(F).diff(symbol_x())}"] + _evaluation_steps(problem)
            lines += [f"value {_value(problem)}", f"answer {answer.strip()}", "same" if verdict else "differs"]
        intro = "Let me find an antiderivative, check it by differentiating it, and evaluate it at the bounds."
    if check_style(style) == "full":
        lines = [intro] + lines
    return "\n".join(lines) + f"\n<JUDGE_SCORE>{verdict}</JUDGE_SCORE>"


def _wrong_value(problem, rng):
    """A plausible WRONG value of a definite integral: the sign flipped, a factor off, one off, only
    the upper bound's F(b) (the lower's forgotten), or pi halved."""
    import sympy as sp
    value = _sympy(_value(problem))
    options = [-value, 2 * value, value / 2, value + 1, value - 1, 3 * value]
    if problem.get("antiderivative"):
        options.append(_antiderivative_at(problem, "upper"))
    if value.has(sp.pi):
        options.append(value.subs(sp.pi, sp.pi / 2))
    rng.shuffle(options)
    for wrong in options:
        text = str(wrong)
        if parse(text) is not None and not verify(problem, text):
            return text
    return f"{value} + 1"  # always wrong: off by one


_PARTNERS = {"sin": "cos", "cos": "sin", "sinh": "cosh", "cosh": "sinh", "tan": "cot", "cot": "tan",
             "asin": "acos", "acos": "asin", "atan": "asin", "exp": "log", "log": "exp", "sqrt": "log",
             "sec": "csc", "csc": "sec", "tanh": "atan", "asinh": "atan", "acosh": "asinh"}


def near_miss(problem, rng):
    """A plausible WRONG answer. Indefinite: a sign error, a missing or extra factor, a wrong
    function or a wrong power in the problem's antiderivative (what a weak model gets wrong).
    Definite: a wrong value (see _wrong_value)."""
    import sympy as sp
    if is_definite(problem):
        return _wrong_value(problem, rng)
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
