"""calculus — the answer language of the integration task, and the check that an answer is an
antiderivative. Safe on hostile text: nothing here executes the text or hands it to sympy's parser.

The language: sympy-style expressions in x with + - * / ** (or ^), parentheses, integer and decimal
numbers, pi, E, C (a constant of integration, read as 0) and a fixed list of functions (FUNCTIONS,
plus ln and Abs as aliases). Everything else (names, attributes, strings, unicode, oo, I,
Integral, ...) is rejected before parsing.

  tokenize(text) -> [(kind, value)] | None    the whitelisting tokenizer; None for anything outside
                                              the language or over a size limit (MAX_CHARS,
                                              MAX_TOKENS, MAX_DIGITS)
  parse(text) -> tree | None                  our own recursive-descent parser, to a small tuple tree
                                              such as ("+", ("x",), ("num", Fraction(1))). Never
                                              raises; None also for x/0, 0**-n, nesting over
                                              MAX_DEPTH and constants over MAX_EXPONENT / MAX_BITS.
                                              The limits bound its work on any input.
  parse_integrand(text) -> tree | None        parse, remembered for the few integrands seen often
  to_sympy(tree, x) -> sympy expression       built node by node (the text never reaches sympy)
  compile_tree(tree, lib) -> f(z)             numeric evaluation: complex doubles (numpy, when it is
                                              installed) or mpmath at 40 digits
  values_at(tree, points) -> [value | None]   the tree at real points, with mpmath
  check(integrand, answer, deadline) -> bool  True iff the answer F differs from an antiderivative of
                                              the integrand f by a constant (below)
  fast_check(integrand, antiderivative)       the numeric part of check alone, for generated problems

How `check` decides: F(b) - F(a) must match the Gauss-Legendre quadrature of f on short random
intervals (x > 0 first, then x < 0, then anywhere f is finite); a clear mismatch is confirmed by
comparing F' with f at the interval's midpoint; undecided cases are redone at 40 digits, then go to
sympy (simplify(F' - f) == 0). The random intervals are seeded by the (integrand, answer) pair, so
the same call always gives the same verdict.

Time: `check` stops drawing intervals at `deadline` and then returns False, but a single sympy call
or evaluation cannot be interrupted from inside. The hard bound is the caller's: the integration task
runs `check_job` in killable worker processes (tasks/pool.py) set up by `warm_up`.
"""

import cmath
import contextlib
import hashlib
import math
import random
import re
import sys
import time
from fractions import Fraction

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


_PARSED = {}  # integrand text -> tree, for parse_integrand
_LIBS = {}    # "float" (numpy, None without it) and "mp" evaluation libraries, made on first use


def parse_integrand(integrand):
    """`parse`, remembered: the same few integrands are checked over and over."""
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
    """True iff `answer` is an antiderivative of `integrand` up to a constant (both are text), in
    this process. Past `deadline` (time.monotonic(); default: an hour) it gives up with False."""
    deadline = time.monotonic() + 3600 if deadline is None else deadline
    f, F = parse_integrand(integrand), parse(answer)
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


def check_job(job):
    """`check` as a worker-pool job: [integrand, answer, seconds] -> bool. It stops itself after 90%
    of `seconds`, so the worker usually answers before the pool's hard limit has to kill it."""
    integrand, answer, seconds = job
    return bool(check(integrand, answer, time.monotonic() + 0.9 * float(seconds)))


def warm_up():
    """Prepare a worker process: deep recursion for sympy, and the slow imports paid before any job."""
    sys.setrecursionlimit(5000)
    _load_libs()
    _sympy()


def fast_check(integrand, antiderivative, seconds=10):
    """Whether the numeric check alone (doubles, or 40 digits without numpy) confirms the pair, in
    this process. Used to keep only generated problems the checker can decide quickly."""
    _load_libs()
    lib = _LIBS["float"] or _LIBS["mp"]
    rng = random.Random(integrand)
    with lib["context"]():
        return _numeric(parse(integrand), parse(antiderivative), lib, rng, time.monotonic() + seconds) is True


def values_at(node, points, dps=20):
    """The tree's values at the real `points`, computed with mpmath at `dps` digits; None where it is
    undefined or astronomically large."""
    import mpmath
    lib = _mp_lib(dps)
    fz = compile_tree(node, lib)
    with lib["context"]():
        return lib["eval"](fz, [mpmath.mpc(t, 0) for t in points])
