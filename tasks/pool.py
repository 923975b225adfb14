"""pool — run a function on jobs in worker processes that can be killed, each job time-bounded.

    pool = Pool(fn, setup=warm_up)     # fn, setup: module-level functions
    results = pool.map(jobs, timeout=2.0, workers=None, default=False)

Takes: `fn`, a module-level function of one argument (workers find it by its import path, the way
pickle finds a function); `setup`, an optional module-level function each worker runs once before
its first job (imports, caches); a list of `jobs`, each a JSON-serialisable value.
Returns: [fn(job) for job in jobs], in order, computed in up to `workers` separate Python processes
(None: default_workers() for several jobs, one for a single job). A result must be JSON-serialisable.

Guarantees:
  - time: each job gets `timeout` seconds of wall time from the moment its worker starts it. A job
    that runs longer is answered with `default`, and its worker is killed and replaced by a warm
    spare; the jobs queued behind it are sent again. So map() returns within about
    len(jobs) * timeout / workers seconds, plus the startup of fresh workers (imports and `setup`,
    not charged to any job, bounded by STARTUP_TIMEOUT).
  - failures: a job whose function raises, or whose worker crashes, is answered with `default` too.
  - isolation: workers are fresh interpreters started with `python -c` (not multiprocessing's spawn,
    which would import the caller's main script and torch with it), one OpenMP/BLAS thread each,
    an address-space limit of `memory_limit` bytes where the OS allows it (a runaway job fails with
    MemoryError instead of eating the machine), and stdout kept for replies (what `fn` prints is
    dropped). Jobs and results travel as JSON lines: the parent never unpickles or runs anything a
    worker sends, so a worker that handles hostile text cannot reach the caller's process.
  - sharing: map() calls are serialised by a lock, so threads may share a pool; a forked child
    starts its own workers instead of using its parent's pipes. Workers stay alive between calls;
    close() (also called at exit) stops them.
"""

import atexit
import importlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import deque

STARTUP_TIMEOUT = 120   # a fresh worker may import numpy, mpmath and sympy; not charged to any job
CHUNK = 16              # jobs sent to a worker at a time (pipelining, far below pipe buffers)
MEMORY_LIMIT = 4 << 30  # default address-space limit of a worker, in bytes
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where workers import from


def default_workers():
    """Worker processes for a batch: up to 4, leaving cores for the rest of the program."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def import_path(fn):
    """"module:name" of a module-level function; ValueError for anything a worker cannot import."""
    module = sys.modules.get(fn.__module__)
    if fn.__module__ == "__main__" or getattr(module, fn.__qualname__, None) is not fn:
        raise ValueError(f"{fn!r} is not a module-level function of an importable module")
    return f"{fn.__module__}:{fn.__qualname__}"


def _load(path):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def serve():
    """A worker's main loop: "ready" once set up, then per line in: JSON [id, job], out: JSON
    [id, ok, result] (ok False when fn raised). Started by Pool with argv fn, setup, memory limit."""
    fn_path, setup_path, memory_limit = sys.argv[1:]
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (int(memory_limit), int(memory_limit)))
    except (ImportError, ValueError, OSError):
        pass  # no such limit on this OS
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stdout now goes where stderr goes (nowhere), so a stray print cannot corrupt a reply
    fn = _load(fn_path)
    if setup_path:
        _load(setup_path)()
    replies.write("ready\n")
    replies.flush()
    for line in sys.stdin:
        try:
            rid, job = json.loads(line)
        except ValueError:
            continue
        try:
            reply = json.dumps([rid, True, fn(job)])
        except Exception:  # noqa: BLE001  (MemoryError, RecursionError, anything: the job gets the default)
            reply = json.dumps([rid, False, None])
        replies.write(reply + "\n")
        replies.flush()


class _Worker:
    """One worker process and the jobs sent to it that it has not answered yet."""

    def __init__(self, command):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
                   OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
        self.buf = b""
        self.ready = False
        self.jobs = deque()   # (index, request line) sent and not yet answered, in order
        self.deadline = None  # when the job at the front runs out of time; None while idle

    def send(self, jobs, timeout):
        self.proc.stdin.write(b"".join(request for _, request in jobs))
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


class Pool:
    """Killable worker processes running `fn` on jobs; see the module docstring for the contract."""

    def __init__(self, fn, setup=None, memory_limit=MEMORY_LIMIT):
        self.command = [sys.executable, "-u", "-c", "from tasks.pool import serve; serve()",
                        import_path(fn), import_path(setup) if setup else "", str(int(memory_limit))]
        self.workers = []         # live workers (started on first use)
        self.spare = None         # a warm replacement, so a timed-out worker is replaced without waiting
        self.owner = os.getpid()  # the process these workers belong to
        self.lock = threading.Lock()
        atexit.register(self.close)

    def close(self):
        """Stop the worker processes; a later map() starts new ones."""
        with self.lock:
            for w in self.workers + [self.spare]:
                if w is not None:
                    w.kill()
            self.workers.clear()
            self.spare = None

    def map(self, jobs, timeout, workers=None, default=None):
        """[fn(job) for job in jobs], `default` for each job that ran past `timeout` seconds or failed."""
        results = [default] * len(jobs)
        if not jobs:
            return results
        if workers is None:
            workers = default_workers() if len(jobs) > 1 else 1
        requests = [(i, (json.dumps([i, job]) + "\n").encode()) for i, job in enumerate(jobs)]
        with self.lock:
            self._run(requests, results, timeout, max(1, min(workers, len(jobs))))
        return results

    def _replace(self, worker):
        """Kill `worker`, put the spare in its place (and start a new spare); returns the replacement."""
        slot = self.workers.index(worker)
        worker.kill()
        self.workers[slot] = self.spare if self.spare is not None else _Worker(self.command)
        self.spare = _Worker(self.command)
        return self.workers[slot]

    def _run(self, requests, results, timeout, n_workers):
        """Answer every (index, request) into results[index], on the first `n_workers` workers."""
        if self.owner != os.getpid():  # a forked child must not share its parent's pipes
            self.workers, self.spare, self.owner = [], None, os.getpid()
        while len(self.workers) < n_workers:
            self.workers.append(_Worker(self.command))
        if self.spare is None:  # warm from the start, so the first restart is as cheap as the rest
            self.spare = _Worker(self.command)
        active = self.workers[:n_workers]
        queue = deque(requests)
        while queue or any(w.jobs for w in active):
            for k, w in enumerate(active):  # keep every worker busy
                if not w.jobs and queue:
                    chunk = [queue.popleft() for _ in range(min(CHUNK, len(queue)))]
                    try:
                        w.send(chunk, timeout)
                    except OSError:  # the worker died while idle: replace it and send again
                        w.jobs.clear()
                        queue.extendleft(reversed(chunk))
                        active[k] = self._replace(w)
            busy = [w for w in active if w.jobs]
            if not busy:
                continue
            wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            readable, _, _ = select.select([w.proc.stdout for w in busy], [], [], wait)
            now = time.monotonic()
            for w in busy:
                dead = False
                if w.proc.stdout in readable:
                    try:
                        for line in w.lines():
                            if line == b"ready":
                                w.ready, w.deadline = True, now + timeout
                                continue
                            rid, ok, value = json.loads(line)
                            index, _ = w.jobs.popleft()
                            if ok and rid == index:
                                results[index] = value
                            w.deadline = now + timeout  # the next job starts now
                    except (EOFError, ValueError, TypeError, IndexError, OSError):
                        dead = True
                    if not w.jobs:
                        w.deadline = None
                if w.jobs and (dead or now > w.deadline):
                    # the job at the front ran out of time (or crashed the worker): it keeps the
                    # default, the worker is killed and replaced, and the jobs behind it are sent again
                    w.jobs.popleft()
                    queue.extendleft(reversed(w.jobs))
                    active[active.index(w)] = self._replace(w)
        for w in active:
            w.deadline = None
