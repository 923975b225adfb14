"""plot.py: runs drawn side by side from their metrics.jsonl into one PNG; bad input and a missing
matplotlib are one line each."""

import builtins
import json
import math
import os
import struct
import subprocess
import sys

import pytest

import plot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CURVE_PANELS = ["reward", "held-out accuracy", "judge vs verifier", "KL to reference", "entropy",
                "completion length"]


def step_line(step, judge=False, self_correct=False):
    """A metrics.jsonl line shaped like train.py's, with made-up values."""
    line = {"step": step, "reward_mean": 0.3 + 0.1 * math.sin(step), "reward_std": 0.4, "rollout_acc": 0.3,
            "format_rate": 1.0, "len_mean": 30.0 + step % 3, "len_max": 40, "truncated_rate": 0.0,
            "kl": 0.001 * step, "clip_frac": 0.0, "entropy": 0.2, "approx_kl": 0.0, "loss": 0.0, "grad_norm": 0.5,
            "time_generate": 0.5, "time_judge": 0.7 if judge else 0.0, "time_verify": 0.1, "time_update": 1.0,
            "time_step": 2.5 if judge else 1.8, "lr": 1e-4}
    if judge:
        line.update(judge_tp=10, judge_fp=2, judge_tn=40, judge_fn=1, judge_precision=None if step == 1 else 0.8,
                    judge_recall=0.9, judge_accuracy=0.9, judge_judged=64, judge_distinct=50)
    if self_correct:
        line.update(sc_turn1_acc=0.3, sc_final_acc=0.35, sc_delta_i2c=0.06, sc_delta_c2i=0.01,
                    sc_verify_acc_correct=0.8, sc_verify_acc_wrong=0.6, sc_mean_attempts=1.4)
    return line


def write_run(folder, steps=30, judge=False, heldout=True, self_correct=False, eval_interval=10):
    os.makedirs(folder, exist_ok=True)
    lines = [{"step": 0, "heldout_acc": 0.3, "heldout_format_rate": 1.0, "heldout_mean_length": 30.0,
              "time_eval": 1.0}] if heldout else []
    for step in range(1, steps + 1):
        line = step_line(step, judge, self_correct)
        if heldout and step % eval_interval == 0:
            line.update(heldout_acc=0.3 + step / 100, heldout_format_rate=1.0, time_eval=0.4)
            if self_correct:
                line.update(heldout_turn1_acc=0.3)
        lines.append(line)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return str(folder)


def png_size(path):
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = open(path, "rb").read(32)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_two_runs_side_by_side_in_one_png(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    rlsr = write_run(tmp_path / "rlsr-live", judge=True)
    verifier = write_run(tmp_path / "rlsr-verifier", judge=False, heldout=False)
    assert plot.main([rlsr, verifier]) == os.path.join(rlsr, "metrics.png")  # the first run's folder
    width, height = png_size(os.path.join(rlsr, "metrics.png"))
    assert width > 1000 and height > 500

    runs = {"rlsr-live": plot.read_metrics(rlsr), "rlsr-verifier": plot.read_metrics(verifier)}
    fig = plot.draw(runs, str(tmp_path / "again.png"), smooth=5)
    assert plot.panel_titles(fig) == CURVE_PANELS + ["step time split"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["rlsr-live", "rlsr-verifier"]
    panel = dict(zip(plot.panel_titles(fig), [ax for ax in fig.axes if ax.get_visible()]))
    live, verifier_colour = "C0", "C1"
    # smoothed panels: raw (faint) and moving average per metric per run; the judge only for the judged run
    assert {line.get_color() for line in panel["judge vs verifier"].lines} == {live}
    assert len(panel["judge vs verifier"].lines) == 4  # precision and recall, raw and smoothed
    assert len(panel["reward"].lines) == 8 and {line.get_color() for line in panel["reward"].lines} == {
        live, verifier_colour}
    assert [line.get_alpha() for line in panel["KL to reference"].lines] == [0.2, None, 0.2, None]  # raw faint
    heldout = panel["held-out accuracy"].lines  # evaluations: not smoothed, the run without them absent
    assert len(heldout) == 1 and list(heldout[0].get_xdata()) == [0, 10, 20, 30]
    bars = panel["step time split"]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["rlsr-live", "rlsr-verifier"]


def test_runs_without_a_judge_or_held_out_say_so_and_self_correct_adds_its_panel(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    plain = write_run(tmp_path / "verifier", heldout=False)
    fig = plot.draw({"verifier": plot.read_metrics(plain)}, str(tmp_path / "v.png"))
    panel = dict(zip(plot.panel_titles(fig), [ax for ax in fig.axes if ax.get_visible()]))
    assert [t.get_text() for t in panel["judge vs verifier"].texts] == ["no judge: verifier reward"]
    assert "no held-out" in panel["held-out accuracy"].texts[0].get_text()
    corrected = write_run(tmp_path / "sc", judge=True, self_correct=True)
    fig = plot.draw({"sc": plot.read_metrics(corrected), "verifier": plot.read_metrics(plain)},
                    str(tmp_path / "sc.png"))
    assert plot.panel_titles(fig) == CURVE_PANELS + ["self-correction", "step time split"]
    panel = dict(zip(plot.panel_titles(fig), [ax for ax in fig.axes if ax.get_visible()]))
    assert len(panel["held-out accuracy"].lines) == 2  # final answer and first answer
    assert png_size(tmp_path / "sc.png")[0] > 1000


def test_the_numbers_behind_the_curves(tmp_path):
    assert plot.moving_average([1, 2, 3, 4, 5], 2) == [1, 1.5, 2.5, 3.5, 4.5]
    assert plot.moving_average([1, 2, 3], 1) == [1, 2, 3]
    lines = [{"step": 0, "heldout_acc": 0.5, "time_eval": 9.0},
             {"step": 1, "time_generate": 1.0, "time_update": 2.0, "time_step": 4.0},
             {"step": 2, "time_generate": 3.0, "time_update": 2.0, "time_eval": 1.0, "time_step": 8.0}]
    assert plot.step_time_split(lines) == {"generate": 2.0, "update": 2.0, "eval": 0.5, "other": 1.5}
    assert plot.series(lines + [{"step": 3, "heldout_acc": None}], "heldout_acc") == ([0], [0.5])
    assert plot.run_labels(["runs/a/s0", "runs/b/s0"]) == ["runs/a/s0", "runs/b/s0"]
    assert plot.run_labels(["runs/a", "runs/b/", "runs/c/metrics.jsonl"]) == ["a", "b", "c"]
    # a run still being written may end in half a line; a broken line elsewhere is an error
    folder = write_run(tmp_path / "live", steps=3)
    with open(os.path.join(folder, "metrics.jsonl"), "a") as f:
        f.write('{"step": 4, "reward_me')
    assert [line["step"] for line in plot.read_metrics(folder)] == [0, 1, 2, 3]
    with open(os.path.join(folder, "metrics.jsonl"), "a") as f:
        f.write('\n{"step": 5}\n')
    with pytest.raises(plot.PlotError, match=r"metrics.jsonl:5: not a JSON line"):
        plot.read_metrics(folder)


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "plot.py"), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize("case", ["missing folder", "no metrics file", "empty metrics"])
def test_bad_input_is_one_error_line(tmp_path, case):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    good = write_run(tmp_path / "good")
    bad = tmp_path / "bad"
    if case != "missing folder":
        bad.mkdir()
    if case == "empty metrics":
        (bad / "metrics.jsonl").write_text("\n")
    proc = run_cli(good, str(bad))
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    expected = {"missing folder": "no such run folder", "no metrics file": "no metrics.jsonl",
                "empty metrics": "no metrics lines yet"}[case]
    assert proc.stderr.startswith(f"error: {bad}") and expected in proc.stderr
    assert not os.path.exists(os.path.join(good, "metrics.png"))  # nothing drawn from half the runs


def test_missing_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def without_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", without_matplotlib)
    run = write_run(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        plot.main([run])
    assert e.value.code == 'error: plot.py needs matplotlib: pip install -e ".[plot]"'
    assert not os.path.exists(os.path.join(run, "metrics.png"))
