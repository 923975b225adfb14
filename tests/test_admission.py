"""experiments/admission.py: the witness rewrites it judges, its tallies of the judge's own text, one small run."""

import json
import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import admission  # noqa: E402
import sample  # noqa: E402
from conftest import scripted_generate  # noqa: E402
from model import Qwen  # noqa: E402
from tasks import countdown as cd  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402


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
    assert json.loads(capsys.readouterr().out) == out  # the one JSON line is the result
    assert out["proposals"]["valid"] > 0  # the shipped model writes proposals that parse_proposal reads


# per problem: its 4 answers (verifier: right, right, wrong, wrong | right, wrong x3 | right x4) and the
# ones the scripted judge passes; pass rates 3/4, 1/4, 4/4
ANSWERS = {22: ["3*5+7", "7+3*5", "3+5+7", "3+5-7"], 24: ["2*3*4", "2+3+4", "2*3+4", "4*3-2"],
           6: ["1+2+3", "1*2*3", "3+2+1", "3*2*1"]}
PASSED = {"3*5+7", "7+3*5", "3+5+7", "2*3*4", "1+2+3", "1*2*3", "3+2+1", "3*2*1"}


def script(prompt, s):
    if "Proposed answer: " in prompt:
        answer = prompt.split("Proposed answer: ", 1)[1].split("\n", 1)[0]
        return f"<JUDGE_SCORE>{int(answer in PASSED)}</JUDGE_SCORE>"
    target = int(prompt.split("create an equation that equals ", 1)[1].split(".", 1)[0])
    return f"<answer>{ANSWERS[target][s]}</answer>"


def test_band_rows_equal_hand_computed_values(tiny_ckpt, monkeypatch):
    tok = Tokenizer.from_pretrained(tiny_ckpt)
    monkeypatch.setattr(sample, "generate", scripted_generate(tok, script))
    model = Qwen.from_pretrained(tiny_ckpt)
    problems = [{"numbers": [3, 5, 7], "target": 22}, {"numbers": [2, 3, 4], "target": 24},
                {"numbers": [1, 2, 3], "target": 6}]
    judge = admission.Judge(model, tok, cd, samples=1, style="full")
    rows = admission.band_rows(model, tok, cd, judge, problems, [True, False, True], g=4, seed=0, style="full",
                               max_new_tokens=16)
    # kept problems, the share of them marked solvable, and precision = right / passed over their rollouts
    expected = {(0.25, 0.75): (2, 1 / 2, 3 / 4), (0.375, 0.75): (1, 1.0, 2 / 3), (0.5, 0.75): (1, 1.0, 2 / 3),
                (0.5, 1.0): (2, 1.0, 6 / 7), (0.25, 1.0): (3, 2 / 3, 7 / 8)}
    assert len(rows) == len(expected)
    for row in rows:
        kept, solvable, precision = expected[tuple(row["band"])]
        assert row["kept"] == kept and row["solvable"] == pytest.approx(solvable)
        assert row["judge_precision"] == pytest.approx(precision)


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
