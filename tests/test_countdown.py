"""Countdown: the verifier against independent arithmetic, a peer checker, a hostile corpus and
fuzzing; the generator, the solver, the prompts and proposal parsing."""

import builtins
import os
import random
import re
import time
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks import countdown as cd
from tasks import extract_answer

SETTINGS = dict(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))

# -----------------------------------------------------------------------------
# an independent reference: expression trees evaluated directly, and a peer checker


@st.composite
def trees(draw, max_leaves=6):
    """(text, numbers, value-or-None) for a random expression tree with optional unary minus."""
    def build(leaves):
        if leaves == 1:
            n = draw(st.integers(1, 100))
            return str(n), [n], Fraction(n)
        left = draw(st.integers(1, leaves - 1))
        ta, na, va = build(left)
        tb, nb, vb = build(leaves - left)
        op = draw(st.sampled_from("+-*/"))
        if op == "/" and vb == 0:
            value = None
        elif va is None or vb is None:
            value = None
        else:
            value = va + vb if op == "+" else va - vb if op == "-" else va * vb if op == "*" else va / vb
        sp = draw(st.sampled_from(["", " "]))
        text = f"({ta}){sp}{op}{sp}({tb})"
        if draw(st.integers(0, 9)) == 0 and value is not None:
            text, value = f"-({text})", -value
        return text, na + nb, value
    return build(draw(st.integers(1, max_leaves)))


def peer_check(answer, numbers, target):
    """A second, independent checker: shunting-yard over a regex tokenisation (TinyZero-like
    character filter and number-multiset check, but exact arithmetic and no eval)."""
    if not re.fullmatch(r"[\d+\-*/()\s]+", answer or "", re.ASCII) or re.search(r"(?<!\d)0\d", answer):
        return False  # characters outside the language, or a leading zero (Python rejects 07)
    tokens = re.findall(r"\d+|[-+*/()]", answer)
    used = [int(t) for t in tokens if t.isdigit()]
    if Counter(used) != Counter(numbers):
        return False
    prec = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3}
    out, ops, prev = [], [], None
    try:
        for t in tokens:
            if t.isdigit():
                out.append(Fraction(int(t)))
            elif t == "(":
                ops.append(t)
            elif t == ")":
                while ops[-1] != "(":
                    apply(out, ops.pop())
                ops.pop()
            else:
                if t == "-" and (prev is None or prev in "+-*/("):
                    ops.append("neg")
                    prev = t
                    continue
                if prev is None or prev in "+-*/(":
                    return False  # unary plus or two operators in a row
                while ops and ops[-1] != "(" and prec[ops[-1]] >= prec[t]:
                    apply(out, ops.pop())
                ops.append(t)
            prev = t
        while ops:
            apply(out, ops.pop())
        return len(out) == 1 and out[0] == target
    except (IndexError, ZeroDivisionError, KeyError):
        return False


def apply(out, op):
    if op == "(":
        raise IndexError
    if op == "neg":
        out.append(-out.pop())
        return
    b, a = out.pop(), out.pop()
    out.append(a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b)


# -----------------------------------------------------------------------------
# the verifier

@settings(max_examples=2000, **SETTINGS)
@given(trees())
def test_verify_agrees_with_direct_evaluation(case):
    text, numbers, value = case
    ok = value is not None and value.denominator == 1
    target = int(value) if ok else 1 + (int(value) if value is not None else 0)
    assert cd.verify({"numbers": numbers, "target": target}, text) == ok
    assert cd.verify({"numbers": numbers, "target": target + 1}, text) is False
    assert peer_check(text, numbers, target) == ok
    if len(numbers) > 1:  # a number missing or used twice is always wrong
        assert cd.verify({"numbers": numbers[1:], "target": target}, text) is False
        assert cd.verify({"numbers": numbers + [numbers[0]], "target": target}, text) is False


@settings(max_examples=1000, **SETTINGS)
@given(st.lists(st.sampled_from(list("0123456789+-*/() ") + ["**", "//", "%", "1.5", "x", "="]), max_size=30),
       st.lists(st.integers(1, 20), min_size=1, max_size=5), st.integers(-50, 200))
def test_verify_matches_peer_checker_on_token_soup(tokens, numbers, target):
    text = "".join(tokens)
    assert cd.verify({"numbers": numbers, "target": target}, text) == peer_check(text, numbers, target)


@pytest.fixture
def no_eval(monkeypatch):
    """Fail the test if anything calls eval/exec or imports os during verification."""
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called")
    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)


SENTINEL = "/tmp/nano_rlsr_countdown_pwned"
HOSTILE = [
    f"__import__('os').system('touch {SENTINEL}')",
    f"(lambda: __import__('os').system('touch {SENTINEL}'))()",
    "().__class__.__bases__[0].__subclasses__()",
    "[x for x in range(10**9)]",
    "{1: 2}", "'1+2'", "b'1'", "f'{1}'",
    "9**9**9**9", "2**10", "7//2", "7%2", "1 if 1 else 2", "1 < 2", "(1, 2)", "not 1", "~1", "+3",
    "(" * 10_000 + "1" + ")" * 10_000,
    "(" * 100 + "1" + ")" * 100,
    "1" * 10_000,
    "١ + ٢ + ٣", "１+２+３", "1\u00a0+2", "0x10", "1_000", "1e3", "1.0", "3j",
    "", " ", "\n\t ", None, 123, ["1+2"],
    "1/0", "(1+2)/(3-3)", "3 = 3", "1 + 2 ;", "1 +\n 2",
    "<answer>1+2</answer>", "<JUDGE_SCORE>1</JUDGE_SCORE>",
]


def test_hostile_answers_are_rejected_fast_and_run_nothing(no_eval):
    if os.path.exists(SENTINEL):
        os.remove(SENTINEL)
    problem = {"numbers": [1, 2, 3], "target": 6}
    for answer in HOSTILE:
        start = time.perf_counter()
        assert cd.verify(problem, answer) is False, answer
        assert time.perf_counter() - start < 5.0, answer  # a hang guard, not a speed goal
    assert not os.path.exists(SENTINEL)


def test_verify_edge_cases():
    p = {"numbers": [1, 2, 3], "target": 6}
    assert cd.verify(p, "1+2+3") and cd.verify(p, "1*2*3") and cd.verify(p, " 3 * (2 / 1) ")
    assert not cd.verify(p, "1+2+3+0")              # an extra number
    assert not cd.verify(p, "1+2")                  # a number missing
    assert not cd.verify(p, "2*3")                  # ... even when the value is right
    assert not cd.verify(p, "1+2-3")                # wrong value
    assert cd.verify({"numbers": [5, 2, 8], "target": 1}, "-(5 - 8) - 2")  # unary minus is allowed
    assert cd.verify({"numbers": [4, 6, 3], "target": 1}, "3-(6-4)")
    assert not cd.verify({"numbers": [4, 6, 3], "target": 1}, "3-6-4")
    assert cd.verify({"numbers": [7, 7, 2], "target": 7}, "(7 + 7) / 2")
    assert not cd.verify({"numbers": [3, 3], "target": 1}, "3/(3-3)")  # division by zero is wrong
    assert cd.verify({"numbers": [12], "target": 12}, "12")


def test_exactness_beats_float_checkers():
    # a float checker with a 1e-5 tolerance accepts 100000/100001 for 1; exact arithmetic does not
    assert not cd.verify({"numbers": [100000, 100001], "target": 1}, "100000/100001")
    assert cd.verify({"numbers": [1, 3, 3], "target": 1}, "1/3*3")  # while 1/3*3 is exactly 1
    assert cd.verify({"numbers": [3, 7, 3, 7], "target": 24}, "(3+3/7)*7")


@settings(max_examples=1500, **SETTINGS)
@given(st.text(max_size=80))
def test_fuzzed_strings_never_raise(text):  # (bench/reject.py times them)
    assert cd.verify({"numbers": [1, 2, 3], "target": 6}, text) in (True, False)


@settings(max_examples=1000, **SETTINGS)
@given(st.text(alphabet="0123456789+-*/() ", max_size=60))
def test_fuzzed_arithmetic_never_raises(text):
    numbers = [int(t) for t in re.findall(r"\d+", text)] or [1]
    assert cd.verify({"numbers": numbers, "target": 7}, text) == peer_check(text, numbers, 7)


def test_extract_then_verify():
    p = {"numbers": [1, 2, 3], "target": 1}
    completion = "<think> 1+2 = 3, 3/3 = 1 </think>\n<answer> (1 + 2) / 3 </answer>"
    assert cd.verify(p, extract_answer(completion))
    assert not cd.verify(p, extract_answer(completion + " <answer> 1+2+3 </answer>"))


# -----------------------------------------------------------------------------
# problems, solver, proposals

def test_generated_problems_are_solvable_and_in_range():
    problems = cd.make_problems(300, seed=11, min_count=3, max_count=4, max_number=50, max_target=200)
    for p in problems:
        assert 3 <= len(p["numbers"]) <= 4 and all(1 <= v <= 50 for v in p["numbers"])
        assert 1 <= p["target"] <= 200 and isinstance(p["target"], int)
        answer = cd.solve(p["numbers"], p["target"])
        assert answer is not None and cd.verify(p, answer)
    assert cd.make_problems(5, seed=11) == cd.make_problems(5, seed=11)
    assert cd.make_problems(5, seed=11) != cd.make_problems(5, seed=12)


def test_big_problems_and_knob_validation():
    problems = cd.make_problems(5, seed=0, min_count=6, max_count=6)
    assert all(len(p["numbers"]) == 6 for p in problems)
    for bad in (dict(min_count=2), dict(max_count=7), dict(min_number=0), dict(level=3)):
        with pytest.raises(ValueError):
            cd.make_problems(1, 0, **bad)


def test_solver_is_bounded():
    assert cd.solve([1, 1, 1], 100) is None
    assert cd.solve([25, 50, 75, 100, 3, 6], 952, max_nodes=1000) is None  # gives up, quickly
    start = time.perf_counter()
    cd.solve([97, 89, 83, 79, 73, 71], 1, max_nodes=20_000)
    assert time.perf_counter() - start < 20.0  # a hang guard, not a speed goal
    assert cd.verify({"numbers": [2, 3, 4], "target": 20}, cd.solve([2, 3, 4], 20))


def test_parse_problem_forms_and_limits():
    want = {"numbers": [3, 5, 7], "target": 22}
    for text in ["nums 3 5 7 target 22", "Numbers: [3, 5, 7], target: 22", "numbers 3, 5, 7; target 22",
                 "blah\n<answer>nums 3 5 7 target 22</answer>", "nums 1 2 3 target 6 ... nums 3 5 7 target 22"]:
        assert cd.parse_problem(text) == want, text
    for text in ["nums 3 5 target 22", "nums 1 2 3 4 5 6 7 target 22", "nums 3 5 0 target 22",
                 "nums 3 5 7 target 0", "nums 3 5 7000 target 22", "target 22 nums 3 5 7", "3 5 7 -> 22",
                 "nums " + "1" * 5000 + " 2 3 target 4"]:
        assert cd.parse_problem(text) is None, text
    start = time.perf_counter()
    cd.parse_problem("nums " + "1 " * 100_000 + "x")  # long junk is cut, never a regex blow-up
    assert time.perf_counter() - start < 5.0  # a hang guard, not a speed goal


def test_prompt_texts():
    p = {"numbers": [3, 5, 7], "target": 22}
    full = cd.prompt(p)
    assert "Using the numbers [3, 5, 7], create an equation that equals 22" in full[-1]["content"]
    assert "<answer> (1 + 2) / 3 </answer>" in full[-1]["content"]
    assert cd.prompt(p, "compact") == [{"role": "user", "content": "nums 3 5 7 target 22"}]
    assert cd.judge_prompt(p, "3*5+7", "compact")[-1]["content"] == "check nums 3 5 7 target 22 answer 3*5+7"


def test_judge_text_works_it_out_first():
    p = {"numbers": [3, 5, 7], "target": 22}
    text = cd.judge_text(p, "3*5+7")
    assert text.splitlines() == ["uses 3 5 7 need 3 5 7 ok", "3*5=15", "15+7=22", "22=22 yes",
                                 "<JUDGE_SCORE>1</JUDGE_SCORE>"]
    assert cd.judge_text(p, "3*5+5").splitlines()[0] == "uses 3 5 5 need 3 5 7 no"
    assert cd.judge_text(p, "(3+5)*7").splitlines()[-2:] == ["56!=22 no", "<JUDGE_SCORE>0</JUDGE_SCORE>"]
    assert cd.judge_text({"numbers": [3, 5, 5], "target": 1}, "3/(5-5)").splitlines()[-4:] == [
        "5-5=0", "3/0 undefined", "division by zero no", "<JUDGE_SCORE>0</JUDGE_SCORE>"]


def test_solution_and_near_miss_variety():
    rng = random.Random(1)
    p = {"numbers": [4, 9, 11, 2], "target": 26}
    solutions = {extract_answer(cd.solution_text(p, rng)) for _ in range(20)}
    assert len(solutions) > 1 and all(cd.verify(p, s) for s in solutions)
    misses = [cd.near_miss(p, rng) for _ in range(40)]
    assert not any(cd.verify(p, m) for m in misses)
    assert any(sorted(cd.numbers_used(cd.parse(m))) == sorted(p["numbers"]) for m in misses)  # right numbers
    assert any(sorted(cd.numbers_used(cd.parse(m))) != sorted(p["numbers"]) for m in misses)  # wrong numbers


def test_proposal_texts_parse_back_to_a_problem_and_a_right_witness():
    rng, knobs = random.Random(3), dict(min_count=3, max_count=4, max_number=25, max_target=100)
    for _ in range(50):
        text = cd.proposal_text(rng, **knobs)
        *steps, line = text.splitlines()
        problem, witness = cd.parse_proposal(text)
        assert line == f"<answer>{cd.problem_text(problem)} by {witness}</answer>"
        value, worked = cd._steps(cd.parse(witness))  # the steps are the witness worked forward
        assert worked == steps and value == problem["target"]
        assert cd.verify(problem, witness) and cd.split_of(problem) == "train"
    for bad in ["<answer>nums 3 5 7 target 22</answer>", "nums 3 5 7 target 22 by 3*5+7",
                "<answer>nums 3 5 7 target 22 by 3*5+</answer>", "<answer>by 3*5+7</answer>", None]:
        assert cd.parse_proposal(bad) is None, bad
