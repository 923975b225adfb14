"""Integrands that are identically zero but vanish only numerically: the three cosines 2*pi/3 apart
sum to 0, so at 40 digits their sum is rounding error, not 0. The verifier must still decide them:
any constant is an antiderivative, anything with a nonzero derivative is not."""

import time

import pytest

from tasks import checks, definite
from tasks import integration as it

COSINES = "cos(x) + cos(x + 2*pi/3) + cos(x - 2*pi/3)"  # identically 0
BEE_ZERO = f"({COSINES})**2"                           # the Integration Bee integral
CONSTANTS = ["0", "5", "C", "-3/2", "pi", "C + 7", "log(2)"]
NOT_CONSTANT = ["x", "sin(x)", "x**2", "cos(x)", "x + C", "10**-6*x"]


@pytest.fixture
def numeric_only(monkeypatch):
    """The check with its sympy tier switched off: the verdicts below must come from the numeric tiers."""
    monkeypatch.setattr(checks, "_symbolic", lambda f, F: pytest.fail("reached the sympy tier"))


@pytest.mark.parametrize("integrand", [BEE_ZERO, COSINES])
def test_a_vanishing_integrand_accepts_every_constant_numerically(integrand, numeric_only):
    for answer in CONSTANTS:
        assert checks.check(integrand, answer, time.monotonic() + 10) is True, answer


@pytest.mark.parametrize("integrand", [BEE_ZERO, COSINES, "sin(x) - sin(x)"])
def test_a_vanishing_integrand_rejects_what_is_not_constant_numerically(integrand, numeric_only):
    for answer in NOT_CONSTANT:
        assert checks.check(integrand, answer, time.monotonic() + 10) is False, answer


def test_an_exact_zero_is_left_to_sympy():
    """sin(x) - sin(x) is exactly 0 at every precision, as is exp(-1000*x**2) wherever its exponent is
    below -300: exact zeros prove nothing numerically, so 0 is not taken for an antiderivative of
    x*exp(-1000*x**2) from the points where it underflows."""
    for answer in CONSTANTS:
        assert checks.check("sin(x) - sin(x)", answer, time.monotonic() + 10) is True, answer
    assert checks.check("x*exp(-1000*x**2)", "0", time.monotonic() + 10) is False
    assert checks.check("x*exp(-1000*x**2)", "-exp(-1000*x**2)/2000", time.monotonic() + 10) is True


def test_a_vanishing_term_next_to_a_real_one():
    f = f"{BEE_ZERO} + 2*x"
    assert checks.check(f, "x**2", time.monotonic() + 10) is True
    assert checks.check(f, "x**2 + 3", time.monotonic() + 10) is True
    assert checks.check(f, "x**2 + x", time.monotonic() + 10) is False


def test_an_answer_that_is_itself_a_zero_sum_is_not_rejected_for_its_rounding():
    """F = the three cosines is a constant (0); at 40 and 80 digits F' and f are both rounding noise,
    which proves no mismatch: the numeric tiers leave it undecided and sympy accepts it."""
    assert checks.check(BEE_ZERO, COSINES, time.monotonic() + 20) is True


def test_rounding_noise_in_the_answer_proves_nothing():
    """A huge multiple of the zero sum in the answer drowns 7*x in rounding noise at 40 and 80 digits:
    that must never pass for a derivative of 0."""
    hidden = f"7*x + 10**100*({COSINES})*x"
    assert checks.check(BEE_ZERO, hidden, time.monotonic() + 10) is False
    assert checks.check("x", f"x**2/2 + {hidden}", time.monotonic() + 10) is False


def test_tiny_but_nonzero_integrands_are_not_zero():
    """Small values are not rounding: mpmath keeps their digits, so 0 is no antiderivative of them."""
    assert checks.check("10**-50*x", "10**-50*x**2/2", time.monotonic() + 10) is True
    assert checks.check("10**-50*x", "0", time.monotonic() + 10) is False
    assert checks.check("(1 + 10**-50*x) - 1", "0", time.monotonic() + 10) is False  # 0 at 40 digits only


def test_through_the_verifier_pool():
    problem = {"integrand": BEE_ZERO}
    answers = ["0", "5", "C", "x", "sin(x)"]
    it.verify({"integrand": "x"}, "x**2/2")  # the worker's start is not charged to the calls below
    start = time.perf_counter()
    assert it.verify_many([problem] * len(answers), answers) == [True, True, True, False, False]
    assert time.perf_counter() - start < 2 * it.TIMEOUT  # decided, not timed out


@pytest.mark.parametrize("lower, upper", [("0", "1"), ("0", "pi"), ("-pi/2", "pi/2"), ("1", "E")])
def test_the_definite_integral_of_a_vanishing_integrand_is_0(lower, upper):
    for integrand in (BEE_ZERO, COSINES):
        assert definite.check(integrand, lower, upper, "0", time.monotonic() + 20) is True
        for wrong in ["1", "pi", "10**-6", "-1/3"]:
            assert definite.check(integrand, lower, upper, wrong, time.monotonic() + 20) is False, wrong
    assert it.verify({"integrand": BEE_ZERO, "lower": lower, "upper": upper}, "0") is True
