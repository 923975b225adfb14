"""eval.py: numbers on a model whose outputs the test writes equal hand-computed values; the CLI."""

import json
import os

import pytest

import eval as ev
import sample
import tasks
from config import EvalConfig
from model import Qwen
from tokenizer import Tokenizer
from conftest import scripted_generate

countdown = tasks.get("countdown")
PROBLEMS = [{"numbers": [3, 5, 7], "target": 22}, {"numbers": [2, 3, 4], "target": 24},
            {"numbers": [1, 2, 3], "target": 6}]
# two samples per problem; verifier: right, wrong | no answer, right | wrong, wrong
SOLUTIONS = {22: ["<answer>3*5+7</answer>", "<think>hm</think><answer>3+5+7</answer>"],
             24: ["I give up", "<answer>2*3*4</answer>"],
             6: ["<answer>1+2</answer>", "<answer> 1*2+3 </answer>"]}
JUDGED_ONE = {"3*5+7", "3+5+7", "1+2"}  # judge: TP, FP | -, FN | FP, TN


def script(prompt, s):
    if "Proposed answer: " in prompt:
        answer = prompt.split("Proposed answer: ", 1)[1].split("\n", 1)[0]
        return f"let me see <JUDGE_SCORE>{int(answer in JUDGED_ONE)}</JUDGE_SCORE>"
    target = int(prompt.split("create an equation that equals ", 1)[1].split(".", 1)[0])
    return SOLUTIONS[target][s]


@pytest.fixture()
def scripted(tiny_ckpt, monkeypatch):
    tok = Tokenizer.from_pretrained(tiny_ckpt)
    monkeypatch.setattr(sample, "generate", scripted_generate(tok, script))
    return tok


def test_numbers_equal_hand_computed_values(tiny_ckpt, scripted):
    tok = scripted
    model = Qwen.from_pretrained(tiny_ckpt)
    judge = ev.Judge(model, tok, countdown, samples=1)
    r = ev.evaluate(model, tok, countdown, PROBLEMS, samples=2, judge=judge)
    lengths = [len(tok.encode(t)) + 1 for p in PROBLEMS for t in SOLUTIONS[p["target"]]]  # + the stop token
    assert r["mean@2"] == pytest.approx(2 / 6)
    assert r["pass@2"] == pytest.approx(2 / 3)
    assert r["format_rate"] == pytest.approx(5 / 6)
    assert r["mean_length"] == pytest.approx(sum(lengths) / 6)
    assert r["truncated_rate"] == 0.0
    assert (r["judge_tp"], r["judge_fp"], r["judge_tn"], r["judge_fn"]) == (1, 2, 1, 1)
    assert r["judge_precision"] == pytest.approx(1 / 3) and r["judge_recall"] == pytest.approx(1 / 2)
    assert r["judge_accuracy"] == pytest.approx(2 / 5) and r["judge_judged"] == 5

    r1 = ev.evaluate(model, tok, countdown, PROBLEMS, samples=1, batch_size=2)  # first samples only
    assert r1["mean@1"] == pytest.approx(1 / 3) and r1["pass@1"] == pytest.approx(1 / 3)
    assert r1["format_rate"] == pytest.approx(2 / 3) and "judge_tp" not in r1


def test_cli_table_json_and_two_models(tiny_ckpt, scripted, tmp_path, capsys):
    out = tmp_path / "res.json"
    ev.main(["--task", "countdown", "--model", tiny_ckpt, tiny_ckpt, "--samples", "2", "--n", "3",
             "--problems", write_problems(tmp_path), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "mean@2" in printed and "pass@2" in printed and "judge TP/FP/TN/FN" in printed and "1/2/1/1" in printed
    data = json.loads(out.read_text())
    assert len(data["results"]) == 2 and data["task"] == "countdown"
    for r in data["results"]:
        assert r["mean@2"] == pytest.approx(1 / 3) and r["judge_fp"] == 2 and r["prompt_style"] == "full"


def test_cli_with_the_real_sampler_equals_evaluate_called_with_its_flags(tiny_ckpt, tmp_path):
    """The problems (split, seed, n), the budgets, the style and the judge's settings the CLI resolves are
    its flags' and the defaults: a miswired flag shows as other numbers."""
    out = tmp_path / "r.json"
    ev.main(["--model", tiny_ckpt, "--n", "2", "--samples", "2", "--seed", "3", "--max-new-tokens", "8",
             "--judge-max-new-tokens", "6", "--judge-temperature", "0.5", "--out", str(out)])
    r = json.loads(out.read_text())["results"][0]
    model, tok = Qwen.from_pretrained(tiny_ckpt), Tokenizer.from_pretrained(tiny_ckpt)
    judge = ev.Judge(model, tok, countdown, samples=1, temperature=0.5, max_new_tokens=6, style="full", batch_size=64)
    expected = ev.evaluate(model, tok, countdown, countdown.make_problems(2, seed=3, split="test"), samples=2,
                           temperature=1.0, max_new_tokens=8, style="full", seed=3, judge=judge, batch_size=64)
    assert {k: r[k] for k in expected} == expected
    assert (r["prompt_style"], r["max_new_tokens"], r["judge_max_new_tokens"], r["judge_temperature"]) == \
        ("full", 8, 6, 0.5)


def write_problems(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--task", "sudoku"], "unknown task"),
    (["--n", "0"], "empty problem set"),
    (["--samples", "0"], "--samples must be >= 1"),
])
def test_bad_flags_are_one_line(tiny_ckpt, args, message, capsys):
    with pytest.raises(SystemExit):
        ev.main(["--model", tiny_ckpt] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_bad_model_folders_are_one_line(tiny_ckpt, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for folder, message in [(tmp_path / "empty", "config.json"), (tmp_path / "nope", "no such folder")]:
        with pytest.raises(SystemExit):  # found before any model is measured, the first one included
            ev.main(["--model", tiny_ckpt, str(folder), "--n", "1", "--out", str(tmp_path / "r.json")])
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "r.json").exists()
    empty_file = tmp_path / "none.jsonl"
    empty_file.write_text("\n")
    with pytest.raises(SystemExit):
        ev.main(["--model", tiny_ckpt, "--problems", str(empty_file)])
    assert "empty problem set" in capsys.readouterr().err


def test_default_model_missing_says_how_to_pass_one(monkeypatch, tmp_path, capsys):
    import config
    monkeypatch.setattr(config, "ASSETS", str(tmp_path / "assets"))
    with pytest.raises(SystemExit):
        ev.main(["--n", "1"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "tiny-countdown is not built yet" in line and "--model" in line


def test_bee_split_takes_the_whole_bee_set_and_is_integrations_alone(tiny_ckpt, tmp_path, capsys):
    import tasks
    out = tmp_path / "bee.json"
    ev.main(["--task", "integration", "--model", tiny_ckpt, "--split", "bee", "--max-new-tokens", "2",
             "--judge-samples", "0", "--out", str(out)])
    assert json.loads(out.read_text())["results"][0]["problems"] == len(tasks.get("integration").BEE) == 89
    with pytest.raises(SystemExit):
        ev.main(["--model", tiny_ckpt, "--split", "bee"])
    assert "--split bee: only the integration task has a Bee set" in capsys.readouterr().err


def test_unset_budgets_come_from_the_model_folder_then_the_flags(tiny_ckpt, tmp_path):
    import shutil
    model = tmp_path / "m"
    shutil.copytree(tiny_ckpt, model)
    (model / "nano_rlsr.json").write_text(json.dumps({"task": "countdown", "train_defaults": {
        "max_new_tokens": 5, "judge_max_new_tokens": 7, "judge_temperature": 0.0, "lr": 1.0}}))
    out = tmp_path / "r.json"
    ev.main(["--model", str(model), "--n", "2", "--out", str(out)])
    r = json.loads(out.read_text())["results"][0]
    assert (r["max_new_tokens"], r["judge_max_new_tokens"], r["judge_temperature"]) == (5, 7, 0.0)
    assert r["mean_length"] <= 5  # the folder's answer budget was used
    ev.main(["--model", str(model), "--n", "2", "--max-new-tokens", "3", "--judge-temperature", "0.5",
             "--out", str(out)])
    r = json.loads(out.read_text())["results"][0]
    assert (r["max_new_tokens"], r["judge_max_new_tokens"], r["judge_temperature"]) == (3, 7, 0.5)
    ev.main(["--model", tiny_ckpt, "--n", "1", "--max-new-tokens", "4", "--out", str(out)])  # no folder settings
    r = json.loads(out.read_text())["results"][0]
    assert (r["judge_max_new_tokens"], r["judge_temperature"]) == (EvalConfig.judge_max_new_tokens, 1.0)


def test_every_model_answers_the_first_folders_problems_or_the_flags(tiny_ckpt, tmp_path, monkeypatch):
    import shutil
    knobs = {"max_count": 3, "max_number": 9, "max_target": 50}
    model = tmp_path / "m"
    shutil.copytree(tiny_ckpt, model)
    (model / "nano_rlsr.json").write_text(json.dumps({"task": "countdown", "difficulty": knobs}))
    tok = Tokenizer.from_pretrained(tiny_ckpt)
    for flags, difficulty in [([], knobs), (["--difficulty", '{"max_target": 30}'], {"max_target": 30})]:
        calls = []
        monkeypatch.setattr(sample, "generate", scripted_generate(tok, lambda prompt, s: "no answer", calls=calls))
        ev.main(["--model", str(model), tiny_ckpt, "--n", "3", "--judge-samples", "0",
                 "--out", str(tmp_path / "r.json"), *flags])
        prompts = [tok.decode(tok.encode_chat(countdown.prompt(p, style="full")))
                   for p in countdown.make_problems(3, seed=0, split="test", **difficulty)]
        assert [texts for texts, _ in calls] == [prompts, prompts]  # one generate call per model
