"""The fixed short run on the shipped tiny model:

    OMP_NUM_THREADS=1 python train.py --steps 4 --eval-interval 2 --eval-n 50 --seed 11

tests/data/fixed_run_seed11.jsonl is that run's metrics.jsonl without its timings (the time_* fields).
A change to the code keeps behaviour: the same command must give the same rewards, judge counts,
held-out accuracies and losses. It is recorded on the shipped model, assets/tiny-countdown; a new
shipped model means a new recording.
"""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDED = os.path.join(ROOT, "tests", "data", "fixed_run_seed11.jsonl")


def test_fixed_run_matches_the_recorded_metrics(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--steps", "4", "--eval-interval", "2", "--eval-n", "50",
           "--seed", "11", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    got = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in open(RECORDED)]
    assert [g["step"] for g in got] == [w["step"] for w in want] == [0, 1, 2, 3, 4]
    for g, w in zip(got, want):
        for key, value in w.items():
            assert key in g, f"step {w['step']}: {key} missing"
            if isinstance(value, float) and key not in ("heldout_acc", "reward_mean", "rollout_acc"):
                # losses and stats: the same arithmetic, allowing only float summation-order noise
                assert math.isclose(g[key], value, rel_tol=1e-5, abs_tol=1e-7), (w["step"], key, g[key], value)
            else:  # rewards, accuracies, judge counts: exactly the same
                assert g[key] == value, (w["step"], key, g[key], value)
    first, last = want[0]["heldout_acc"], want[-1]["heldout_acc"]
    assert f"held-out accuracy {first:.3f} (step 0) -> {last:.3f} (step 4)" in result.stdout
