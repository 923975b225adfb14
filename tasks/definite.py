"""definite — the value of a definite integral, and the check of a closed-form answer against it.

A definite problem carries "lower" and "upper" next to its integrand: constants in the answer
language (no x), parsed by the same whitelisting parser and under the same cost limits ("0", "pi/2",
"-1", "log(2)", "E"), or a whole bound "oo" or "-oo" (oo is no part of the answer language: an
integrand or an answer with oo in it is rejected). Its answer is a finite constant too ("4/15",
"-pi*log(2)/2"), never executed.

  bounds(lower, upper) -> (a, b) | None       the bounds' trees (INFINITE for oo, -oo), or None
                                              unless both are constants
  integral(integrand, lower, upper, deadline) -> Integral | None
                                              the integral at DPS digits (remembered per problem)
  check(integrand, lower, upper, answer, deadline) -> bool
                                              True iff the answer's value is the integral's

Method: tanh-sinh quadrature (mpmath.quad) at DPS digits on [a, m, b], m the midpoint, plus every
point in between where the argument of an abs() changes sign (a kink there would slow the quadrature
from 30 digits to 6; sampled ever sparser towards an infinite bound, out to 500). Tanh-sinh never
evaluates an endpoint and crowds its nodes towards them doubly
exponentially, so integrable endpoint singularities (1/sqrt(x), log(x) on [0, 1]) still converge to
17-30 digits; where the error estimate is not far below the tolerance (x**(-2/3) on [0, 8], whose
nodes would need to come closer to 0 than 30 digits allow) it is redone at twice the digits.
Splitting at m makes a symmetric interval's centre, where sin(x)/x is 0/0, an endpoint too. A node
where the integrand is undefined (a removable singularity elsewhere) is evaluated a hair beside it;
a node where it overflows 2**400 (next to an endpoint singularity, where the weights are far smaller
still) counts as 0. A singularity that is not integrable at the end of a piece (1/x on [0, 1]) is
caught by probing the integrand 1e-10 and 1e-20 of b - a away from it: d*|f| must shrink (a probe
that overflows says nothing: 1/(1 + tan(x)**2024) overflows inside but tends to 0 at pi/2).
Interior poles leave the quadrature unconverged, which its error estimate shows.

Infinite bounds: m is 1 in from the finite bound ([0, 1, oo]) or 0 ([-oo, 0, oo]), and mpmath.quad
maps each infinite piece onto a finite one itself (x = a - 1 + 2/(t + 1)), calling f at nodes out to
1e30 and beyond, every one of them under the deadline. Integrability at infinity is probed like an
end's, t*|f(t)| must shrink: f is probed at t = 2, 4, ..., 2**66 (about 1e20) out from m, and over
the furthest 2**33-fold range of probes where f evaluates, the largest t*|f| of its further half
must be at most half the largest of its nearer half; so 1/x**2 and log(x)/(1 + x**2) pass while 1/x,
1/sqrt(x), 1/(x*log(x)) and sin(x) (no limit) do not. Where f evaluates, not fixed probes, because
where f overflows (exp of a large argument, a huge power: BadPoint) it is not evaluated at all: exp(x)
is judged on [3, 257] (a term below e**-300 is 0, so exp(-x**2) evaluates at every probe).
Oscillating tails that do converge (sin(x)/x) fail this or the quadrature: False.

The answer is accepted iff |answer - I| + the quadrature's error estimate <= TOL * the integral of
|f| (computed at low precision): the integral of |f| is the scale the digits of I are measured
against, so 0, the value of an odd integrand over symmetric bounds, is checkable too. Anything
undecided (complex values on the interval, no convergence, time out) is False. Each check is bounded
by its `deadline` from inside and by the worker pool's hard limit from outside (tasks/pool.py); the
integral is computed once per problem and worker, so the G answers of a group cost one quadrature.
"""

import time
from dataclasses import dataclass

from tasks.calculus import BadPoint, compile_tree, has_x, mp_lib, parse

DPS = 30               # digits of the integral and of the answer's value
SCALE_DPS = 15         # digits of the integral of |f| (a scale, not a value)
MAX_DEGREE = 8         # tanh-sinh levels per piece (mpmath doubles the nodes at each)
TOL = 1e-12            # accepted: |answer - I| + error <= TOL * integral of |f|
KINK_SAMPLES = 64      # points where each abs() argument is sampled for sign changes
KINK_REACH = 8         # ... towards an infinite bound at 8*s/(1 - s): 0.13 apart, 1 at 20, to 500
PROBES = (1e-10, 1e-20)  # distances from an endpoint (times b - a) where t*f(t) must shrink
TAIL = range(1, 67)      # an infinite end's probes at 2**k out from m, to about 1e20
TAIL_SPAN = 33           # ... of which the furthest 2**33-fold range is judged: t*|f(t)| must halve
INFINITE = {"oo": ("oo", 1), "-oo": ("oo", -1)}  # trees of the bounds "oo" and "-oo" (whole bounds only)


class _OutOfTime(Exception):
    """The deadline passed in the middle of a quadrature."""


@dataclass
class Integral:
    """The integral of f over [a, b]: value (mpmath complex), its error estimate, and the scale
    (integral of |f|) that tolerances are relative to."""

    value: object
    error: object
    scale: object


def bounds(lower, upper):
    """(a, b) trees of the bounds, or None unless both are constants (or oo, -oo) and differ as text."""
    if not isinstance(lower, str) or not isinstance(upper, str) or lower.strip() == upper.strip():
        return None
    a, b = (INFINITE.get(t.strip()) or parse(t) for t in (lower, upper))
    if a is None or b is None or any(e[0] != "oo" and has_x(e) for e in (a, b)):
        return None
    return a, b


def constant_value(node, lib):
    """The value of a constant tree under `lib` (an mpmath complex, +-inf for INFINITE), or None if
    undefined or huge."""
    import mpmath
    if node[0] == "oo":
        return mpmath.mpc(node[1] * mpmath.inf)
    try:
        v = mpmath.mpc(compile_tree(node, lib)(None))
    except (BadPoint, ZeroDivisionError, ValueError, OverflowError, ArithmeticError, TypeError):
        return None
    return v if mpmath.isfinite(v) and abs(v) < mpmath.mpf(2) ** 400 else None


def _abs_arguments(node):
    """The argument subtrees of every abs() call that depends on x."""
    if node[0] == "call":
        found = [a for a in node[2] if node[1] == "abs" and has_x(a)]
        return found + [s for a in node[2] for s in _abs_arguments(a)]
    return [s for c in node[1:] if isinstance(c, tuple) for s in _abs_arguments(c)]


def _centre(a, b):
    """The point m the interval is split at: its midpoint, 1 in from the finite bound of a half-infinite
    interval, or 0."""
    import mpmath
    if mpmath.isfinite(a) and mpmath.isfinite(b):
        return (a + b) / 2
    if mpmath.isfinite(a) or mpmath.isfinite(b):
        end, far = (a, b) if mpmath.isfinite(a) else (b, a)
        return end + mpmath.sign(far)
    return mpmath.mpf(0)


def _grid(a, b):
    """KINK_SAMPLES - 1 points strictly between a and b: evenly spaced, or towards an infinite bound
    at KINK_REACH * s/(1 - s) for evenly spaced s in (0, 1) (finite points, ever sparser)."""
    import mpmath
    n = KINK_SAMPLES
    if mpmath.isfinite(a) and mpmath.isfinite(b):
        return [a + (b - a) * k / n for k in range(1, n)]
    if mpmath.isinf(a) and mpmath.isinf(b):
        steps = [mpmath.mpf(2 * k - n) / n for k in range(1, n)]  # s in (-1, 1)
        return [mpmath.sign(b) * KINK_REACH * s / (1 - abs(s)) for s in steps]
    end, far = (a, b) if mpmath.isfinite(a) else (b, a)
    return [end + mpmath.sign(far) * KINK_REACH * mpmath.mpf(k) / (n - k) for k in range(1, n)]


def _kinks(node, a, b, lib, deadline):
    """Points strictly between a and b (real) where an abs() argument changes sign, by bisection."""
    import mpmath
    found = []
    for arg in _abs_arguments(node):
        g = compile_tree(arg, lib)

        def sign(t):
            if time.monotonic() > deadline:
                raise _OutOfTime
            try:
                return mpmath.sign(mpmath.re(g(mpmath.mpc(t))))
            except (BadPoint, ZeroDivisionError, ValueError, OverflowError, ArithmeticError):
                return 0
        grid = _grid(a, b)
        signs = [sign(t) for t in grid]
        for i in range(1, len(grid) - 1):  # a sign change right at a sample (abs(x - 1) on [0, 4])
            if signs[i] == 0 and signs[i - 1] * signs[i + 1] < 0:
                found.append(grid[i])
        for lo, hi, s_lo, s_hi in zip(grid, grid[1:], signs, signs[1:]):
            if s_lo * s_hi >= 0:
                continue
            for _ in range(lib["dps"] * 4):  # ~ one bit per step, to the working precision
                mid = (lo + hi) / 2
                s_mid = sign(mid)
                if s_mid == 0:
                    break
                lo, hi, s_lo = (mid, hi, s_mid) if s_mid == s_lo else (lo, mid, s_lo)
            found.append((lo + hi) / 2)
    return found


def _integrand(fz, middle, deadline, magnitude=False):
    """f at a real node for mpmath.quad: a hair towards `middle` where f is undefined at the node,
    0 where f overflows (see the module docstring); |f| with `magnitude`."""
    import mpmath

    def value(t):
        if time.monotonic() > deadline:
            raise _OutOfTime
        hair = (abs(t) + 1) * mpmath.mpf(2) ** (-mpmath.mp.prec // 2)
        for z in (t, t + hair if middle > t else t - hair):
            try:
                v = mpmath.mpc(fz(mpmath.mpc(z)))
            except (BadPoint, ZeroDivisionError, ValueError, OverflowError, ArithmeticError):
                continue
            if mpmath.isfinite(v):
                return abs(v) if magnitude else v
        return mpmath.mpf(0)
    return value


def _integrable_at(fz, end, inward):
    """Whether f looks integrable at the endpoint `end` (`inward`: b - a, signed, or a - b): d*|f|
    at distance d shrinks as d does, as it does for x**-0.9 and log(x) but not for 1/x."""
    import mpmath
    sizes = []
    for d in PROBES:
        try:
            v = mpmath.mpc(fz(mpmath.mpc(end + inward * d)))
        except (BadPoint, ZeroDivisionError, ValueError, OverflowError, ArithmeticError):
            return True  # an intermediate overflows (tan(x)**2024 at pi/2): leave it to the quadrature
        sizes.append(d * abs(v))
    return not sizes[1] > sizes[0] / 2


def _integrable_to_infinity(fz, start, direction, deadline):
    """Whether f looks integrable from `start` out to infinity in `direction` (+1 or -1): of the probes
    t = 2**k (TAIL) where f evaluates, those within 2**TAIL_SPAN of the furthest are split in half,
    and the largest t*|f| of the further half must be at most half the largest of the nearer half
    (maxima, so that a zero of f at one probe decides nothing); fewer than two probes: False."""
    import mpmath
    sizes = {}
    for k in TAIL:
        if time.monotonic() > deadline:
            raise _OutOfTime
        t = mpmath.mpf(2) ** k
        try:
            v = mpmath.mpc(fz(mpmath.mpc(start + direction * t)))
        except (BadPoint, ZeroDivisionError, ValueError, OverflowError, ArithmeticError):
            continue  # past the reach of exp or a huge power: judged by the probes that evaluate
        if mpmath.isfinite(v):
            sizes[k] = t * abs(v)
    far = max(sizes, default=0)
    window = [k for k in sizes if k >= far - TAIL_SPAN]
    if len(window) < 2:
        return False
    middle = (window[0] + far) / 2
    nearer = max(sizes[k] for k in window if k <= middle)
    further = max(sizes[k] for k in window if k > middle)
    return not further > nearer / 2


_CACHE = {}  # (integrand, lower, upper) -> Integral | None, per process
_LIBS = {}   # digits -> mpmath evaluation library


def _lib(dps):
    if dps not in _LIBS:
        _LIBS[dps] = mp_lib(dps)
    return _LIBS[dps]


def integral(integrand, lower, upper, deadline=None):
    """The integral of `integrand` (text) from `lower` to `upper` (text), or None when the problem
    is malformed, the integrand is not integrable there, or the quadrature does not finish by
    `deadline` (time.monotonic(); default: a minute). Remembered per (integrand, lower, upper)."""
    key = (integrand, lower, upper)
    if key in _CACHE:
        return _CACHE[key]
    deadline = time.monotonic() + 60 if deadline is None else deadline
    try:
        result = _integrate(integrand, lower, upper, deadline)
    except _OutOfTime:
        return None  # not remembered: with more time it may well succeed
    if len(_CACHE) > 4096:
        _CACHE.clear()
    _CACHE[key] = result
    return result


def _pieces(f, ends, lib, deadline):
    """[a, inner points..., b] at the precision of `lib`, or None when a bound is not a distinct real
    number or the integrand is not integrable at the end of a piece (1/x**2 on [-1, 1] is not, at 0;
    1/x on [1, oo] is not, at oo)."""
    import mpmath
    a, b = (constant_value(e, lib) for e in ends)
    if a is None or b is None or a.imag != 0 or b.imag != 0 or a == b:
        return None
    a, b = a.real, b.real
    fz = compile_tree(f, lib)
    m = _centre(a, b)
    inner = sorted({m, *_kinks(f, a, b, lib, deadline)}, reverse=b < a)
    span = b - a if mpmath.isfinite(b - a) else mpmath.sign(b - a)  # probe distances scale with a finite span
    finite = [p for p in (a, b) if mpmath.isfinite(p)]
    sides = [(p, span if p == a else -span) for p in finite] + [(p, s) for p in inner for s in (span, -span)]
    if not all(_integrable_at(fz, end, inward) for end, inward in sides):
        return None
    if not all(_integrable_to_infinity(fz, m, mpmath.sign(e), deadline) for e in (a, b) if mpmath.isinf(e)):
        return None
    return [a, *inner, b]


def _quad(f, points, dps, deadline, magnitude=False, maxdegree=MAX_DEGREE):
    """mpmath.quad of f (or |f|) over the pieces at `dps` digits -> (value, error estimate)."""
    import mpmath
    lib = _lib(dps)
    with lib["context"]():
        points = [mpmath.mpf(p) for p in points]
        integrand = _integrand(compile_tree(f, lib), _centre(points[0], points[-1]), deadline, magnitude)
        value, error = mpmath.quad(integrand, points, error=True, maxdegree=maxdegree)
        return mpmath.mpc(value), abs(error)


def _integrate(integrand, lower, upper, deadline):
    f, ends = parse(integrand), bounds(lower, upper)
    if f is None or ends is None:
        return None
    with _lib(DPS)["context"]():
        points = _pieces(f, ends, _lib(DPS), deadline)
    if points is None:
        return None
    scale = abs(_quad(f, points, SCALE_DPS, deadline, magnitude=True, maxdegree=MAX_DEGREE // 2)[0])
    value, error = _quad(f, points, DPS, deadline)
    if error > TOL * scale / 1000:
        # nodes come no closer to an end than the working precision: x**(-2/3) on [0, 8] misses
        # (1e-30)**(1/3) of its mass at 30 digits; at twice the digits, and exact bounds, it does not
        with _lib(2 * DPS)["context"]():
            points = _pieces(f, ends, _lib(2 * DPS), deadline) or points
        value, error = _quad(f, points, 2 * DPS, deadline)
    return Integral(value, error, scale)


def check(integrand, lower, upper, answer, deadline=None):
    """True iff `answer` (text: a constant) equals the integral of `integrand` from `lower` to
    `upper` to TOL of the integral of |integrand|. False for anything malformed, undecided or late."""
    import mpmath
    node = parse(answer)
    if node is None or has_x(node):
        return False
    found = integral(integrand, lower, upper, deadline)
    if found is None:
        return False
    lib = _lib(DPS)
    with lib["context"]():
        value = constant_value(node, lib)
        if value is None:
            return False
        tolerance = TOL * found.scale
        if abs(found.value.imag) > tolerance:
            return False  # the integrand is complex on the interval: not a real integral
        return bool(abs(value - found.value) + found.error <= tolerance)


def warm_up():
    """Compute the tanh-sinh nodes once, at every precision and degree a check may use (x**(-2/3)
    needs the retry at 60 digits), so a worker's first definite check is not charged for them."""
    integral("x**(-2/3)", "0", "1")
