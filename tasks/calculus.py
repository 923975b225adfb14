"""calculus — the answer language of the integration task: parse, limits, sympy, numeric evaluation.
Safe on hostile text: nothing here executes the text or hands it to sympy's parser.

The language: sympy-style expressions in x with + - * / ** (or ^), parentheses, integer and decimal
numbers, pi, E (also spelled e), C (a constant of integration, read as 0) and a fixed list of
functions (FUNCTIONS, plus the ALIASES ln, Abs, arctan, arsinh, arcsinh, ...). Everything else
(names, attributes, strings, unicode, oo, I, Integral, ...) is rejected before parsing; oo is
accepted only as a whole bound of a definite integral, by tasks/definite.py, never in here.

  tokenize(text) -> [(kind, value)] | None    the whitelisting tokenizer; None for anything outside
                                              the language or over a size limit (MAX_CHARS,
                                              MAX_TOKENS, MAX_DIGITS)
  parse(text) -> tree | None                  our own recursive-descent parser, to a small tuple tree
                                              such as ("+", ("x",), ("num", Fraction(1))). Never
                                              raises; None also for x/0, 0**-n, nesting over
                                              MAX_DEPTH and anything over the cost limits (below).
  parse_integrand(text) -> tree | None        parse, remembered for the few integrands seen often
  to_sympy(tree, x) -> sympy expression       built node by node (the text never reaches sympy)
  compile_tree(tree, lib) -> f(z)             numeric evaluation: complex doubles (numpy, when it is
                                              installed) or mpmath at 40 digits
  compile_derivative(tree, lib) -> f(z)       (value, derivative) at z, by the chain rule (dual numbers)
  values_at(tree, points) -> [value | None]   the tree at real points, with mpmath

The checks built on it: tasks/checks.py (is F an antiderivative of f) and tasks/definite.py (is V
the value of a definite integral), run by the integration task in killable worker processes.

Limits by cost, not by value. The work an expression can cause is bounded, not the size of its
exponents (a Bee answer may well be (1 - x**2025)**2026/(2025*2026)):
  - size: MAX_CHARS, MAX_TOKENS, MAX_DIGITS per literal, MAX_DEPTH nesting (so at most a few hundred
    nodes);
  - numeric work: MAX_STEPS bounds one evaluation, one step per node plus, for an exact power, the
    bit length of its exponent (square-and-multiply), so x**2024 costs 12 steps and x**(10**400)
    is refused;
  - exact numbers: no exact number the text spells out or sympy would compute from it may exceed
    MAX_BITS bits, estimated before anything is computed, so 10**10**10 is refused in microseconds;
    to_sympy refuses a power that sympy would expand into a huge number ((2*x)**(10**9) is
    2**(10**9)*x**(10**9) to sympy), while (1 - x**2025)**2026 stays a cheap unexpanded power;
  - numbers too large for floats are evaluated in mpmath at bounded precision, never expanded.
"""

import contextlib
import math
import re
from fractions import Fraction

# -----------------------------------------------------------------------------
# the answer language: tokenise, whitelist, parse (no eval, no sympy)

FUNCTIONS = ("sin cos tan sec csc cot asin acos atan acot asec acsc sinh cosh tanh sech csch coth "
             "asinh acosh atanh acoth asech acsch exp log sqrt cbrt abs").split()
INVERSES = [f for f in FUNCTIONS if f.startswith("a") and f != "abs"]  # asin ... acsch
# ln appears in RLSR's own prompt example, Abs is sympy's name, the rest are textbook spellings (arctan,
# arsinh, arcsinh); x is the only variable, so a bare e can only be Euler's number
ALIASES = {"ln": "log", "Abs": "abs", "e": "E", **{"arc" + f[1:]: f for f in INVERSES},
           **{"ar" + f[1:]: f for f in INVERSES if f.endswith("h")}}
CONSTANTS = {"pi": ("pi",), "E": ("E",), "C": ("num", Fraction(0))}  # C: a constant of integration
MAX_CHARS = 1000     # longer answers are rejected outright
MAX_TOKENS = 400     # ... as are answers with more tokens
MAX_DEPTH = 40       # nesting of parentheses, calls, signs and powers
MAX_DIGITS = 20      # digits in one number literal
MAX_STEPS = 1000     # arithmetic steps of one numeric evaluation (nodes + exponent bit lengths)
MAX_BITS = 20_000    # bits of any exact number the text spells out or sympy would compute from it

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


def _bits(v):
    """Bit size of a Fraction: the larger of its numerator's and denominator's."""
    return max(abs(v.numerator).bit_length(), v.denominator.bit_length())


def _constant(node):
    """Exact value of a rational constant subtree (None if it has x, pi, E or a function);
    raises Reject on x/0, 0**-n and exact numbers over MAX_BITS (estimated before computing)."""
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
    if kind == "**" and a == 0 and b is not None and b <= 0:
        raise Reject("zero to a non-positive power")
    if a is None or b is None:
        return None
    if kind == "**":
        if b.denominator != 1:
            return None  # an irrational constant such as 2**(1/2)
        if abs(a) != 1 and _bits(a) * abs(b) > MAX_BITS:  # estimated first: 10**10**10 stops here
            raise Reject("constant too large")
        v = a ** int(b) if abs(a) != 1 else a ** (int(b) % 2)
    else:
        v = a + b if kind == "+" else a - b if kind == "-" else a * b if kind == "*" else a / b
    if _bits(v) > MAX_BITS:
        raise Reject("constant too large")
    return v


def evaluation_steps(node):
    """Arithmetic steps of one numeric evaluation of the tree: one per node, plus the bit lengths
    of each exact exponent's numerator and denominator (square-and-multiply)."""
    kind = node[0]
    if kind == "call":
        return 1 + sum(evaluation_steps(a) for a in node[2])
    steps = 1 + sum(evaluation_steps(c) for c in node[1:] if isinstance(c, tuple))
    if kind == "**":
        exponent = _constant(node[2])
        if exponent is not None:
            steps += abs(exponent.numerator).bit_length() + exponent.denominator.bit_length()
    return steps


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
        if evaluation_steps(node) > MAX_STEPS:
            return None
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


def _sympy_bits(expr):
    """Bits of the exact numbers sympy multiplies out when `expr` is raised to a number: a number's
    own, a product's factors', a power's base's times its exponent (sympy writes (2*x)**n as
    2**n*x**n and (2**(1/2))**n as 2**(n/2)); 0 for sums and functions, which it leaves alone."""
    if expr.is_Rational:
        return 0 if expr in (0, 1, -1) else max(abs(expr.p).bit_length(), abs(expr.q).bit_length())
    if expr.is_Mul:
        return sum(_sympy_bits(a) for a in expr.args)
    if expr.is_Pow and expr.exp.is_Number:
        return _sympy_bits(expr.base) * max(1, abs(expr.exp))
    return 0


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
        if b.is_Number and _sympy_bits(a) * max(1, abs(b)) > MAX_BITS:
            raise Reject("sympy would expand this power into a huge number")
        return a ** b

    expr = build(node)
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise Reject("undefined")
    return expr


# -----------------------------------------------------------------------------
# numeric evaluation of a tree: vectorised complex floats (numpy) or high precision (mpmath)

class BadPoint(Exception):
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


def numpy_lib():
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


def mp_lib(dps=40):
    import mpmath
    big = mpmath.mpf(2) ** 400

    def guard(v):
        if not abs(v) < big:  # also catches nan
            raise BadPoint
        return v

    def growth(fn):
        # exp and friends of a huge argument would build numbers with astronomically many digits
        return lambda z: fn(z) if abs(mpmath.re(z)) < 300 else (_ for _ in ()).throw(BadPoint())

    grown_exp = growth(mpmath.exp)

    def exp(z):
        # below e**-300 the value is 0 to any digits a check uses (and exp(x - 1000) is no undefined point)
        return mpmath.mpc(0) if mpmath.re(z) <= -300 else grown_exp(z)

    def bounded(fn):
        # trig functions of a huge argument need as many digits as the argument has bits
        return lambda z: fn(z) if abs(z) < big else (_ for _ in ()).throw(BadPoint())

    def nearly_real_abs(z):
        z = mpmath.mpc(z)
        if abs(z.imag) <= 1e-6 * abs(z.real):
            return z if z.real >= 0 else -z
        return mpmath.mpc(abs(z))

    def power(a, b):
        if a == 0:
            if mpmath.re(b) > 0:
                return mpmath.mpc(0)
            raise BadPoint
        size = mpmath.re(b * mpmath.log(a))  # log |a**b|
        if size < -300:
            return mpmath.mpc(0)  # as exp: below e**-300 it is 0 to any digits a check uses
        if size > 300:
            raise BadPoint
        return mpmath.power(a, b)

    def evaluate(fn, pts):
        out = []
        for p in pts:
            try:
                out.append(guard(mpmath.mpc(fn(p))))
            except (BadPoint, ZeroDivisionError, ValueError, OverflowError, ArithmeticError):
                out.append(None)
        return out

    return dict(
        num=lambda v: mpmath.mpf(v.numerator) / v.denominator, pi=mpmath.pi, E=mpmath.e,
        pow=power, ipow=lambda a, n: power(a, n) if n < 0 else guard(a ** n),
        sin=bounded(mpmath.sin), cos=bounded(mpmath.cos), tan=bounded(mpmath.tan), sec=bounded(mpmath.sec),
        csc=bounded(mpmath.csc), cot=bounded(mpmath.cot),
        asin=mpmath.asin, acos=mpmath.acos, atan=mpmath.atan, acot=mpmath.acot,
        sinh=growth(mpmath.sinh), cosh=growth(mpmath.cosh), tanh=mpmath.tanh, asinh=mpmath.asinh,
        acosh=mpmath.acosh, atanh=mpmath.atanh, exp=exp, log=mpmath.log, sqrt=mpmath.sqrt,
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
        except (ZeroDivisionError, ValueError, OverflowError, ArithmeticError, BadPoint):
            c = float("nan")
        return lambda z: c
    return fn


def _derivative_rules(lib):
    """{function: (u, v) -> d/du f(u)} where v = f(u), for the functions of the language."""
    sqrt, sin, cos, tan, cot, tanh, coth = (lib[k] for k in ("sqrt", "sin", "cos", "tan", "cot", "tanh", "coth"))

    def abs_slope(u, v):
        if v != u and v != -u:
            raise BadPoint  # |u| off the real axis is not analytic: no derivative to compare
        return v / u

    return dict(
        sin=lambda u, v: cos(u), cos=lambda u, v: -sin(u), tan=lambda u, v: 1 + v * v,
        sec=lambda u, v: v * tan(u), csc=lambda u, v: -v * cot(u), cot=lambda u, v: -(1 + v * v),
        asin=lambda u, v: 1 / sqrt(1 - u * u), acos=lambda u, v: -1 / sqrt(1 - u * u),
        atan=lambda u, v: 1 / (1 + u * u), acot=lambda u, v: -1 / (1 + u * u),
        asec=lambda u, v: 1 / (u * u * sqrt(1 - 1 / (u * u))), acsc=lambda u, v: -1 / (u * u * sqrt(1 - 1 / (u * u))),
        sinh=lambda u, v: lib["cosh"](u), cosh=lambda u, v: lib["sinh"](u), tanh=lambda u, v: 1 - v * v,
        sech=lambda u, v: -v * tanh(u), csch=lambda u, v: -v * coth(u), coth=lambda u, v: 1 - v * v,
        asinh=lambda u, v: 1 / sqrt(u * u + 1), acosh=lambda u, v: 1 / (sqrt(u - 1) * sqrt(u + 1)),
        atanh=lambda u, v: 1 / (1 - u * u), acoth=lambda u, v: 1 / (1 - u * u),
        asech=lambda u, v: -1 / (u * u * sqrt(1 / u - 1) * sqrt(1 / u + 1)),
        acsch=lambda u, v: -1 / (u * u * sqrt(1 + 1 / (u * u))),
        exp=lambda u, v: v, log=lambda u, v: 1 / u, sqrt=lambda u, v: 1 / (2 * v), cbrt=lambda u, v: v / (3 * u),
        abs=abs_slope)


def compile_derivative(node, lib):
    """A function z -> (value, derivative) of the tree under `lib`, by forward-mode automatic
    differentiation: exact up to rounding at any scale, unlike a finite difference."""
    kind = node[0]
    if not has_x(node):
        fc = compile_tree(node, lib)
        return lambda z: (fc(z), 0)
    if kind == "x":
        return lambda z: (z, 1)
    if kind == "neg":
        fa = compile_derivative(node[1], lib)
        return lambda z: tuple(-w for w in fa(z))
    if kind == "call":
        args = [compile_derivative(a, lib) for a in node[2]]
        if len(args) == 2:  # log(a, b) = log(a) / log(b)
            log = lib["log"]

            def log2(z):
                (a, da), (b, db) = args[0](z), args[1](z)
                la, lb = log(a), log(b)
                return la / lb, (da / a * lb - la * db / b) / (lb * lb)
            return log2
        f, slope, fa = lib[node[1]], _derivative_rules(lib)[node[1]], args[0]

        def call(z):
            u, du = fa(z)
            v = f(u)
            return v, slope(u, v) * du
        return call
    fa, fb = compile_derivative(node[1], lib), compile_derivative(node[2], lib)
    if kind == "**":
        exponent = _constant(node[2])
        if exponent is not None:
            ipow, power = lib["ipow"], lib["pow"]
            n = int(exponent) if exponent.denominator == 1 else lib["num"](exponent)
            raise_to = (lambda a, k: ipow(a, k)) if exponent.denominator == 1 else power

            def const_power(z):
                a, da = fa(z)
                return raise_to(a, n), (n * raise_to(a, n - 1) * da if n != 0 else 0)
            return const_power
        power, log = lib["pow"], lib["log"]

        def general_power(z):  # a**b = exp(b log a)
            (a, da), (b, db) = fa(z), fb(z)
            v = power(a, b)
            return v, v * (db * log(a) + b * da / a)
        return general_power

    def arithmetic(z):
        (a, da), (b, db) = fa(z), fb(z)
        if kind == "+":
            return a + b, da + db
        if kind == "-":
            return a - b, da - db
        if kind == "*":
            return a * b, da * b + a * db
        return a / b, (da * b - a * db) / (b * b)
    return arithmetic


_PARSED = {}  # integrand text -> tree, for parse_integrand


def parse_integrand(integrand):
    """`parse`, remembered: the same few integrands are checked over and over."""
    if integrand not in _PARSED:
        if len(_PARSED) > 4096:
            _PARSED.clear()
        _PARSED[integrand] = parse(integrand)
    return _PARSED[integrand]


def values_at(node, points, dps=20):
    """The tree's values at the real `points`, computed with mpmath at `dps` digits; None where it is
    undefined or astronomically large."""
    import mpmath
    lib = mp_lib(dps)
    fz = compile_tree(node, lib)
    with lib["context"]():
        return lib["eval"](fz, [mpmath.mpc(t, 0) for t in points])
