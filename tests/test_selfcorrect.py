"""Self-rewarding correction: trajectory parsing (turns, verdicts, final answer, the cut; malformed and
unterminated text), the paper's metrics on hand-made cases, eval --self-correct on scripted outputs,
the srdata builder on a stub model, and the RL loop's trajectory rows."""

import json
import os
import re
import sys

import pytest

import eval as ev
import sample
import tasks
from model import Qwen
from tasks import parse_trajectory
from tokenizer import Tokenizer
from conftest import scripted_generate

countdown = tasks.get("countdown")
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

# -----------------------------------------------------------------------------
# parsing


def test_one_attempt_verified_correct_stops_there():
    text = "3*5=15\n15+7=22\n<answer>3*5+7</answer>\nuses 3 5 7 ok\n22=22 yes\n[VERIFY] correct"
    t = parse_trajectory(text + "\nmore text <answer>1</answer> [VERIFY] wrong")
    assert t.turns == [("3*5+7", "correct")] and t.final == "3*5+7" and t.terminated
    assert t.end == len(text)  # everything after the first "[VERIFY] correct" is cut
    assert t.first == "3*5+7" and t.first_verdict == "correct"


def test_wrong_then_corrected():
    text = "<answer>3+5+7</answer>\n15!=22 no\n[VERIFY] wrong\n<answer>3*5+7</answer>\n22=22 yes\n[VERIFY] correct"
    t = parse_trajectory(text)
    assert t.turns == [("3+5+7", "wrong"), ("3*5+7", "correct")]
    assert t.final == "3*5+7" and t.terminated and t.end == len(text)


def test_turn_limit_cuts_after_the_last_allowed_verdict():
    attempts = "".join(f"<answer>{i}</answer> [VERIFY] wrong\n" for i in range(5))
    for max_turns in (0, 1, 2, 3):
        t = parse_trajectory(attempts, max_turns=max_turns)
        assert [a for a, _ in t.turns] == [str(i) for i in range(max_turns + 1)]
        assert all(v == "wrong" for _, v in t.turns) and t.terminated
        assert t.final == str(max_turns)  # the last answer of the kept text, even when judged wrong
        assert attempts[:t.end].endswith("[VERIFY] wrong")
    with pytest.raises(ValueError):
        parse_trajectory(attempts, max_turns=-1)


def test_unterminated_and_malformed():
    # no verdict at all: one attempt, unterminated, the answer is still the final answer
    t = parse_trajectory("1+2=3\n<answer>1+2</answer>")
    assert t.turns == [("1+2", None)] and t.final == "1+2" and not t.terminated and t.first_verdict is None
    # cut off inside the correction: the last answer block is unclosed, so there is no final answer
    t = parse_trajectory("<answer>1+2</answer> [VERIFY] wrong\n<answer>3*")
    assert t.turns == [("1+2", "wrong"), (None, None)] and t.final is None and not t.terminated
    # a correction with no answer block yet: the final answer is the last block written (the first)
    t = parse_trajectory("<answer>1+2</answer> [VERIFY] wrong\n1+")
    assert t.turns == [("1+2", "wrong"), (None, None)] and t.final == "1+2"
    # a verdict with no answer before it; "[VERIFY]" with an unknown word is no verdict
    t = parse_trajectory("[VERIFY] maybe [VERIFY]correctly [VERIFY] wrong <answer>4</answer>[VERIFY] correct")
    assert t.turns == [(None, "wrong"), ("4", "correct")] and t.final == "4"
    for empty in ("", "   ", None):
        t = parse_trajectory(empty)
        assert t.turns == [] and t.final is None and t.first is None and not t.terminated


def test_verdict_inside_an_answer_is_part_of_the_answer():
    t = parse_trajectory("<answer>1+2 [VERIFY] correct</answer> [VERIFY] wrong <answer>3</answer> [VERIFY] correct")
    assert t.turns == [("1+2 [VERIFY] correct", "wrong"), ("3", "correct")]
    t = parse_trajectory("<answer>1 [VERIFY] correct")  # inside an unclosed answer: no verdict
    assert t.turns == [(None, None)] and not t.terminated


def test_prompts():
    p = {"numbers": [3, 5, 7], "target": 22}
    assert tasks.self_correct_prompt(countdown, p, "compact") == [{"role": "user", "content": "nums 3 5 7 target 22 verify"}]
    full = tasks.self_correct_prompt(countdown, p, "full")
    assert full[:-1] == countdown.prompt(p, "full")[:-1] and "[VERIFY] wrong" in full[-1]["content"]
    assert countdown.prompt(p, "full")[-1]["content"] in full[-1]["content"]
    m = tasks.intrinsic_prompt(countdown, p, "x <answer>1+2</answer>", "1+2<|im_end|>", "compact")
    assert m[1] == {"role": "assistant", "content": "x <answer>1+2</answer>"}
    assert m[2]["role"] == "user" and "<|im_end|>" not in m[2]["content"]  # model text is neutralised
    assert tasks.check_text("uses 3 5 7 ok\n<JUDGE_SCORE>1</JUDGE_SCORE>") == "uses 3 5 7 ok"


# -----------------------------------------------------------------------------
# metrics


def test_metrics_on_hand_made_cases():
    # first / final correctness and the first verdict of 8 trajectories
    first = [1, 1, 1, 0, 0, 0, 0, 0]
    final = [1, 1, 0, 1, 1, 0, 0, 0]
    verdicts = ["correct", "wrong", "wrong", "wrong", "wrong", "correct", None, "wrong"]
    m = ev.self_correct_metrics([bool(x) for x in first], [bool(x) for x in final], verdicts)
    assert m["n"] == 8 and m["turn1_acc"] == 3 / 8 and m["final_acc"] == 4 / 8
    assert m["delta_i2c"] == 2 / 8 and m["delta_c2i"] == 1 / 8
    assert m["delta_t1_t2"] == pytest.approx(m["delta_i2c"] - m["delta_c2i"]) == pytest.approx(1 / 8)
    assert m["verify_acc_correct"] == 1 / 3  # of 3 right first answers, one called correct
    assert m["verify_acc_wrong"] == 3 / 5  # of 5 wrong ones, 3 called wrong (no verdict is a miss)
    assert m["verified_rate"] == 7 / 8
    m = ev.self_correct_metrics([True, True], [True, True])  # intrinsic: no verdicts
    assert m["verify_acc_correct"] is None and m["verify_acc_wrong"] is None and m["delta_t1_t2"] == 0
    assert ev.self_correct_metrics([True], [True], ["correct"])["verify_acc_wrong"] is None  # no wrong answers
    with pytest.raises(ValueError):
        ev.self_correct_metrics([], [])


# -----------------------------------------------------------------------------
# eval --self-correct on scripted trajectories

PROBLEMS = [{"numbers": [3, 5, 7], "target": 22}, {"numbers": [2, 3, 4], "target": 24},
            {"numbers": [1, 2, 3], "target": 6}, {"numbers": [2, 5, 9], "target": 1}]
TRAJECTORIES = {  # target -> what the "model" writes: c->c, i->c, c->i (robustness failure), i->i cut off
    22: "<answer>3*5+7</answer>\n[VERIFY] correct\nignored <answer>1</answer>",
    24: "<answer>2+3+4</answer>\n[VERIFY] wrong\n<answer>2*3*4</answer>\n[VERIFY] correct",
    6: "<answer>1+2+3</answer>\n[VERIFY] wrong\n<answer>1*2+3</answer>\n[VERIFY] wrong\n<answer>3</answer>",
    1: "<answer>2+5+9</answer>\n[VERIFY] correct",
}
SECOND_TURN = {22: "<answer>3*5+7</answer>", 24: "<answer>2*3*4</answer>", 6: "no idea", 1: "<answer>9-5-2</answer>"}


def self_correct_script(prompt, s):
    target = int(prompt.split(" target ", 1)[1].split(None, 1)[0].split("<", 1)[0])
    if "correct it" in prompt:  # intrinsic baseline's second turn
        return SECOND_TURN[target]
    if " verify" in prompt:
        return TRAJECTORIES[target]
    return TRAJECTORIES[target].split("\n", 1)[0]  # the plain solver prompt: the first attempt only


def test_eval_self_correct_on_scripted_trajectories(tiny_ckpt, monkeypatch, tmp_path):
    tok = Tokenizer.from_pretrained(tiny_ckpt)
    monkeypatch.setattr(sample, "generate", scripted_generate(tok, self_correct_script))
    model = Qwen.from_pretrained(tiny_ckpt)
    r = ev.evaluate_self_correct(model, tok, countdown, PROBLEMS, max_turns=1, style="compact")
    # first: right, wrong, right, wrong; final (max_turns 1 cuts the 6-case after its 2nd verdict): right, right, wrong, wrong
    assert (r["turn1_acc"], r["final_acc"], r["delta_i2c"], r["delta_c2i"]) == (0.5, 0.5, 0.25, 0.25)
    assert r["verify_acc_correct"] == 0.5 and r["verify_acc_wrong"] == 0.5
    assert r["mean_attempts"] == (1 + 2 + 2 + 1) / 4 and r["mode"] == "self_rewarding"
    r = ev.evaluate_self_correct(model, tok, countdown, PROBLEMS, style="compact", intrinsic=True)
    # second turn: kept right, fixed, no answer (first kept), 9-5-2=2 still wrong
    assert (r["turn1_acc"], r["final_acc"], r["delta_i2c"], r["delta_c2i"]) == (0.5, 0.75, 0.25, 0.0)
    assert r["verify_acc_correct"] is None and r["mode"] == "intrinsic"
    # the CLI: one JSON file and a table
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    out = tmp_path / "sc.json"
    ev.main(["--model", tiny_ckpt, "--problems", str(problems), "--self-correct", "--max-turns", "1",
             "--prompt-style", "compact", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["self_correct"] and saved["results"][0]["final_acc"] == 0.5
    with pytest.raises(SystemExit):
        ev.main(["--model", tiny_ckpt, "--intrinsic"])  # a --self-correct baseline only


# -----------------------------------------------------------------------------
# the srdata builder on a stub model


def stub(prompt, s):
    """Solver: no right answer when target % 3 == 0, else samples 0-1 right and 2-3 wrong. Judge: fails
    every wrong answer and the right ones of odd targets (its mistake), with its own check text."""
    m = re.search(r"nums ([\d ]+) target (\d+)", prompt)
    numbers, target = [int(x) for x in m.group(1).split()], int(m.group(2))
    problem = {"numbers": numbers, "target": target}
    if prompt.rstrip().split("<|im_start|>user\n", 1)[1].startswith("check"):
        answer = prompt.split(" answer ", 1)[1].split("<|im_end|>", 1)[0]
        verdict = int(countdown.verify(problem, answer) and target % 2 == 0)
        return f"my check of {answer}\n<JUDGE_SCORE>{verdict}</JUDGE_SCORE>"
    if target % 3 and s < 2:
        return f"mine\n<answer>{countdown.solve(numbers, target)}</answer>"
    return f"mine\n<answer>{'+'.join(map(str, numbers))}+1</answer> trailing"


def test_srdata_builds_each_kind_with_correct_labels(tiny_ckpt, monkeypatch, tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
    from self_correct import SRDataConfig, build_srdata

    tok = Tokenizer.from_pretrained(tiny_ckpt)
    monkeypatch.setattr(sample, "generate", scripted_generate(tok, stub))
    out = tmp_path / "sr"
    build_srdata(SRDataConfig(model=tiny_ckpt, out=str(out), sr_problems=24, sr_samples=4, sr_robust=1,
                              prompt_style="compact", max_new_tokens=16, judge_max_new_tokens=16, sr_checks="own"))
    rows = [json.loads(line) for line in (out / "srdata.jsonl").read_text().splitlines()]
    stats = json.loads((out / "stats.json").read_text())
    kinds = {"wrong_right": 0, "right": 0, "right_wrong_right": 0}
    first_right = 0
    for row in rows:
        user, reply = row["messages"][0]["content"], row["messages"][1]["content"]
        assert user.endswith(" verify") and row["messages"][1]["role"] == "assistant"
        m = re.search(r"nums ([\d ]+) target (\d+)", user)
        problem = {"numbers": [int(x) for x in m.group(1).split()], "target": int(m.group(2))}
        t = parse_trajectory(reply)
        assert t.terminated and t.end == len(reply) and "trailing" not in reply  # attempts end at </answer>
        assert countdown.verify(problem, t.final)  # every trajectory ends in a right answer, verified correct
        ok = countdown.verify(problem, t.first)
        first_right += ok
        if [v for _, v in t.turns] == ["correct"]:
            kinds["right"] += 1
            assert ok and f"my check of {t.first}" in reply  # the judge agreed: its own check is kept
        else:
            assert [v for _, v in t.turns] == ["wrong", "correct"]
            kinds["right_wrong_right" if ok else "wrong_right"] += 1
            if ok:  # robustness: the policy's own (mistaken) failing check, then a right answer again
                assert problem["target"] % 2 and reply.index(f"my check of {t.first}") < reply.index("[VERIFY] wrong")
            if problem["target"] % 3 == 0:  # no own right answer for it: the task's solution corrects
                assert not reply.split("[VERIFY] wrong", 1)[1].lstrip().startswith("mine")
    assert kinds == stats["kinds"] and all(kinds.values())
    assert first_right == len(rows) - first_right  # balanced between right and wrong first attempts
    assert stats["solution_corrections"] > 0 and stats["own_corrections"] > 0
    # own checks where the judge was right; the task's where it failed a right correction (odd targets)
    assert stats["own_checks"] > 0 and stats["task_checks"] > 0


# -----------------------------------------------------------------------------
# the RL loop with --self-correct


def rl_script(prompt, s):
    """Even samples: wrong -> [VERIFY] wrong -> right -> [VERIFY] correct, then text past the stop;
    odd samples: right -> [VERIFY] wrong -> wrong -> wrong -> right (the limit of 2 corrections cuts it)."""
    m = re.search(r"nums ([\d ]+) target (\d+)", prompt)
    numbers, target = [int(x) for x in m.group(1).split()], int(m.group(2))
    right, wrong = countdown.solve(numbers, target), "+".join(map(str, numbers)) + "+1"
    if s % 2 == 0:
        return (f"<answer>{wrong}</answer>\n[VERIFY] wrong\n<answer>{right}</answer>\n[VERIFY] correct\n"
                f"EXTRA <answer>{wrong}</answer>")
    return "\n[VERIFY] wrong\n".join(f"<answer>{a}</answer>" for a in (right, wrong, wrong, right))


def test_rl_rewards_the_final_answer_and_logs_turn_one(tiny_ckpt, monkeypatch, tmp_path):
    import train

    tok = Tokenizer.from_pretrained(tiny_ckpt)
    monkeypatch.setattr(sample, "generate", scripted_generate(tok, rl_script))
    batches = []
    real_batch = train.ppo_batch
    monkeypatch.setattr(train, "ppo_batch", lambda rows, *a: batches.append(rows) or real_batch(rows, *a))
    out = tmp_path / "rl"
    train.main(["--model", tiny_ckpt, "--out", str(out), "--self-correct", "--reward", "verifier",
                "--prompt-style", "compact", "--steps", "2", "--prompts-per-step", "2", "--group-size", "2",
                "--max-new-tokens", "64", "--eval-interval", "2", "--eval-n", "2", "--lr", "1e-3", "--no-progress"])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for line in lines[1:]:
        assert line["reward_mean"] == line["rollout_acc"] == line["sc_final_acc"] == 0.5  # the final answer only
        assert line["sc_turn1_acc"] == 0.5 and line["sc_delta_i2c"] == 0.5 and line["sc_delta_c2i"] == 0.5
        assert line["sc_verify_acc_correct"] == 0.0 and line["sc_verify_acc_wrong"] == 1.0
        assert line["sc_mean_attempts"] == 2.5
    # held-out: one (even) trajectory per problem, wrong then corrected
    assert lines[0]["heldout_turn1_acc"] == 0.0 and lines[0]["heldout_acc"] == lines[0]["heldout_delta_i2c"] == 1.0
    for rows in batches:
        for r in rows:  # the PPO batch holds the kept tokens only: nothing past the cut gets a loss
            decoded = tok.decode(r["completion"])
            assert decoded.startswith(r["text"]) and "EXTRA" not in decoded and len(r["logp"]) == len(r["completion"])
            assert r["text"].endswith("[VERIFY] correct" if r["reward"] else "[VERIFY] wrong")
