"""integration — indefinite integrals; the answer is sympy-syntax text, checked by differentiation.

Problems are {"integrand": "x*sin(x)", "antiderivative": "sin(x) - x*cos(x)"} (the antiderivative
is optional: proposed problems have none). Generated problems use the backward trick: draw a random
elementary F and ask for the integral of F', so an elementary antiderivative always exists. A fixed
set of Integration Bee-style integrals written for this project is `make_problems(n, 0, "bee")`.

The checker never executes model text and never hands it to sympy's parser:
  1. tokenise and whitelist (x, numbers, + - * / ** ^ ( ) ,, a fixed list of functions and
     constants, a length, token, nesting and constant-size limit), then our own recursive-descent
     parser builds a small tuple tree;
  2. in a worker process with a hard time limit, the answer F is accepted when it differs from an
     antiderivative of f by a constant: numerically, F(b) - F(a) must match the quadrature of f on
     short random intervals; a clear mismatch is confirmed by comparing F' with f at the interval's
     midpoint; undecided cases are redone at 40 digits, then go to sympy (simplify(F' - f) == 0).
The worker is killed and replaced when a call runs past its time limit; the call returns False.
"""

import atexit
import cmath
import contextlib
import hashlib
import json
import math
import os
import random
import re
import select
import subprocess
import sys
import threading
import time
from collections import deque
from fractions import Fraction

from tasks import check_style, extract_answer, judged_answer, neutralise, parse_verdict  # noqa: F401

# -----------------------------------------------------------------------------
# the answer language: tokenise, whitelist, parse (no eval, no sympy)

FUNCTIONS = ("sin cos tan sec csc cot asin acos atan acot asec acsc sinh cosh tanh sech csch coth "
             "asinh acosh atanh acoth asech acsch exp log sqrt cbrt abs").split()
ALIASES = {"ln": "log", "Abs": "abs"}   # ln appears in RLSR's own prompt example; Abs is sympy's name
CONSTANTS = {"pi": ("pi",), "E": ("E",), "C": ("num", Fraction(0))}  # C: a constant of integration
MAX_CHARS = 1000     # longer answers are rejected outright
MAX_TOKENS = 400     # ... as are answers with more tokens
MAX_DEPTH = 40       # nesting of parentheses, calls, signs and powers
MAX_DIGITS = 20      # digits in one number literal
MAX_EXPONENT = 1000  # a constant exponent p/q needs |p/q| <= 1000 and q <= 1000 (no 9**9**9)
MAX_BITS = 20_000    # bits in any exact constant the text spells out

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([A-Za-z_]\w*)|(\*\*|[-+*/^(),]))")


class Reject(Exception):
    """The text is not a well-formed, whitelisted expression."""


def tokenize(text):
    """[(kind, value)] with kind in num/name/op, or None if anything is not whitelisted."""
    if not isinstance(text, str) or len(text) > MAX_CHARS or not text.isascii():
        return None  # isascii also keeps unicode digits, letters and spaces out of \d \w \s
    text, pos, tokens = text.strip(), 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or len(tokens) >= MAX_TOKENS:
            return None
        pos = m.end()
        number, name, op = m.groups()
        if number is not None:
            if sum(ch.isdigit() for ch in number) > MAX_DIGITS:
                return None
            tokens.append(("num", Fraction(number)))  # decimals are read exactly: 0.5 is 1/2
        elif name is not None:
            name = ALIASES.get(name, name)
            if name != "x" and name not in CONSTANTS and name not in FUNCTIONS:
                return None  # Integral, integrate, oo, zoo, nan, I, __import__, lambda, y, ...
            tokens.append(("name", name))
        else:
            tokens.append(("op", "**" if op == "^" else op))  # ^ means power, as in sympy's parser
    return tokens or None


class _Parser:
    """Recursive descent with Python's precedence: + - < * / < unary - < ** (right-assoc)."""

    def __init__(self, tokens):
        self.tokens, self.i, self.depth = tokens, 0, 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def take(self):
        tok = self.peek()
        if tok[0] is None:
            raise Reject("unexpected end")
        self.i += 1
        return tok

    def expect(self, op):
        if self.take() != ("op", op):
            raise Reject(f"expected {op}")

    def nest(self, step):
        self.depth += step
        if self.depth > MAX_DEPTH:
            raise Reject("too deeply nested")

    def expr(self):
        node = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            node = (self.take()[1], node, self.term())
        return node

    def term(self):
        node = self.unary()
        while self.peek() in (("op", "*"), ("op", "/")):
            node = (self.take()[1], node, self.unary())
        return node

    def unary(self):
        if self.peek() in (("op", "+"), ("op", "-")):
            sign = self.take()[1]
            self.nest(1)
            inner = self.unary()
            self.nest(-1)
            return ("neg", inner) if sign == "-" else inner
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek() == ("op", "**"):
            self.take()
            self.nest(1)
            exponent = self.unary()  # -x**2 is -(x**2), 2**-x is 2**(-x), a**b**c is a**(b**c)
            self.nest(-1)
            return ("**", base, exponent)
        return base

    def atom(self):
        kind, value = self.take()
        if kind == "num":
            return ("num", value)
        if kind == "name":
            if value == "x":
                return ("x",)
            if value in CONSTANTS:
                return CONSTANTS[value]
            self.expect("(")
            self.nest(1)
            args = [self.expr()]
            while self.peek() == ("op", ","):
                self.take()
                args.append(self.expr())
            self.expect(")")
            self.nest(-1)
            if len(args) != 1 and not (value == "log" and len(args) == 2):
                raise Reject(f"wrong number of arguments to {value}")
            return ("call", value, tuple(args))
        if (kind, value) == ("op", "("):
            self.nest(1)
            node = self.expr()
            self.expect(")")
            self.nest(-1)
            return node
        raise Reject(f"unexpected {value!r}")


def _constant(node):
    """Exact value of a rational constant subtree (None if it has x, pi, E or a function);
    raises Reject on x/0, 0**-n and constants or exponents too big to be an honest answer."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind in ("x", "pi", "E"):
        return None
    if kind == "call":
        for arg in node[2]:
            _constant(arg)
        return None
    if kind == "neg":
        v = _constant(node[1])
        return None if v is None else -v
    a, b = _constant(node[1]), _constant(node[2])
    if kind == "/" and b == 0:
        raise Reject("division by zero")
    if kind == "**" and b is not None:
        if abs(b) > MAX_EXPONENT or b.denominator > MAX_EXPONENT:
            raise Reject("exponent too large")
        if a == 0 and b <= 0:
            raise Reject("zero to a non-positive power")
    if a is None or b is None:
        return None
    if kind == "**":
        if b.denominator != 1:
            return None  # an irrational constant such as 2**(1/2)
        if max(a.numerator.bit_length(), a.denominator.bit_length()) * abs(b) > MAX_BITS:
            raise Reject("constant too large")
        v = a ** int(b)
    else:
        v = a + b if kind == "+" else a - b if kind == "-" else a * b if kind == "*" else a / b
    if max(v.numerator.bit_length(), v.denominator.bit_length()) > MAX_BITS:
        raise Reject("constant too large")
    return v


def parse(text):
    """The whitelisted expression tree of `text`, or None. Never raises, never executes anything."""
    tokens = tokenize(text)
    if tokens is None:
        return None
    try:
        parser = _Parser(tokens)
        node = parser.expr()
        if parser.i != len(tokens):
            return None
        _constant(node)
        return node
    except (Reject, RecursionError):
        return None


def has_x(node):
    """Whether the tree depends on x."""
    kind = node[0]
    if kind == "call":
        return any(has_x(a) for a in node[2])
    return kind == "x" or (kind not in ("num", "pi", "E") and any(has_x(c) for c in node[1:]))


# -----------------------------------------------------------------------------
# from a tree to sympy (built node by node: the text itself never reaches sympy)

def _sympy():
    import sympy  # imported on first use: `import tasks` stays light
    return sympy


def symbol_x(positive=False):
    sp = _sympy()
    return sp.Symbol("x", positive=True) if positive else sp.Symbol("x")


def to_sympy(node, x=None):
    """The sympy expression of a parsed tree; raises Reject if it is undefined (zoo, nan)."""
    sp = _sympy()
    x = symbol_x() if x is None else x
    funcs = {"abs": sp.Abs}

    def build(node):
        kind = node[0]
        if kind == "num":
            return sp.Rational(node[1].numerator, node[1].denominator)
        if kind == "x":
            return x
        if kind == "pi":
            return sp.pi
        if kind == "E":
            return sp.E
        if kind == "neg":
            return -build(node[1])
        if kind == "call":
            func = funcs[node[1]] if node[1] in funcs else getattr(sp, node[1])  # a FUNCTIONS name
            return func(*[build(a) for a in node[2]])
        a, b = build(node[1]), build(node[2])
        if kind == "+":
            return a + b
        if kind == "-":
            return a - b
        if kind == "*":
            return a * b
        if kind == "/":
            return a / b
        if b.is_Number and (abs(b) > MAX_EXPONENT):
            raise Reject("exponent too large")
        return a ** b

    expr = build(node)
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise Reject("undefined")
    return expr


# -----------------------------------------------------------------------------
# numeric evaluation of a tree: vectorised complex floats (numpy) or high precision (mpmath)

class _Bad(Exception):
    """A point where an expression is undefined or too large to compare."""


def _reciprocals(m):
    """sech, asec, ... as sympy defines them (asec(z) = acos(1/z)), from numpy's or mpmath's names."""
    n = (lambda a, b: getattr(m, a, None) or getattr(m, b))
    acos, asin, atanh, acosh, asinh = n("arccos", "acos"), n("arcsin", "asin"), n("arctanh", "atanh"), \
        n("arccosh", "acosh"), n("arcsinh", "asinh")
    return dict(sech=lambda z: 1 / m.cosh(z), csch=lambda z: 1 / m.sinh(z), coth=lambda z: m.cosh(z) / m.sinh(z),
                asec=lambda z: acos(1 / z), acsc=lambda z: asin(1 / z), acoth=lambda z: atanh(1 / z),
                asech=lambda z: acosh(1 / z), acsch=lambda z: asinh(1 / z))


def _float(v):
    try:
        return complex(float(v))
    except OverflowError:
        return complex(math.inf)


def _numpy_lib():
    try:
        import numpy as np
    except ImportError:  # the exact (mpmath) tier still works, just slower
        return None
    np.seterr(all="ignore")  # overflow and domain errors become inf/nan, which we test for

    def nearly_real_abs(z):
        # |t| continued analytically off the real axis, so d/dx abs(g) = sign(g) g' holds
        return np.where(np.abs(z.imag) <= 1e-6 * np.abs(z.real), np.where(z.real >= 0, z, -z), np.abs(z) + 0j)

    return dict(
        num=_float, pi=complex(math.pi), E=complex(math.e),
        pow=lambda a, b: np.power(a, b), ipow=lambda a, n: a ** n,
        sin=np.sin, cos=np.cos, tan=np.tan, sec=lambda z: 1 / np.cos(z), csc=lambda z: 1 / np.sin(z),
        cot=lambda z: np.cos(z) / np.sin(z), asin=np.arcsin, acos=np.arccos, atan=np.arctan,
        acot=lambda z: np.arctan(1 / z), sinh=np.sinh, cosh=np.cosh, tanh=np.tanh, asinh=np.arcsinh,
        acosh=np.arccosh, atanh=np.arctanh, exp=np.exp, log=np.log, sqrt=np.sqrt, abs=nearly_real_abs,
        cbrt=lambda z: np.power(z, 1 / 3), **_reciprocals(np),
        log2=lambda a, b: np.log(a) / np.log(b),
        eval=lambda fn, pts: np.broadcast_to(fn(np.asarray(pts, dtype=complex)), (len(pts),)).tolist(),
        point=complex, eps=1e-15, dps=None, context=contextlib.nullcontext)


def _mp_lib(dps=40):
    import mpmath
    big = mpmath.mpf(2) ** 400

    def guard(v):
        if not abs(v) < big:  # also catches nan
            raise _Bad
        return v

    def growth(fn):
        # exp and friends of a huge argument would build numbers with astronomically many digits
        return lambda z: fn(z) if abs(mpmath.re(z)) < 300 else (_ for _ in ()).throw(_Bad())

    def bounded(fn):
        # trig functions of a huge argument need as many digits as the argument has bits
        return lambda z: fn(z) if abs(z) < big else (_ for _ in ()).throw(_Bad())

    def nearly_real_abs(z):
        z = mpmath.mpc(z)
        if abs(z.imag) <= 1e-6 * abs(z.real):
            return z if z.real >= 0 else -z
        return mpmath.mpc(abs(z))

    def power(a, b):
        if a == 0:
            if mpmath.re(b) > 0:
                return mpmath.mpc(0)
            raise _Bad
        if abs(mpmath.re(b * mpmath.log(a))) > 300:
            raise _Bad
        return mpmath.power(a, b)

    def evaluate(fn, pts):
        out = []
        for p in pts:
            try:
                out.append(guard(mpmath.mpc(fn(p))))
            except (_Bad, ZeroDivisionError, ValueError, OverflowError, ArithmeticError):
                out.append(None)
        return out

    return dict(
        num=lambda v: mpmath.mpf(v.numerator) / v.denominator, pi=mpmath.pi, E=mpmath.e,
        pow=power, ipow=lambda a, n: power(a, n) if n < 0 else guard(a ** n),
        sin=bounded(mpmath.sin), cos=bounded(mpmath.cos), tan=bounded(mpmath.tan), sec=bounded(mpmath.sec),
        csc=bounded(mpmath.csc), cot=bounded(mpmath.cot),
        asin=mpmath.asin, acos=mpmath.acos, atan=mpmath.atan, acot=mpmath.acot,
        sinh=growth(mpmath.sinh), cosh=growth(mpmath.cosh), tanh=mpmath.tanh, asinh=mpmath.asinh,
        acosh=mpmath.acosh, atanh=mpmath.atanh, exp=growth(mpmath.exp), log=mpmath.log, sqrt=mpmath.sqrt,
        abs=nearly_real_abs, log2=lambda a, b: mpmath.log(a) / mpmath.log(b),
        cbrt=lambda z: power(z, mpmath.mpf(1) / 3), **_reciprocals(mpmath),
        eval=evaluate, point=mpmath.mpc, eps=mpmath.mpf(10) ** (-dps + 2), dps=dps,
        context=lambda: mpmath.workdps(dps))


def compile_tree(node, lib):
    """A function z -> value of the tree under `lib`; constant subtrees are computed once."""
    kind = node[0]
    if kind == "num":
        c = lib["num"](node[1])
        return lambda z: c
    if kind == "x":
        return lambda z: z
    if kind in ("pi", "E"):
        c = lib[kind]
        return lambda z: c
    if kind == "neg":
        fa = compile_tree(node[1], lib)
        fn = lambda z: -fa(z)  # noqa: E731
    elif kind == "call":
        args = [compile_tree(a, lib) for a in node[2]]
        if len(args) == 2:
            log2, fa, fb = lib["log2"], args[0], args[1]
            fn = lambda z: log2(fa(z), fb(z))  # noqa: E731
        else:
            f, fa = lib[node[1]], args[0]
            fn = lambda z: f(fa(z))  # noqa: E731
    elif kind == "**":
        fa = compile_tree(node[1], lib)
        exponent = _constant(node[2])
        if exponent is not None and exponent.denominator == 1:
            ipow, n = lib["ipow"], int(exponent)  # integer powers exactly, not via exp(n log z)
            fn = lambda z: ipow(fa(z), n)  # noqa: E731
        else:
            power, fb = lib["pow"], compile_tree(node[2], lib)
            fn = lambda z: power(fa(z), fb(z))  # noqa: E731
    else:
        fa, fb = compile_tree(node[1], lib), compile_tree(node[2], lib)
        fn = {"+": lambda z: fa(z) + fb(z), "-": lambda z: fa(z) - fb(z),
              "*": lambda z: fa(z) * fb(z), "/": lambda z: fa(z) / fb(z)}[kind]
    if not has_x(node):
        try:
            c = fn(None)
        except (ZeroDivisionError, ValueError, OverflowError, ArithmeticError, _Bad):
            c = float("nan")
        return lambda z: c
    return fn


# -----------------------------------------------------------------------------
# the check: F(b) - F(a) against the quadrature of f on short random intervals

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


def _symbolic(f, F):
    """sympy's verdict: simplify(F' - f) == 0 (x > 0, like the numeric check's first region)."""
    sp = _sympy()
    x = symbol_x(positive=True)
    try:
        d = sp.diff(to_sympy(F, x), x) - to_sympy(f, x)
        return d == 0 or sp.simplify(d) == 0
    except Exception:  # noqa: BLE001  (anything sympy raises means "not shown equal")
        return False


_PARSED = {}  # integrand text -> tree (the same few integrands are checked over and over)
_LIBS = {}    # "float" (numpy, None without it) and "mp" evaluation libraries, made on first use


def _integrand_tree(integrand):
    if integrand not in _PARSED:
        if len(_PARSED) > 4096:
            _PARSED.clear()
        _PARSED[integrand] = parse(integrand)
    return _PARSED[integrand]


def _load_libs():
    if not _LIBS:
        _LIBS["float"] = _numpy_lib()
        _LIBS["mp"] = _mp_lib()


def check(integrand, answer, deadline=None):
    """The full check, in this process and without a time limit (the worker adds one)."""
    deadline = time.monotonic() + 3600 if deadline is None else deadline
    f, F = _integrand_tree(integrand), parse(answer)
    if f is None or F is None:
        return False
    seed = hashlib.sha256(f"{integrand}\0{answer}".encode()).digest()  # same call, same verdict
    rng = random.Random(seed)
    _load_libs()
    for lib in (_LIBS["float"], _LIBS["mp"]):
        if lib is None:
            continue
        try:
            with lib["context"]():
                verdict = _numeric(f, F, lib, rng, deadline)
        except (RecursionError, OverflowError, ValueError, ZeroDivisionError, ArithmeticError, _Bad):
            verdict = None
        if verdict is not None:
            return verdict
    return time.monotonic() < deadline and _symbolic(f, F)


# -----------------------------------------------------------------------------
# the worker process and the time limit

TIMEOUT = 2.0         # default hard limit per verification, in seconds
STARTUP_TIMEOUT = 120  # a fresh worker imports numpy, mpmath and sympy; not charged to any call
CHUNK = 16            # requests sent to a worker at a time (pipelining, far below pipe buffers)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _serve():
    """Worker main loop: one JSON [id, integrand, answer, seconds] per line in, "id 0|1" out."""
    try:
        import resource
        limit = 4 << 30  # a runaway expression fails with MemoryError instead of eating the machine
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    sys.setrecursionlimit(5000)
    _load_libs()
    _sympy()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            rid, integrand, answer, seconds = json.loads(line)
        except ValueError:
            continue
        try:
            ok = check(integrand, answer, time.monotonic() + 0.9 * float(seconds))
        except Exception:  # noqa: BLE001  (MemoryError, RecursionError, sympy internals: all "no")
            ok = False
        out.write(f"{rid} {int(bool(ok))}\n")
        out.flush()


class _Worker:
    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
                   OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", "from tasks.integration import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
        self.buf = b""
        self.ready = False
        self.jobs = deque()  # (index, request) sent and not yet answered, in order
        self.deadline = None

    def send(self, jobs, timeout):
        self.proc.stdin.write(b"".join(req for _, req in jobs))
        self.proc.stdin.flush()
        self.jobs.extend(jobs)
        if self.deadline is None:
            self.deadline = time.monotonic() + (timeout if self.ready else STARTUP_TIMEOUT)

    def lines(self):
        """Complete lines available now (after select said the pipe is readable)."""
        chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
        if not chunk:
            raise EOFError("worker exited")
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return lines

    def kill(self):
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001
            pass


_pool = []        # live workers
_spare = [None]   # a warm replacement, so a timed-out worker is replaced without waiting
_owner = [os.getpid()]  # the process these workers belong to
_lock = threading.Lock()


def _replace(i):
    _pool[i].kill()
    _pool[i] = _spare[0] if _spare[0] is not None else _Worker()
    _spare[0] = _Worker()


@atexit.register
def shutdown():
    """Stop the worker processes (also runs at exit)."""
    with _lock:
        for w in _pool + [_spare[0]]:
            if w is not None:
                w.kill()
        _pool.clear()
        _spare[0] = None


def _run(jobs, results, timeout, workers):
    """Answer every (index, request) job into results[index]; one `timeout` per job."""
    if _owner[0] != os.getpid():  # a forked child must not share its parent's pipes
        _pool.clear()
        _spare[0], _owner[0] = None, os.getpid()
    while len(_pool) < workers:
        _pool.append(_Worker())
    if _spare[0] is None:  # warm from the start, so the first restart is as cheap as the rest
        _spare[0] = _Worker()
    active = _pool[:workers]
    queue = deque(jobs)
    while queue or any(w.jobs for w in active):
        for k, w in enumerate(active):  # keep every worker busy
            if not w.jobs and queue:
                chunk = [queue.popleft() for _ in range(min(CHUNK, len(queue)))]
                try:
                    w.send(chunk, timeout)
                except OSError:  # the worker died while idle: replace it and try again
                    w.jobs.clear()
                    queue.extendleft(reversed(chunk))
                    slot = _pool.index(w)
                    _replace(slot)
                    active[k] = _pool[slot]
        if not any(w.jobs for w in active):
            continue
        busy = [w for w in active if w.jobs]
        wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
        readable, _, _ = select.select([w.proc.stdout for w in busy], [], [], wait)
        now = time.monotonic()
        for i, w in enumerate(list(active)):
            if not w.jobs:
                continue
            dead = False
            if w.proc.stdout in readable:
                try:
                    for line in w.lines():
                        if line == b"ready":
                            w.ready, w.deadline = True, now + timeout
                            continue
                        rid, verdict = line.split()
                        index, _ = w.jobs.popleft()
                        if int(rid) == index:
                            results[index] = verdict == b"1"
                        w.deadline = now + timeout  # the next job starts now
                except (EOFError, ValueError, IndexError, OSError):
                    dead = True
                if not w.jobs:
                    w.deadline = None
            if w.jobs and (dead or now > w.deadline):
                # the job at the front ran out of time (or crashed the worker): it is False,
                # the worker is killed and replaced, and the jobs behind it are sent again
                index, _ = w.jobs.popleft()
                results[index] = False
                queue.extendleft(reversed(w.jobs))
                slot = _pool.index(w)
                _replace(slot)
                active[active.index(w)] = _pool[slot]
    for w in active:
        w.deadline = None


def default_workers():
    """Worker processes verify_many uses by default: up to 4, leaving cores for the rest."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def verify_many(problems, answers, timeout=TIMEOUT, workers=None):
    """[verify(p, a) for p, a in zip(problems, answers)], spread over worker processes.

    Each answer gets its own `timeout` seconds of worker time; one that runs out is False (its
    worker is killed and replaced). Malformed answers are rejected here without a worker.
    """
    results = [False] * len(answers)
    jobs = []
    for i, (problem, answer) in enumerate(zip(problems, answers)):
        if not isinstance(problem, dict) or parse(answer) is None:
            continue
        integrand = problem.get("integrand")
        if _integrand_tree(integrand) is None:
            continue
        jobs.append((i, (json.dumps([i, integrand, answer, timeout]) + "\n").encode()))
    if jobs:
        with _lock:
            if workers is None:
                workers = default_workers() if len(jobs) > 1 else 1
            _run(jobs, results, timeout, max(1, min(workers, len(jobs))))
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
# problems: random antiderivatives differentiated (the backward trick), and a fixed Bee set

DEFAULTS = dict(
    depth=2,       # nesting of function compositions in the antiderivative (1..3)
    max_terms=2,   # terms in the antiderivative (1..3)
    max_len=90,    # longest integrand text, in characters
)
TEST_FRACTION = 10  # one integrand in TEST_FRACTION belongs to the held-out test split

# Integration Bee-style integrals written for this project: (integrand, antiderivative)
BEE = [
    ("x*exp(x)", "(x - 1)*exp(x)"),
    ("log(x)", "x*log(x) - x"),
    ("1/(1 + x**2)", "atan(x)"),
    ("tan(x)", "-log(cos(x))"),
    ("sin(x)**2", "x/2 - sin(2*x)/4"),
    ("x*sin(x)", "sin(x) - x*cos(x)"),
    ("exp(x)*sin(x)", "exp(x)*(sin(x) - cos(x))/2"),
    ("1/(x*log(x))", "log(log(x))"),
    ("sqrt(1 - x**2)", "(x*sqrt(1 - x**2) + asin(x))/2"),
    ("atan(x)", "x*atan(x) - log(1 + x**2)/2"),
    ("asin(x)", "x*asin(x) + sqrt(1 - x**2)"),
    ("x**2*exp(x)", "(x**2 - 2*x + 2)*exp(x)"),
    ("1/(x**2 - 1)", "log(abs(x - 1))/2 - log(abs(x + 1))/2"),
    ("sin(x)**3", "cos(x)**3/3 - cos(x)"),
    ("cos(x)**4", "3*x/8 + sin(2*x)/4 + sin(4*x)/32"),
    ("exp(sqrt(x))", "2*(sqrt(x) - 1)*exp(sqrt(x))"),
    ("sin(log(x))", "x*(sin(log(x)) - cos(log(x)))/2"),
    ("x/(1 + x**4)", "atan(x**2)/2"),
    ("1/(1 + exp(x))", "x - log(1 + exp(x))"),
    ("tan(x)*sec(x)**2", "tan(x)**2/2"),
    ("x**3*exp(x**2)", "(x**2 - 1)*exp(x**2)/2"),
    ("1/(x**2 + 4*x + 5)", "atan(x + 2)"),
    ("log(x)**2", "x*log(x)**2 - 2*x*log(x) + 2*x"),
    ("x*log(x)", "x**2*log(x)/2 - x**2/4"),
    ("cosh(x)**2", "x/2 + sinh(2*x)/4"),
    ("tanh(x)", "log(cosh(x))"),
    ("1/(exp(x) + exp(-x))", "atan(exp(x))"),
    ("sqrt(x)*log(x)", "2*x**(3/2)*log(x)/3 - 4*x**(3/2)/9"),
    ("x*atan(x)", "(x**2 + 1)*atan(x)/2 - x/2"),
    ("1/(x*(x + 1))", "log(x) - log(x + 1)"),
    ("sin(2*x)*exp(sin(x)**2)", "exp(sin(x)**2)"),
    ("cos(x)/(1 + sin(x)**2)", "atan(sin(x))"),
    ("1/(1 + cos(x))", "tan(x/2)"),
    ("1/(1 - sin(x))", "tan(x) + sec(x)"),
    ("x*sec(x)**2", "x*tan(x) + log(cos(x))"),
    ("exp(2*x)*cos(3*x)", "exp(2*x)*(2*cos(3*x) + 3*sin(3*x))/13"),
    ("(x + 1)/(x**2 + 2*x + 2)", "log(x**2 + 2*x + 2)/2"),
    ("x**5*sqrt(1 + x**3)", "2*(1 + x**3)**(3/2)*(3*x**3 - 2)/45"),
    ("1/(sqrt(x)*(1 + x))", "2*atan(sqrt(x))"),
    ("sinh(x)*cosh(x)", "sinh(x)**2/2"),
    ("acos(x)", "x*acos(x) - sqrt(1 - x**2)"),
    ("x/sqrt(x**2 + 1)", "sqrt(x**2 + 1)"),
    ("1/(x**3 + x)", "log(x) - log(x**2 + 1)/2"),
    ("sin(x)*cos(x)*exp(sin(x))", "(sin(x) - 1)*exp(sin(x))"),
    ("log(1 + x**2)", "x*log(1 + x**2) - 2*x + 2*atan(x)"),
    ("x*cos(x)**2", "x**2/4 + x*sin(2*x)/4 + cos(2*x)/8"),
    ("1/(1 + sqrt(x))", "2*sqrt(x) - 2*log(1 + sqrt(x))"),
    ("exp(x)*(1 + x*log(x))/x", "exp(x)*log(x)"),
    ("sec(x)**3", "(sec(x)*tan(x) + log(sec(x) + tan(x)))/2"),
    ("x**2/(1 + x**2)", "x - atan(x)"),
    ("cot(x)", "log(sin(x))"),
    ("csc(x)**2", "-cot(x)"),
    ("x**x*(1 + log(x))", "x**x"),
    ("1/sqrt(x**2 + 1)", "asinh(x)"),
    ("exp(x)/(1 + exp(2*x))", "atan(exp(x))"),
    ("1/(x**2*sqrt(x**2 + 1))", "-sqrt(x**2 + 1)/x"),
    ("sin(sqrt(x))", "2*sin(sqrt(x)) - 2*sqrt(x)*cos(sqrt(x))"),
    ("x*exp(-x**2)", "-exp(-x**2)/2"),
    ("cos(x)**3", "sin(x) - sin(x)**3/3"),
    ("1/(x*sqrt(x**2 - 1))", "acos(1/x)"),
    ("sqrt(x)/(1 + x)", "2*sqrt(x) - 2*atan(sqrt(x))"),
    ("exp(x)*(sin(x) + cos(x))", "exp(x)*sin(x)"),
    ("(1 - log(x))/x**2", "log(x)/x"),
    ("x**3/(1 + x**2)", "x**2/2 - log(1 + x**2)/2"),
]


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
    sp = _sympy()
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


def _checkable(integrand, antiderivative):
    """Whether the fast numeric check confirms the pair (it needs moderate, finite values)."""
    _load_libs()
    lib = _LIBS["float"] or _LIBS["mp"]
    rng = random.Random(integrand)
    with lib["context"]():
        return _numeric(parse(integrand), parse(antiderivative), lib, rng, time.monotonic() + 10) is True


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
    sp = _sympy()
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
        if not _checkable(integrand, antiderivative):
            continue  # values too large or singular everywhere we look: the checker could not tell
        seen.add(integrand)
        problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"only {len(problems)} distinct {split} problems found for these difficulty knobs")
    return problems


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
    and moderate at most of a few points on x > 0. (Whether an elementary antiderivative exists is undecidable cheaply; this
    only throws out what clearly is not a sensible exercise.)"""
    if not has_x(node) or _call_nesting(node) > MAX_CALL_NESTING:
        return False

    def towers(n):  # x in both base and exponent, or x in an exponent of an exponent
        if n[0] == "**" and has_x(n[2]) and has_x(n[1]):
            return True
        children = n[2] if n[0] == "call" else [c for c in n[1:] if isinstance(c, tuple)]
        return any(towers(c) for c in children)

    if towers(node):
        return False
    fz = compile_tree(node, _mp_lib(20))
    import mpmath
    moderate = 0
    with mpmath.workdps(20):
        for t in (0.3, 0.7, 1.3, 2.1, 3.7):
            try:
                moderate += abs(fz(mpmath.mpc(t, 0))) < 1e10
            except (_Bad, ZeroDivisionError, ValueError, OverflowError, ArithmeticError):
                continue
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
        sp = _sympy()
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
    sp = _sympy()
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
