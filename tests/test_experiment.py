"""experiments/rlsr.py: the curves and summary arithmetic on hand-made metrics, and one tiny end-to-end run."""

import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import rlsr  # noqa: E402


def metrics(accs, judge_counts):
    """metrics.jsonl lines: held-out accuracy at steps 0, 2, 4 ...; judge counts (tp, fp, tn, fn) per step."""
    lines = []
    for step, (tp, fp, tn, fn) in enumerate(judge_counts, start=1):
        lines.append({"step": step, "reward_mean": (tp + fp) / (tp + fp + tn + fn), "rollout_acc": (tp + fn) / 10,
                      "judge_tp": tp, "judge_fp": fp, "judge_tn": tn, "judge_fn": fn})
    for i, a in enumerate(accs):
        step = 2 * i
        if step == 0:
            lines.insert(0, {"step": 0, "heldout_acc": a})
        else:
            lines[step].update(heldout_acc=a)  # line index == step (line 0 is the step-0 eval)
    return lines


def test_curves_windows_and_summary():
    run = rlsr.curves(metrics([0.3, 0.4, 0.5], [(1, 1, 7, 1), (2, 0, 8, 0), (3, 3, 3, 1), (0, 1, 9, 0)]))
    assert run["heldout"] == [(0, 0.3), (2, 0.4), (4, 0.5)]
    # window (0, 2]: tp 3 fp 1 fn 1 -> precision 0.75, recall 0.75; window (2, 4]: tp 3 fp 4 fn 1
    assert run["judge"][0] == {"step": 2, "tp": 3, "fp": 1, "tn": 15, "fn": 1, "precision": 0.75, "recall": 0.75}
    assert run["judge"][1]["precision"] == pytest.approx(3 / 7) and run["judge"][1]["recall"] == 0.75
    other = rlsr.curves(metrics([0.3, 0.2, 0.3], [(0, 0, 10, 0)] * 4))
    assert math.isnan(other["judge"][0]["precision"]) and math.isnan(other["judge"][0]["recall"])
    s = rlsr.summarise({"live": [run, other]})["live"]
    assert s["gains"] == pytest.approx([0.2, 0.0])
    assert s["gain"][0] == pytest.approx(0.1) and s["gain"][1] == pytest.approx(math.sqrt(0.02))
    assert s["peak"][0] == pytest.approx(0.4)
    assert s["judge"]["tp"] == 6 and s["judge"]["fp"] == 5 and s["judge"]["precision"] == pytest.approx(6 / 11)
    # the first/last windows average over the seeds that have a value (nan where the judge passed nothing)
    assert s["judge_first_window"]["precision"][0] == pytest.approx(0.75)


def test_goal_verdict():
    flat = {"gain": (0.0, 0.0)}
    summary = {"verifier": {"gain": (0.2, 0.0)}, "frozen": {"gain": (0.17, 0.0)}, "live": {"gain": (0.15, 0.0)},
               "none": flat}
    frozen, live = rlsr.verdict(summary)
    assert frozen.endswith("goal (>= +15, >= 80%) met")  # 17 >= 15 and 85% >= 80%
    assert live.endswith("NOT met (>= 80%)")  # 75% of the verifier's gain
    loop = {"gain": (0.18, 0.0), "final": (0.5, 0.0), "peak": (0.54, 0.0), "judge": {"precision": 0.85},
            "admitted_solvable": (0.95, 0.0), "self_share": (0.93, 0.0)}
    (line,) = rlsr.verdict({"verifier": {"gain": (0.2, 0.0)}, "self": loop})
    assert line.endswith("NOT met (no collapse)")  # 0.50 < 0.54 - 0.03
    (line,) = rlsr.verdict({"verifier": {"gain": (0.2, 0.0)}, "self": {**loop, "final": (0.52, 0.0)}})
    assert line.endswith(") met")


def test_integration_goal_asks_the_verifier_for_ten_points_and_self_reward_for_80_percent():
    summary = {"verifier": {"gain": (0.12, 0.0)}, "frozen": {"gain": (0.05, 0.0)}, "live": {"gain": (0.10, 0.0)}}
    verifier, frozen, live = rlsr.verdict(summary, "integration")
    assert verifier.endswith("goal (>= +10) met")
    assert frozen.endswith("NOT met (>= 80%)")  # 42% of the verifier's gain
    assert live.endswith("goal (>= 80%) met")  # 83%: no absolute floor on integration
    (verifier, _, _) = rlsr.verdict({**summary, "verifier": {"gain": (0.08, 0.0)}}, "integration")
    assert verifier.endswith("NOT met")


def test_task_flag_picks_the_tasks_model_and_refuses_witness_conditions(tmp_path, capsys):
    model = tmp_path / "m"
    model.mkdir()
    args = rlsr.parse_args(["--task", "integration", "--model", str(model), "--conditions", "verifier", "live"])
    assert args.task == "integration" and args.out.endswith(os.path.join("runs", "rlsr-integration"))
    with pytest.raises(SystemExit):
        rlsr.parse_args(["--task", "integration", "--model", str(model), "--conditions", "live", "self"])
    assert "--conditions self: self-proposed problems need proposals with a witness" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rlsr.parse_args(["--task", "integration", "--model", str(tmp_path / "missing")])
    assert "missing: not a folder" in capsys.readouterr().err
    assert rlsr.parse_args(["--task", "integration", "--model", str(model)]).conditions == ["verifier", "frozen", "live"]
    assert rlsr.parse_args([]).model.endswith(os.path.join("assets", "tiny-countdown"))


def test_quick_experiment_end_to_end(tmp_path, tiny_ckpt):
    out = tmp_path / "exp"
    rlsr.main(["--quick", "--seeds", "0", "--model", str(tiny_ckpt), "--out", str(out), "--conditions", "verifier",
               "frozen", "live", "--", "--steps", "2", "--eval-n", "4", "--group-size", "2", "--max-new-tokens", "8",
               "--judge-max-new-tokens", "8"])
    result = json.loads((out / "results.json").read_text())
    assert set(result["summary"]) == {"none", "verifier", "frozen", "live"}
    for name in ("verifier", "frozen", "live"):
        assert (out / f"{name}-s0" / "done").exists()
        assert [s for s, _ in result["curves"][name][0]["heldout"]] == [0, 2]
    # the live run's judge saw every answered rollout of a step and nothing else (a random model may answer
    # nothing: then all its counts are 0)
    live = [json.loads(x) for x in (out / "live-s0" / "metrics.jsonl").read_text().splitlines()]
    verifier = [json.loads(x) for x in (out / "verifier-s0" / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((out / "live-s0" / "config.json").read_text())
    rollouts = cfg["prompts_per_step"] * cfg["group_size"]
    steps = [m for m in live if "reward_mean" in m]
    assert len(steps) == cfg["steps"]
    for m in steps:
        assert m["judge_tp"] + m["judge_fp"] + m["judge_tn"] + m["judge_fn"] == round(m["format_rate"] * rollouts)
    assert not any("judge_tp" in m for m in verifier) and "judge" not in result["summary"]["verifier"]
    md = (out / "results.md").read_text()
    assert md.startswith("| condition |") and "self-proposed share" not in md  # no condition proposed here
    summary = {"self": {**result["summary"]["live"], "self_share": (1.0, 0.0)}}
    assert "self-proposed share" in rlsr.table(summary, None).splitlines()[0]
    # a second call reuses the finished runs instead of training again
    mtime = os.path.getmtime(out / "live-s0" / "metrics.jsonl")
    rlsr.main(["--quick", "--seeds", "0", "--model", str(tiny_ckpt), "--out", str(out), "--conditions", "verifier",
               "frozen", "live", "--", "--steps", "2"])
    assert os.path.getmtime(out / "live-s0" / "metrics.jsonl") == mtime
