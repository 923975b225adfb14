"""experiments/admission.py: the witness rewrites it judges, its tallies of the judge's own text, one small run."""

import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import admission  # noqa: E402
from tasks import countdown as cd  # noqa: E402


def test_commuted_witness_keeps_value_and_numbers_and_prints_back():
    rng = random.Random(0)
    changed = 0
    for _ in range(300):
        numbers = [rng.randint(1, 25) for _ in range(rng.randint(2, 5))]
        tree = cd.parse(cd._random_expression(rng, numbers))
        if tree is None:
            continue
        assert cd.parse(admission.expression_text(tree)) == tree  # only the parentheses it needs, none lost
        swapped = cd.parse(admission.expression_text(admission.commuted(tree)))
        assert sorted(cd.numbers_used(swapped)) == sorted(numbers)
        try:
            assert cd.evaluate(swapped) == cd.evaluate(tree)
        except ZeroDivisionError:
            with pytest.raises(ZeroDivisionError):
                cd.evaluate(swapped)
        changed += swapped != tree
    assert changed > 100
    assert admission.expression_text(cd.parse("-(3-5)*2")) == "-(3-5)*2"
    assert admission.expression_text(cd.parse("8-(3-5)")) == "8-(3-5)"


def test_judge_text_tallies_wrong_decisions():
    problem = {"numbers": [3, 5, 7], "target": 22}
    counts = {}
    admission.judge_text_counts(problem, "3*5+5", "uses 3 5 5 need 3 5 7 ok\n3*5=15\n15+5=20\n20=22 yes", counts)
    assert counts == {"lists_differ": 1, "lists_differ_decided_wrong": 1, "need_copied_right": 1,
                      "uses_copied_right": 1, "value_differ": 1, "value_differ_decided_wrong": 1}
    counts = {}
    admission.judge_text_counts(problem, "3*5+7", cd.judge_text(problem, "3*5+7"), counts)
    assert counts == {"lists_agree": 1, "need_copied_right": 1, "uses_copied_right": 1, "value_agree": 1}


def test_small_run_on_the_shipped_model(capsys):
    out = admission.main(["--n", "24", "--rollouts", "2", "--seed", "5"])
    p = out["proposals"]
    assert 0 < p["valid"] <= 24 and p["witness_right"] <= p["valid"] and p["admitted"] <= p["valid"]
    assert p["admitted_wrong_numbers"] + p["admitted_wrong_value"] <= p["admitted"]
    assert out["commuted"]["admitted"] <= p["admitted"]
    assert all(b["kept"] <= p["admitted"] for b in out["band"])
    assert out["judge_text"].get("lists_differ", 0) + out["judge_text"].get("lists_agree", 0) <= p["valid"]
    assert capsys.readouterr().out.strip().startswith('{"model"')


def test_a_model_for_another_task_is_refused(capsys):
    with pytest.raises(SystemExit):
        admission.main(["--model", os.path.join(ROOT, "assets", "tiny-integration")])
    assert "not countdown" in capsys.readouterr().err


def test_a_folder_without_weights_gets_one_line(tmp_path, capsys):
    (tmp_path / "nano_rlsr.json").write_text('{"task": "countdown"}')
    with pytest.raises(SystemExit):
        admission.main(["--model", str(tmp_path)])
    err = capsys.readouterr().err
    assert "error: --model" in err and "config.json" in err and "Traceback" not in err
