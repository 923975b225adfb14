"""The embedded tiny model (assets/tiny-countdown) and the pipeline that builds it."""

import json
import os
import subprocess
import sys

import pytest

import tasks
from eval import DEFAULT_MODEL, evaluate, load_checkpoint
from judge import Judge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not os.path.isdir(DEFAULT_MODEL), reason="assets/tiny-countdown is not built")
def test_shipped_model_solves_imperfectly_and_judges(tmp_path):
    model, tok, meta = load_checkpoint(DEFAULT_MODEL)
    assert meta["task"] == "countdown" and meta["prompt_style"] == "compact"
    task = tasks.get("countdown")
    problems = task.make_problems(100, seed=0, split="test", **meta["difficulty"])
    judge = Judge(model, tok, task, samples=1, temperature=0.0, max_new_tokens=96, style="compact")  # as in RL
    r = evaluate(model, tok, task, problems, samples=1, temperature=1.0, max_new_tokens=64, style="compact",
                 seed=0, judge=judge)  # the judge on its own T=1 samples, as in RL
    greedy = evaluate(model, tok, task, problems, samples=1, temperature=0.0, max_new_tokens=64, style="compact")
    assert r["format_rate"] > 0.95
    assert 0.12 <= r["mean@1"] <= 0.40  # README: 22.7% at T=1 on 300 held-out problems
    assert 0.15 <= greedy["mean@1"] <= 0.50  # README: 30.3% greedy
    assert r["judge_accuracy"] >= 0.8 and r["judge_precision"] >= 0.65 and r["judge_recall"] >= 0.7  # README: 93%, 0.82, 0.91


def test_bootstrap_pipeline_runs_end_to_end(tmp_path):
    out = tmp_path / "tiny"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "build_tiny.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "nano_rlsr.json").read_text())
    assert {"difficulty", "train_defaults", "heldout", "bootstrap"} <= set(meta)
    assert 0.0 <= meta["heldout"]["accuracy_greedy"] <= 1.0
    model, tok, _ = load_checkpoint(str(out))  # an ordinary checkpoint folder
    assert model.config.model_type == "qwen2" and tok.vocab_size <= model.config.vocab_size
    assert not os.path.exists(str(out) + ".work")  # scratch removed
