"""Verifier speed: verifications per second for each task on a realistic mix of answers.

    python bench/verify.py            # prints one JSON line

The mix is what the loop sees: correct answers, near misses (the plausible wrong answers a weak
model writes), unparseable text and missing answers. Countdown verifies in-process; integration
answers go through the worker processes (started before timing: startup is a one-off cost), both
one call at a time (`verify`) and batched (`verify_many`, as the loop calls it). A worker computes a
definite integral once per problem and remembers it: the first check of each definite problem
(cold: the quadrature) is timed apart, as is the year-sized Bee integral (the pointwise tier).
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tasks  # noqa: E402
from tasks.pool import default_workers  # noqa: E402

GARBAGE = ["I think the answer is 42", "((", "", "x +", "sin(x", "__import__('os')", "1/0", "9**9**9",
           "Integral(x, x)", "the answer", "<answer>", "3 5 7"]


def mix(task, problems, rng):
    """(problems, answers): 40% correct, 40% near misses, 15% garbage, 5% missing."""
    ps, answers = [], []
    for p in problems:
        r = rng.random()
        if r < 0.40:
            a = tasks.extract_answer(task.solution_text(p, rng))
        elif r < 0.80:
            a = task.near_miss(p, rng)
        elif r < 0.95:
            a = rng.choice(GARBAGE)
        else:
            a = None
        ps.append(p)
        answers.append(a)
    return ps, answers


def rate(fn, calls, min_seconds):
    """Calls per second of fn() (each call does `calls` verifications), over at least min_seconds."""
    done, start = 0, time.perf_counter()
    while True:
        fn()
        done += calls
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="problems per task in the mix")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timing per figure")
    ap.add_argument("--workers", type=int, default=None, help="integration worker processes (default: auto)")
    args = ap.parse_args()
    rng = random.Random(0)
    out = {}

    cd = tasks.get("countdown")
    ps, answers = mix(cd, cd.make_problems(args.n, seed=0), rng)
    pairs = list(zip(ps, answers))
    out["countdown_verify_per_s"] = round(rate(lambda: [cd.verify(p, a) for p, a in pairs], len(pairs),
                                               args.seconds))
    out["countdown_correct_frac"] = round(sum(cd.verify(p, a) for p, a in pairs) / len(pairs), 3)

    it = tasks.get("integration")
    problems = it.make_problems(args.n - len(it.BEE), seed=0) + it.make_problems(len(it.BEE), 0, split="bee")
    ps, answers = mix(it, problems, rng)
    workers = args.workers or default_workers()
    it.verify({"integrand": "x"}, "x**2/2")  # start the first worker
    cold = []
    for p in [p for p in problems if it.is_definite(p)]:  # first sight of each integral, in one worker
        t0 = time.perf_counter()
        it.verify(p, it.reference_answer(p))
        cold.append(time.perf_counter() - t0)
    cold.sort()
    out["integration_definite_share"] = round(len(cold) / len(problems), 3)
    out["integration_definite_cold_ms_p50"] = round(1000 * statistics.median(cold), 1)
    out["integration_definite_cold_ms_max"] = round(1000 * cold[-1], 1)
    t0 = time.perf_counter()
    it.verify_many([{"integrand": "x**2024*(1 - x**2025)**2025"}] * 2,
                   ["-(1 - x**2025)**2026/(2025*2026)", "-(1 - x**2025)**2026/(2025*2027)"], workers=1)
    out["integration_year_exponent_ms_per_check"] = round(1000 * (time.perf_counter() - t0) / 2, 1)
    it.verify_many(ps[:workers * 4], answers[:workers * 4], workers=workers)  # start (and warm) the workers
    latencies = []

    def one_by_one():
        for p, a in zip(ps, answers):
            t0 = time.perf_counter()
            it.verify(p, a)
            latencies.append(time.perf_counter() - t0)

    out["integration_verify_per_s"] = round(rate(one_by_one, len(ps), args.seconds), 1)
    out["integration_verify_many_per_s"] = round(rate(lambda: it.verify_many(ps, answers, workers=workers),
                                                      len(ps), args.seconds), 1)
    out["integration_workers"] = workers
    latencies.sort()
    out["integration_latency_ms_p50"] = round(1000 * statistics.median(latencies), 3)
    out["integration_latency_ms_p99"] = round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 2)
    out["integration_latency_ms_max"] = round(1000 * latencies[-1], 2)
    out["integration_correct_frac"] = round(sum(it.verify_many(ps, answers, workers=workers)) / len(ps), 3)
    out["timeout_s"] = it.TIMEOUT
    out["cpus"] = os.cpu_count()
    it.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
