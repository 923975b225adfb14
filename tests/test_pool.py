"""The killable worker pool (tasks/pool.py) on plain stdlib functions: results in order, a default
for jobs that fail, crash their worker or run out of time, the memory limit, and what it refuses."""

import math
import os
import secrets
import sys
import time

import pytest

from tasks.pool import Pool

SLACK = 1.0  # seconds allowed on top of a time limit for process round trips on a busy machine


@pytest.fixture
def pools():
    started = []
    yield lambda *args, **kwargs: started.append(Pool(*args, **kwargs)) or started[-1]
    for pool in started:
        pool.close()


def test_results_in_order_and_a_default_for_jobs_that_raise(pools):
    pool = pools(math.sqrt)
    jobs = [4, 9, -1, "x", 16, 25, 36]
    assert pool.map(jobs, timeout=30, workers=2, default="bad") == [2.0, 3.0, "bad", "bad", 4.0, 5.0, 6.0]
    assert pool.map([], timeout=30) == []


def test_a_job_past_its_time_limit_is_cut_and_its_worker_replaced(pools):
    pool = pools(time.sleep)
    assert pool.map([0], timeout=30) == [None]  # started and warm: startup is not charged to a job
    before = pool.workers[0].proc.pid
    start = time.perf_counter()
    assert pool.map([0, 60, 0], timeout=0.5, workers=1, default="late") == [None, "late", None]
    assert time.perf_counter() - start < 0.5 + SLACK
    assert pool.workers[0].proc.pid != before and pool.workers[0].proc.poll() is None


def test_a_crashed_worker_gives_the_default_and_is_replaced(pools):
    pool = pools(os._exit)
    assert pool.map([3, 3], timeout=30, workers=1, default="crashed") == ["crashed", "crashed"]


def test_what_a_job_prints_cannot_corrupt_the_replies(pools):
    assert pools(print).map(["ready", "[0, true, 1]"], timeout=30) == [None, None]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the address-space limit is enforced on Linux")
def test_memory_limit(pools):
    pool = pools(secrets.token_hex, memory_limit=1 << 30)  # token_hex(n): 2n hex digits from n random bytes
    small, huge = pool.map([100, 2 << 30], timeout=30, workers=1, default="no memory")
    assert len(small) == 200 and huge == "no memory"


def test_functions_a_worker_cannot_import_are_refused():
    with pytest.raises(ValueError):
        Pool(lambda job: job)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_neither_uses_nor_stops_its_parents_workers(pools):
    pool = pools(math.sqrt)
    assert pool.map([4], timeout=30) == [2.0]
    before = pool.workers[0].proc.pid
    child = os.fork()
    if child == 0:  # the child: close() at its exit must spare the parent's workers; map() starts its own
        pool.close()
        ok = pool.map([9], timeout=30) == [3.0] and pool.workers[0].proc.pid != before
        pool.close()
        os._exit(0 if ok else 1)
    assert os.waitpid(child, 0)[1] == 0
    assert pool.map([16], timeout=30) == [4.0] and pool.workers[0].proc.pid == before
