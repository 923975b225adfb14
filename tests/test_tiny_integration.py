"""The tiny integration model's pipeline (experiments/build_tiny.py --task integration): its data, an
end-to-end --quick build, and, once assets/tiny-integration is built, the shipped model's ranges."""

import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest

import tasks
from checkpoint import load_checkpoint
from eval import evaluate
from judge import Judge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "assets", "tiny-integration")


def load_build_tiny():
    spec = importlib.util.spec_from_file_location("build_tiny", os.path.join(ROOT, "experiments", "build_tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_integration_stage1_data_works_then_answers_and_judges():
    build = load_build_tiny()
    task, difficulty = tasks.get("integration"), build.INTEGRATION_DIFFICULTY
    problems = task.make_problems(24, seed=0, **difficulty)
    rows = build.stage1_examples(task, problems, random.Random(0), difficulty, propose_fraction=0.25)
    solutions = [r for r in rows if r["messages"][0]["content"].startswith("integrate(")]
    judgements = [r for r in rows if r["messages"][0]["content"].startswith("check ")]
    proposals = [r for r in rows if r["messages"][0]["content"].startswith("propose\n")]
    assert len(solutions) == 48 and len(judgements) == 48 and len(proposals) == 6
    for r in solutions:  # a few steps, then the answer, which is right
        lines = r["messages"][-1]["content"].splitlines()
        assert lines[-1].startswith("<answer>") and all(line.startswith(("int ", "F(")) for line in lines[:-1])
    verdicts = [tasks.parse_verdict(r["messages"][-1]["content"]) for r in judgements]
    assert verdicts.count(1) == verdicts.count(0) == 24  # one right and one near miss per problem
    for r in judgements:  # the work before the verdict: differentiate (indefinite) or evaluate at the bounds
        work = r["messages"][-1]["content"]
        assert "d/dx" in work and ("integrand" in work or ("F(" in work and "value" in work)), work
    assert all(task.parse_problem(r["messages"][-1]["content"]) for r in proposals)


def test_integration_pipeline_runs_end_to_end(tmp_path):
    out = tmp_path / "tiny-integration"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "build_tiny.py"), "--task", "integration",
                           "--quick", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "nano_rlsr.json").read_text())
    build = load_build_tiny()
    assert meta["task"] == "integration" and meta["prompt_style"] == "compact"
    assert meta["difficulty"] == build.INTEGRATION_DIFFICULTY  # RL's: a term more than the data's
    assert meta["bootstrap"]["difficulty"] == build.INTEGRATION_SFT_DIFFICULTY
    assert meta["train_defaults"] == build.INTEGRATION_TRAIN_DEFAULTS
    heldout = meta["heldout"]  # --quick: 3 own-sample rounds, measured on 30 held-out problems
    assert heldout["n"] == 30 and len(meta["bootstrap"]["rounds"]) == 3 and meta["bootstrap"]["stage1_examples"] > 0
    assert {"accuracy_t1", "accuracy_greedy", "judge_precision", "judge_recall", "proposals"} <= set(heldout)
    assert {"n", "valid", "new"} <= set(heldout["proposals"])
    model, tok, loaded = load_checkpoint(str(out))  # an ordinary checkpoint folder
    assert model.config.model_type == "qwen2" and tok.vocab_size <= model.config.vocab_size
    assert loaded["task"] == "integration"
    assert os.path.getsize(out / "model.safetensors") <= 20e6
    assert not os.path.exists(str(out) + ".work")  # scratch removed
    # --measure-only measures the folder again and rewrites its record, weights untouched
    weights = (out / "model.safetensors").read_bytes()
    meta["heldout"] = {"n": 0}
    (out / "nano_rlsr.json").write_text(json.dumps(meta))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "build_tiny.py"), "--task", "integration",
                           "--quick", "--out", str(out), "--measure-only"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((out / "nano_rlsr.json").read_text())
    assert again["heldout"]["n"] == 30 and again["bootstrap"] == meta["bootstrap"]
    assert (out / "model.safetensors").read_bytes() == weights
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "build_tiny.py"), "--out", str(out),
                           "--measure-only"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2 and "a model for another task than countdown" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(not os.path.isdir(SHIPPED), reason="assets/tiny-integration is not built")
def test_shipped_integration_model_solves_imperfectly_and_judges():
    """The shipped model's ranges on 100 held-out problems (measured: format 0.90, greedy 0.32, T=1
    0.28, greedy-judge precision 0.49 / recall 0.96 on its own T=1 samples); the bounds allow ~2.5
    binomial sd. The project's target is judge precision >= 0.7; this model does not reach it (0.45 on
    300, docs/tiny-model.md), so the bound below is what it does, not that target."""
    model, tok, meta = load_checkpoint(SHIPPED)
    assert meta["task"] == "integration" and meta["prompt_style"] == "compact"
    assert os.path.getsize(os.path.join(SHIPPED, "model.safetensors")) <= 20e6
    task, defaults = tasks.get("integration"), meta["train_defaults"]
    problems = task.make_problems(100, seed=0, split="test", **meta["difficulty"])
    judge = Judge(model, tok, task, samples=1, temperature=0.0, max_new_tokens=defaults["judge_max_new_tokens"],
                  style="compact")  # as in RL
    r = evaluate(model, tok, task, problems, samples=1, temperature=1.0, max_new_tokens=defaults["max_new_tokens"],
                 style="compact", seed=0, judge=judge)
    greedy = evaluate(model, tok, task, problems, samples=1, temperature=0.0,
                      max_new_tokens=defaults["max_new_tokens"], style="compact")
    assert r["format_rate"] >= 0.8
    assert 0.15 <= greedy["mean@1"] <= 0.6
    assert r["judge_precision"] is not None and 0.3 <= r["judge_precision"] <= 0.75
    assert r["judge_recall"] >= 0.8
