"""checks — the integration verifier's math: is F an antiderivative of f? (definite.py: the value
of a definite integral; check_job runs either.)

  check(integrand, answer, deadline) -> bool  True iff the answer F differs from an antiderivative of
                                              the integrand f by a constant (both are text)
  fast_check(integrand, antiderivative)       the numeric part of check alone, for generated problems
  check_job(job) -> bool                      a worker-pool job: an indefinite or a definite check
  warm_up()                                   prepares a worker process (imports, recursion limit)

How `check` decides, cheapest tier first, each one True, False or undecided:
  1. quadrature in complex doubles: F(b) - F(a) must match the Gauss-Legendre quadrature of f on
     short random intervals (x > 0 first, then x < 0, then anywhere f is finite); a clear mismatch
     is confirmed by comparing F' with f at the interval's midpoint;
  2. pointwise at 40 digits: F' by the chain rule (calculus.compile_derivative) against f at random
     points, where tiny and huge values keep their digits. It decides what short intervals cannot:
     x**2024*(1 - x**2025)**2025 is below 1e-300 or overflows almost everywhere but is exact here;
     a mismatch is confirmed at 80 digits before it counts. An integrand that is 0 only up to
     rounding ((cos(x) + cos(x + 2*pi/3) + cos(x - 2*pi/3))**2) shrinks by ~40 orders at 80
     digits: there any constant answer agrees and an answer with a nonzero derivative is wrong;
  3. the quadrature of tier 1 at 40 digits;
  4. sympy: simplify(F' - f) == 0.
The random draws are seeded by the (integrand, answer) pair, so the same call always gives the same
verdict. Mismatches only count where f is real.

Time: `check` stops drawing at `deadline` and then returns False, but a single sympy call or
evaluation cannot be interrupted from inside. The hard bound is the caller's: the integration task
runs `check_job` in killable worker processes (tasks/pool.py) set up by `warm_up`.
"""

import cmath
import hashlib
import random
import sys
import time

from tasks import definite
from tasks.calculus import (BadPoint, compile_derivative, compile_tree, has_x, mp_lib, numpy_lib, parse,
                            parse_integrand, symbol_x, to_sympy)

# -----------------------------------------------------------------------------
# tiers 1 and 3: F(b) - F(a) against the quadrature of f on short random intervals

def _gauss_legendre(n):
    """Nodes and weights of n-point Gauss-Legendre on [-1, 1] (Newton on the Legendre polynomial)."""
    import mpmath
    nodes, weights = [], []
    with mpmath.workdps(60):
        for i in range(n):
            t = mpmath.cos(mpmath.pi * (i + mpmath.mpf(3) / 4) / (n + mpmath.mpf(1) / 2))
            for _ in range(100):
                p0, p1 = mpmath.mpf(1), t
                for k in range(2, n + 1):
                    p0, p1 = p1, ((2 * k - 1) * t * p1 - (k - 1) * p0) / k
                dp = n * (t * p1 - p0) / (t * t - 1)
                step = p1 / dp
                t -= step
                if abs(step) < mpmath.mpf(10) ** -55:
                    break
            nodes.append(t)
            weights.append(2 / ((1 - t * t) * dp * dp))
    return nodes, weights


_RULES = {}


def _rules(lib):
    """(nodes, weights) of the 8- and 16-point rules in the precision of `lib`."""
    key = lib["dps"]
    if key not in _RULES:
        conv = (lambda v: float(v)) if key is None else (lambda v: v)
        _RULES[key] = [tuple([conv(v) for v in part] for part in _gauss_legendre(n)) for n in (8, 16)]
    return _RULES[key]


NEEDED = 5        # agreeing intervals needed to accept
ROUNDS = 3        # rounds of candidate intervals per region
PER_ROUND = 12    # candidate intervals per round
# per precision (None: complex doubles, 40: mpmath digits), as fractions of h*max|f| on [a, b]:
# |F(b) - F(a) - quadrature| below `agree` agrees; above `mismatch`, with |F'(mid) - f(mid)| above
# `slope` * max|f|, is a clear mismatch; anything between is undecided and resampled
TOLERANCES = {None: dict(agree=1e-8, mismatch=1e-4, slope=1e-3),
              40: dict(agree=1e-15, mismatch=1e-10, slope=1e-9)}


def _draw(rng, region):
    """A short interval [a, b]: on the positive axis, the negative axis, or anywhere."""
    h = rng.uniform(0.05, 0.25)
    span = rng.choice((1.0, 4.0, 4.0, 12.0))
    if region == "pos":
        a = rng.uniform(0.0, span)
    elif region == "neg":
        a = -rng.uniform(0.0, span) - h
    else:
        a = rng.uniform(-span, span)
    return a, a + h


def _numeric(f, F, lib, rng, deadline):
    """True (agrees on NEEDED intervals), False (a clear mismatch where f is real) or None.

    Points are x + i*eps: on the real axis an inner function can sit exactly on a branch cut
    (sqrt of a negative number, asin(2)), and the tiny imaginary part picks the same side for F
    and f, so F' = f holds there exactly as it does for the analytic functions. Regions are tried in
    order: x > 0 (where integral tables and Bee answer keys mean their answers to hold), then x < 0,
    then anywhere f is finite; mismatches only count where f is real.
    """
    fz, Fz = compile_tree(f, lib), compile_tree(F, lib)
    evaluate, eps, point = lib["eval"], lib["eps"], lib["point"]
    (n8, w8), (n16, w16) = _rules(lib)
    im = 1e-10 if lib["dps"] is None else 1e-30
    step = 1e-2 if lib["dps"] is None else 1e-8  # derivative stencil step, as a fraction of h/2
    tol, mismatch, slope_tol = TOLERANCES[lib["dps"]].values()
    agree = 0
    for region in ("pos", "neg", "any"):
        for _ in range(ROUNDS):
            if time.monotonic() > deadline:
                return None
            intervals = [_draw(rng, region) for _ in range(PER_ROUND)]
            fpts, Fpts = [], []
            for a, b in intervals:
                mid, half = (a + b) / 2, (b - a) / 2
                d = half * step
                fpts += [point(mid + half * t, im) for t in n8 + n16] + [point(mid, im)]
                Fpts += [point(p, im) for p in (a, b, mid - 2 * d, mid - d, mid + d, mid + 2 * d)]
            fv, Fv = evaluate(fz, fpts), evaluate(Fz, Fpts)
            for r, (a, b) in enumerate(intervals):
                ys = fv[r * 25:(r + 1) * 25]
                Fs = Fv[r * 6:(r + 1) * 6]
                if any(v is None or not cmath.isfinite(complex(v)) for v in ys + Fs):
                    continue  # undefined somewhere: a singularity or overflow; resample
                half = (b - a) / 2
                fmax = max(abs(v) for v in ys)
                if not 0 < fmax < 1e30:
                    continue
                real = all(abs(v.imag) <= 1e-7 * fmax for v in ys)
                if region != "any" and not real:
                    continue  # stay where f is real; complex values come last
                scale = 2 * half * fmax  # the size of the integral, up to sign changes
                i8 = half * sum(w * y for w, y in zip(w8, ys[:8]))
                i16 = half * sum(w * y for w, y in zip(w16, ys[8:24]))
                if abs(i16 - i8) > tol / 100 * scale:
                    continue  # quadrature not converged: f varies too fast here
                Fmax = max(abs(v) for v in Fs)
                if Fmax * eps > tol / 100 * scale:
                    continue  # F(b) - F(a) would cancel away the digits we need
                err = abs((Fs[1] - Fs[0]) - i16)
                if err <= tol * scale:
                    agree += 1
                    if agree >= NEEDED:
                        return True
                    continue
                d = half * step
                slope = (Fs[2] - 8 * Fs[3] + 8 * Fs[4] - Fs[5]) / (12 * d)
                if Fmax * eps / d > slope_tol / 100 * fmax:
                    continue  # the finite difference is not accurate enough to decide
                if err > mismatch * scale and abs(slope - ys[24]) > slope_tol * fmax and region != "any":
                    return False  # F' differs from f where f is real and smooth: wrong answer
                # otherwise F jumps inside [a, b] (a branch cut or a pole of F): resample
    return None


# -----------------------------------------------------------------------------
# tier 2: F' against f, pointwise, at high precision

POINTWISE_AGREE = 1e-20     # |F' - f| below this times max(|F'|, |f|) agrees (40 digits leave 20 to cancel)
POINTWISE_MISMATCH = 1e-6   # above it, where f is real and the 80-digit recomputation agrees, is wrong
ROUNDING = 1e-20            # a value that shrinks at least this much from 40 to 80 digits was rounding error


def _values(fz, dF, z):
    """(f(z), F'(z)), or None where either is undefined or not finite."""
    try:
        fv, (_, slope) = fz(z), dF(z)
        if not (cmath.isfinite(complex(fv)) and cmath.isfinite(complex(slope))):
            return None
        return fv, slope
    except (BadPoint, ZeroDivisionError, ValueError, OverflowError, ArithmeticError, TypeError):
        return None


def _relative_gap(fv, slope):
    """|F' - f| / max(|F'|, |f|), or None where both are 0."""
    size = max(abs(fv), abs(slope))
    return abs(slope - fv) / size if size > 0 else None


def _rounding_only(coarse, fine):
    """Whether a value computed at 40 digits (`coarse`) and again at 80 (`fine`) is 0: a real value
    keeps its leading digits at both precisions, rounding error shrinks with the digits. An exact 0
    at 40 digits says nothing: exp and powers below e**-300 are set to 0 at any precision."""
    return coarse != 0 and abs(fine) <= ROUNDING * abs(coarse)


def _stable(coarse, fine):
    """Whether a value computed at 40 and at 80 digits is nonzero and the same to 20 digits."""
    return fine != 0 and abs(fine - coarse) <= ROUNDING * abs(fine)


def _pointwise(f, F, lib, rng, deadline):
    """True (F' = f at NEEDED points), False (a clear mismatch where f is real, confirmed at twice
    the digits) or None. `lib` is mpmath's (40 digits); the points are x + 1e-30i, as in _numeric.

    A point that does not agree at 40 digits is computed again at 80 where that can decide it. An
    integrand that is 0 only up to rounding ((cos(x) + cos(x + 2*pi/3) + cos(x - 2*pi/3))**2) has no
    relative gap to measure, but at 80 digits it shrinks by some 40 orders, which no nonzero value
    does: there a constant F (F' = 0 exactly) agrees, and an F' that keeps its digits is a mismatch.
    An F' that is rounding noise too stays undecided: a huge multiple of a zero sum in the answer
    can hide a nonzero derivative below the noise of any fixed precision (sympy decides those).
    """
    fz, dF = compile_tree(f, lib), compile_derivative(F, lib)
    fine = _LIBS["mp_fine"]
    fine_fz = fine_dF = None
    constant_answer = not has_x(F)
    agree = 0
    for region in ("pos", "neg", "any"):
        for _ in range(ROUNDS * PER_ROUND):
            if time.monotonic() > deadline:
                return None
            a, b = _draw(rng, region)
            found = _values(fz, dF, lib["point"]((a + b) / 2, 1e-30))
            if found is None:
                continue
            fv, slope = found
            gap = _relative_gap(fv, slope)
            real = abs(fv.imag) <= 1e-7 * abs(fv)
            if gap is not None and gap <= POINTWISE_AGREE:
                if region != "any" and not real:
                    continue  # stay where f is real; complex values come last
                agree += 1
                if agree >= NEEDED:
                    return True
                continue
            if gap is None or gap <= POINTWISE_MISMATCH:
                continue  # both exactly 0 (see _rounding_only), or neither agreeing nor clearly apart: resample
            # 80 digits only where they can decide: a constant answer, or f real or negligible beside
            # F' (the rounding error of a zero f need not look real) where mismatches count
            if not (constant_answer or (region != "any" and (real or abs(fv) <= 1e-7 * abs(slope)))):
                continue
            with fine["context"]():  # rounding cannot explain a gap that survives twice the digits
                if fine_fz is None:
                    fine_fz, fine_dF = compile_tree(f, fine), compile_derivative(F, fine)
                again = _values(fine_fz, fine_dF, fine["point"]((a + b) / 2, 1e-30))
            if again is None:
                continue
            fv_fine, slope_fine = again
            if _rounding_only(fv, fv_fine):  # f is 0 here (and so real)
                if constant_answer:
                    agree += 1
                    if agree >= NEEDED:
                        return True
                elif region != "any" and _stable(slope, slope_fine):
                    return False  # a nonzero slope where f is 0
                continue
            gap_fine = _relative_gap(fv_fine, slope_fine)
            if (region != "any" and real and gap_fine is not None and gap_fine > POINTWISE_MISMATCH
                    and not _rounding_only(slope - fv, slope_fine - fv_fine)):  # a gap that shrinks is rounding
                return False
    return None


# -----------------------------------------------------------------------------
# tier 4: sympy, and the check itself

def _symbolic(f, F):
    """sympy's verdict: simplify(F' - f) == 0 (x > 0, like the numeric check's first region)."""
    import sympy as sp
    x = symbol_x(positive=True)
    try:
        d = sp.diff(to_sympy(F, x), x) - to_sympy(f, x)
        return d == 0 or sp.simplify(d) == 0
    except Exception:  # noqa: BLE001  (anything sympy raises means "not shown equal")
        return False


_LIBS = {}  # "float" (numpy, None without it), "mp" (40 digits) and "mp_fine" (80) libraries, made on first use


def _load_libs():
    if not _LIBS:
        _LIBS["float"] = numpy_lib()
        _LIBS["mp"] = mp_lib()
        _LIBS["mp_fine"] = mp_lib(80)


def check(integrand, answer, deadline=None):
    """True iff `answer` is an antiderivative of `integrand` up to a constant (both are text), in
    this process. Past `deadline` (time.monotonic(); default: an hour) it gives up with False."""
    deadline = time.monotonic() + 3600 if deadline is None else deadline
    f, F = parse_integrand(integrand), parse(answer)
    if f is None or F is None:
        return False
    seed = hashlib.sha256(f"{integrand}\0{answer}".encode()).digest()  # same call, same verdict
    rng = random.Random(seed)
    _load_libs()
    float_lib, mp = _LIBS["float"], _LIBS["mp"]
    for lib, tier in ((float_lib, _numeric), (mp, _pointwise), (mp, _numeric)):
        if lib is None:
            continue  # no numpy: the 40-digit tiers still decide, only slower
        try:
            with lib["context"]():
                verdict = tier(f, F, lib, rng, deadline)
        except (RecursionError, OverflowError, ValueError, ZeroDivisionError, ArithmeticError, BadPoint):
            verdict = None
        if verdict is not None:
            return verdict
    return time.monotonic() < deadline and _symbolic(f, F)


def check_job(job):
    """A worker-pool job -> bool: [integrand, answer, seconds] is `check`, [integrand, answer, seconds,
    lower, upper] is definite.check. It stops itself after 90% of `seconds`, so the worker usually
    answers before the pool's hard limit has to kill it."""
    integrand, answer, seconds, *bounds = job
    deadline = time.monotonic() + 0.9 * float(seconds)
    if bounds:
        return bool(definite.check(integrand, *bounds, answer, deadline))
    return bool(check(integrand, answer, deadline))


def warm_up():
    """Prepare a worker process: deep recursion for sympy, and the slow imports paid before any job."""
    sys.setrecursionlimit(5000)
    _load_libs()
    definite.warm_up()
    import sympy  # noqa: F401


def fast_check(integrand, antiderivative, seconds=10):
    """Whether the numeric check alone (doubles, or 40 digits without numpy) confirms the pair, in
    this process. Used to keep only generated problems the checker can decide quickly."""
    _load_libs()
    lib = _LIBS["float"] or _LIBS["mp"]
    rng = random.Random(integrand)
    with lib["context"]():
        return _numeric(parse(integrand), parse(antiderivative), lib, rng, time.monotonic() + seconds) is True
