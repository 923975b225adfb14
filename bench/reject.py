"""Rejection speed: how long the verifiers take to turn down text that is no answer.

    python bench/reject.py            # prints one JSON line

Countdown verifies in-process; its figures are over random text (printable and other characters,
up to 80 of them, as a model or a fuzzer writes) plus hostile strings. Integration rejects text its
parser cannot read before any worker process sees it (tests/test_integration.py checks that no worker
does); its figures are over such text only, so no worker starts here. Each figure is per answer: the
mean, and the slowest of all, which is what a bound on one check has to cover.
"""

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tasks  # noqa: E402
from tasks import calculus  # noqa: E402

HOSTILE = ["__import__('os').system('true')", "x.__class__.__mro__", "(lambda: x)()", "[x for x in (1, 2)]",
           "9**9**9**9", "(" * 10_000 + "x" + ")" * 10_000, "x" * 10_000, "1" * 5000, "１２*x", "x²", "٣*x",
           "Integral(x, x)", "x; import os", "x\n__import__('os')", "<JUDGE_SCORE>1</JUDGE_SCORE>", "", " ", "\n\t"]
CHARACTERS = "0123456789+-*/() x^._,'\n\t=<>[]{}abcdefxyzEIe²٣１" + "".join(map(chr, range(0x2200, 0x2210)))


def random_texts(rng, n, max_len=80) -> list[str]:
    return [''.join(rng.choice(CHARACTERS) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


def timings(check, answers) -> tuple[float, float]:
    """(mean µs, slowest ms) of check(answer) over the answers."""
    times = []
    for answer in answers:
        start = time.perf_counter()
        check(answer)
        times.append(time.perf_counter() - start)
    return round(1e6 * sum(times) / len(times), 2), round(1e3 * max(times), 3)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="random texts per task")
    args = ap.parse_args(argv)
    rng = random.Random(0)
    out = {}

    cd = tasks.get("countdown")
    problem = {"numbers": [1, 2, 3], "target": 6}
    answers = random_texts(rng, args.n) + HOSTILE
    out["countdown_checks"] = len(answers)
    out["countdown_us_mean"], out["countdown_ms_max"] = timings(lambda a: cd.verify(problem, a), answers)

    it = tasks.get("integration")
    malformed = [a for a in random_texts(rng, args.n) + HOSTILE if calculus.parse(a) is None]
    out["integration_malformed_checks"] = len(malformed)
    out["integration_malformed_us_mean"], out["integration_malformed_ms_max"] = timings(
        lambda a: it.verify_many([{"integrand": "x"}], [a]), malformed)
    out["cpus"] = os.cpu_count()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
