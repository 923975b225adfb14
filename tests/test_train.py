"""train.py: two steps of the loop per reward mode and problem source, exact resume (also after
kill -9 and a crash mid-save), the metrics against the verifier, bad input, the config path
(config.py) and its --help; sft.py, the supervised stage."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import config
import sample
import sft
import tasks
import train
from config import TrainConfig, config_from_flags, make_config
from model import Qwen
from tokenizer import Tokenizer
from conftest import scripted_generate
from test_config import help_of_each_flag

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
countdown = tasks.get("countdown")
TINY = ["--steps", "2", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "12",
        "--judge-max-new-tokens", "8", "--propose-max-new-tokens", "8", "--propose-n", "6", "--eval-interval", "2",
        "--eval-n", "2", "--lr", "1e-3", "--no-progress"]
NEW_A, NEW_B = "nums 3 5 7 target 22", "nums 2 3 4 target 24"


def script(prompt, s):
    """What the 'model' writes: proposals (a copy of an example, a duplicate, two new problems, junk);
    solver rows 0 mod 2 a correct answer, the rest the real tiny model's text (never an answer);
    a judge that says 1 to every answer with a digit."""
    if "Proposed answer: " in prompt:
        answer = prompt.split("Proposed answer: ", 1)[1].split("\n", 1)[0]
        return f"<JUDGE_SCORE>{int(any(c.isdigit() for c in answer))}</JUDGE_SCORE>"
    if "Write one new Countdown problem" in prompt:
        example = re.search(r"nums [\d ]+ target \d+", prompt).group(0)
        return [f"<answer>{example} by 1+1</answer>", f"<answer>{NEW_A} by 3*5+7</answer>",
                f"ok <answer>{NEW_A} by 7+3*5</answer>", f"<answer>{NEW_B} by 2*3*4</answer>", "junk",
                "<answer>nums 1 target</answer>"][s % 6]
    if s % 2:
        return None
    m = re.search(r"numbers \[([\d, ]+)\], create an equation that equals (\d+)", prompt)
    numbers, target = [int(x) for x in m.group(1).split(",")], int(m.group(2))
    return f"<answer>{countdown.solve(numbers, target)}</answer>"


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture()
def scripted(tiny_ckpt, monkeypatch):
    tok = Tokenizer.from_pretrained(tiny_ckpt)
    monkeypatch.setattr(sample, "generate", scripted_generate(tok, script, real=sample.generate))


def run(*args):
    """train.main in-process; -> the metrics lines of the run's folder."""
    train.main([str(a) for a in args])
    out = args[list(args).index("--out" if "--out" in args else "--resume") + 1]
    return read_lines(os.path.join(out, "metrics.jsonl"))


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def untimed(lines):
    return [{k: v for k, v in line.items() if not k.startswith("time_")} for line in lines]


def weights(path):
    return Qwen.from_pretrained(path).state_dict()


@pytest.mark.parametrize("reward, problems", [("self", "task"), ("verifier", "task"), ("self", "self"),
                                              ("verifier", "self")])
def test_two_steps_of_the_loop(tiny_ckpt, scripted, tmp_path, reward, problems):
    out = tmp_path / "run"
    lines = run("--model", tiny_ckpt, "--out", out, "--reward", reward, "--problems", problems, *TINY)
    assert [line["step"] for line in lines] == [0, 1, 2]
    assert "heldout_acc" in lines[0] and "heldout_acc" in lines[2] and "heldout_acc" not in lines[1]
    for line in lines[1:]:
        # half the rollouts carry a correct answer, the rest are the tiny model's (answerless) text
        assert line["rollout_acc"] == 0.5 and line["format_rate"] == 0.5
        assert line["reward_mean"] == 0.5 and line["groups_mixed"] == 1.0
        for key in ("kl", "clip_frac", "entropy", "len_mean", "len_max", "time_generate", "time_judge",
                    "time_update", "lr"):
            assert key in line
        if reward == "self":  # the judge says 1 to every answer (all correct here)
            tp, fp, tn, fn = (line[f"judge_{k}"] for k in ("tp", "fp", "tn", "fn"))
            assert tp + fp + tn + fn == line["judge_judged"] == 2 and fp == 0
        else:
            assert "judge_tp" not in line
        if problems == "self" and line["step"] == 1:  # the example's copy and a repeat dropped, both admitted
            assert line["proposed_valid"] == 4 and line["proposed_repeat"] == 2 and line["admitted"] == 2
            assert line["problems_self"] == 2 and line["self_share"] == 1.0 and line["admitted_solvable"] == 1.0
        if problems == "self" and line["step"] == 2:  # all repeats now: the buffer's problems are reused
            assert line["admitted"] == 0 and line["proposed_repeat"] == 4
            assert line["problems_self"] == 0 and line["problems_reused"] == 2 and line["self_share"] == 1.0
    samples = read_lines(out / "samples.jsonl")
    for s in samples:  # the metrics' verifier: the logged rollouts re-checked
        assert s["correct"] == (s["answer"] is not None and countdown.verify(s["problem"], s["answer"]))
    if problems == "self":
        assert {countdown.problem_text(s["problem"]) for s in samples} <= {NEW_A, NEW_B}
    # the checkpoint: a model folder that loads, with the starting tokenizer; the weights moved
    ckpt = out / "ckpt"
    prompt = countdown.prompt(samples[0]["problem"])
    saved, start = Tokenizer.from_pretrained(str(ckpt)), Tokenizer.from_pretrained(tiny_ckpt)
    assert saved.encode_chat(prompt) == start.encode_chat(prompt) and saved.stop_ids == start.stop_ids
    after, before = weights(str(ckpt)), weights(tiny_ckpt)
    assert any(not torch.equal(after[k], before[k]) for k in before)


def test_bf16_compute_keeps_fp32_master_weights(tiny_ckpt, scripted, tmp_path):
    """--dtype bf16 (the CUDA default, here on CPU): rollouts from a bf16 copy, bf16 autocast for the
    update, fp32 master weights and optimizer, so an update far below bf16's resolution still lands."""
    out = tmp_path / "bf16"
    lines = run("--model", tiny_ckpt, "--out", out, *TINY, "--dtype", "bf16", "--lr", "1e-6", "--eval-interval", "1")
    assert lines[-1]["reward_mean"] == 0.5 and lines[-1]["heldout_acc"] is not None
    assert json.loads((out / "ckpt" / "config.json").read_text())["torch_dtype"] == "float32"
    state = checkpoint.saved_optimizer_state(str(out / "ckpt"))["state"]
    assert all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    after, before = weights(str(out / "ckpt")), weights(tiny_ckpt)
    delta = max(float((after[k] - before[k]).abs().max()) for k in before)
    assert 0 < delta < 1e-4  # moved by ~lr per step...
    moved = sum(int((after[k] != before[k]).sum()) for k in before)
    moved_bf16 = sum(int((after[k].bfloat16() != before[k].bfloat16()).sum()) for k in before)
    assert moved_bf16 < 0.01 * moved  # ...which bf16 weights could not have held: nearly all round back


def test_self_problems_top_up_on_a_random_model(tiny_ckpt, tmp_path):
    """The tiny random model proposes nothing valid: task problems fill the step, which is logged."""
    lines = run("--model", tiny_ckpt, "--out", tmp_path / "r", "--problems", "self", *TINY, "--steps", "1",
                "--eval-interval", "0")
    assert lines[0]["problems_self"] == 0 and lines[0]["proposed_valid"] == 0 and lines[0]["self_share"] == 0.0
    assert len(read_lines(tmp_path / "r" / "samples.jsonl")) == 1


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tiny_ckpt, scripted, tmp_path):
    flags = ["--model", tiny_ckpt, *TINY, "--ppo-epochs", "2", "--minibatch-size", "2", "--kl-coef", "0.05",
             "--eval-interval", "1", "--save-interval", "1"]
    straight = run(*flags, "--out", tmp_path / "a", "--steps", "4")
    run(*flags, "--out", tmp_path / "b", "--steps", "2")
    resumed = run("--resume", tmp_path / "b", "--steps", "4")
    assert [line["step"] for line in resumed] == [0, 1, 2, 3, 4]
    assert untimed(resumed) == untimed(straight)
    a, b = weights(str(tmp_path / "a" / "ckpt")), weights(str(tmp_path / "b" / "ckpt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(tmp_path / "b" / "ckpt" / "trainer_state.pt", weights_only=False)["step"] == 4


def test_crash_between_the_renames_of_a_save_keeps_a_checkpoint(tiny_ckpt, scripted, tmp_path, monkeypatch):
    flags = ["--model", tiny_ckpt, *TINY, "--eval-interval", "0", "--save-interval", "1"]
    straight = run(*flags, "--out", tmp_path / "a", "--steps", "3")
    real_rename, calls = os.rename, []

    def rename(src, dst):  # the save after step 2: ckpt -> ckpt.old done, then the process dies
        if os.path.basename(dst) in ("ckpt", "ckpt.old"):  # DCP renames its own files too
            calls.append(dst)
        if len(calls) == 3:
            raise SystemError("killed")
        real_rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", rename)
    with pytest.raises(SystemError):
        run(*flags, "--out", tmp_path / "b", "--steps", "3")
    monkeypatch.setattr(checkpoint.os, "rename", real_rename)
    assert not (tmp_path / "b" / "ckpt").exists() and (tmp_path / "b" / "ckpt.old").exists()
    assert train.latest_checkpoint(str(tmp_path / "b")).endswith("ckpt.old")
    resumed = run("--resume", tmp_path / "b")
    assert untimed(resumed) == untimed(straight)


def test_kill_9_then_resume(tiny_ckpt, tmp_path):
    """A real process killed with SIGKILL mid-run; --resume finishes it with each step logged once."""
    out = tmp_path / "k"
    args = [sys.executable, os.path.join(REPO, "train.py"), "--model", tiny_ckpt, "--out", str(out), *TINY,
            "--steps", "6", "--save-interval", "2", "--eval-interval", "0", "--lr", "1e-2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as one_thread: same numerics as the in-process run
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(read_lines(metrics))
    assert 3 <= killed_at < 6, proc.stderr.read().decode()[-2000:]
    run("--resume", out)
    lines = read_lines(metrics)
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    straight = run("--model", tiny_ckpt, "--out", tmp_path / "s", *TINY, "--steps", "6", "--save-interval", "2",
                   "--eval-interval", "0", "--lr", "1e-2")
    for a, b in zip(untimed(lines), untimed(straight)):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == (b[k] if b[k] is None else pytest.approx(b[k], rel=1e-5, abs=1e-6)), k


def test_judge_modes_and_gae(tiny_ckpt, scripted, tmp_path):
    for i, extra in enumerate([["--judge", "frozen", "--kl-coef", "0"], ["--judge", tiny_ckpt],
                               ["--advantage", "gae", "--judge-samples", "2"]]):
        lines = run("--model", tiny_ckpt, "--out", tmp_path / str(i), *TINY, "--steps", "1",
                    "--eval-interval", "0", *extra)
        assert lines[0]["reward_mean"] == 0.5 and lines[0]["judge_tp"] == 2


def test_model_folder_settings_and_copies(tiny_ckpt, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_ckpt, model)
    (model / "nano_rlsr.json").write_text(json.dumps({"prompt_style": "compact", "task": "countdown",
                                                      "train_defaults": {"group_size": 3, "top_p": 0.9}}))
    at = TINY.index("--group-size")
    flags = TINY[:at] + TINY[at + 2:]  # the folder's group size, not a flag's
    run("--model", model, "--out", tmp_path / "r", *flags, "--steps", "1", "--eval-interval", "0", "--top-p", "0.95")
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["prompt_style"] == "compact" and cfg["group_size"] == 3  # from the folder
    assert cfg["top_p"] == 0.95 and cfg["lr"] == 1e-3  # a flag beats the folder; the rest are TrainConfig's
    meta = json.loads((tmp_path / "r" / "ckpt" / "nano_rlsr.json").read_text())
    assert meta["prompt_style"] == "compact" and meta["task"] == "countdown"
    sample_line = read_lines(tmp_path / "r" / "samples.jsonl")[0]
    assert sample_line["problem"]["numbers"]
    # experiments take the same path: the folder's defaults apply to make_config too
    made = make_config(TrainConfig, model=str(model), out=str(tmp_path / "q"))
    assert made.group_size == 3 and made.top_p == 0.9 and made.lr == TrainConfig.lr == 1e-6
    assert make_config(TrainConfig, model=str(model), out=str(tmp_path / "q"), group_size=5).group_size == 5
    with pytest.raises(config.UsageError, match="--group-size must be >= 2"):
        make_config(TrainConfig, model=str(model), out=str(tmp_path / "q"), group_size=1)


def fails(capsys, *args, main=train.main):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    message = err if err else str(e.value)
    assert "Traceback" not in message and len(message.splitlines()) <= 3  # argparse: usage + one line
    return message.splitlines()[-1]


def test_bad_input_is_one_clear_line(tiny_ckpt, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "unknown task" in fails(capsys, "--model", tiny_ckpt, "--task", "sudoku", "--out", tmp_path / "x")
    assert "config.json" in fails(capsys, "--model", tmp_path / "empty", "--out", tmp_path / "x")
    assert "no such folder" in fails(capsys, "--model", tmp_path / "nope", "--out", tmp_path / "x")
    assert "empty problem set" in fails(capsys, "--model", tiny_ckpt, "--prompts-per-step", "0")
    assert "--group-size" in fails(capsys, "--model", tiny_ckpt, "--group-size", "1")
    assert "--judge" in fails(capsys, "--model", tiny_ckpt, "--judge", tmp_path / "nope")
    assert "no config.json" in fails(capsys, "--resume", tmp_path / "empty")
    assert "invalid choice" in fails(capsys, "--reward", "oracle")
    assert "positions" in fails(capsys, "--model", tiny_ckpt, "--out", tmp_path / "y", "--max-new-tokens", "5000")
    assert not (tmp_path / "y" / "config.json").exists()  # nothing that would block a corrected rerun
    run("--model", tiny_ckpt, "--out", tmp_path / "r", *TINY, "--steps", "1", "--eval-interval", "0")
    assert "already holds a run" in fails(capsys, "--model", tiny_ckpt, "--out", tmp_path / "r")
    line = fails(capsys, "--resume", tmp_path / "r", "--group-size", "4")
    assert "--group-size" in line and "resume" in line
    run("--resume", tmp_path / "r", "--steps", "2", "--group-size", "2")  # unchanged values are fine
    assert "needs --data" in fails(capsys, "--model", tiny_ckpt, main=sft.main)


def test_default_model_missing_says_how_to_pass_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(config, "ASSETS", str(tmp_path / "assets"))
    line = fails(capsys, "--out", tmp_path / "x")
    assert "tiny-countdown is not built yet" in line and "--model" in line


def test_each_task_has_its_default_model_and_a_wrong_task_model_is_refused(tiny_ckpt, tmp_path, capsys, monkeypatch):
    assert make_config(TrainConfig, out=str(tmp_path / "a")).model == config.default_model("countdown")
    assert config.default_model("integration").endswith(os.path.join("assets", "tiny-integration"))
    monkeypatch.setattr(config, "ASSETS", str(tmp_path / "assets"))  # no integration model built there
    assert "tiny-integration is not built yet" in fails(capsys, "--task", "integration", "--out", tmp_path / "b")
    monkeypatch.undo()
    made_for_countdown = tmp_path / "m"
    shutil.copytree(tiny_ckpt, made_for_countdown)
    (made_for_countdown / "nano_rlsr.json").write_text(json.dumps({"task": "countdown", "difficulty": {"max_count": 3}}))
    line = fails(capsys, "--task", "integration", "--model", made_for_countdown, "--out", tmp_path / "c")
    assert "built for the countdown task" in line and "--task countdown" in line
    import eval as ev
    line = fails(capsys, "--task", "integration", "--model", made_for_countdown, "--n", "1", main=ev.main)
    assert "built for the countdown task" in line


def test_help_states_the_value_each_flag_takes_in_the_default_run(capsys, tmp_path):
    """--help against the config the default run (no flags) writes: every flag's help says its value."""
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    helps = help_of_each_flag(capsys.readouterr().out)
    default_run = make_config(TrainConfig, out=str(tmp_path / "run"))
    for f in config.fields(TrainConfig):
        text = " ".join(helps["--" + f.name.replace("_", "-")].split())
        assert f.metadata["help"].split()[0] in text  # help text from the field itself, not from source comments
        if f.name in ("out", "resume", "model"):
            continue
        value = getattr(default_run, f.name)
        if isinstance(value, list):  # a flag taking several values
            value = " ".join(value) or "none"
        assert f"default: {value}" in text, (f.name, value, text)
    kl = " ".join(helps["--kl-coef"].split())  # a model-folder default names both values
    assert "default: 0.1 from the model folder, else 0.001" in kl
    assert "global" in helps["--minibatch-size"] and "per rank" in " ".join(helps["--micro-batch-size"].split())


# -----------------------------------------------------------------------------
# supervised stage


def chat_examples(n, seed=0):
    import random
    rng = random.Random(seed)
    problems = countdown.make_problems(n, seed=seed)
    return [{"messages": [{"role": "user", "content": countdown.problem_text(p)},
                          {"role": "assistant", "content": countdown.solution_text(p, rng, "compact")}]}
            for p in problems]


def test_sft_masks_exactly_the_assistant_turns(tiny_ckpt):
    tok = Tokenizer.from_pretrained(tiny_ckpt)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "nums 3 5 7 target 22"},
                {"role": "assistant", "content": "<answer>3*5+7</answer>"}, {"role": "user", "content": "sure?"},
                {"role": "assistant", "content": "yes"}]
    ids, mask = sft.encode_example(tok, messages)
    assert tok.decode(ids) == tok.chat(messages, add_generation_prompt=False).rstrip("\n")
    trained = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(trained) == "<answer>3*5+7</answer><|im_end|>yes<|im_end|>"
    prompt = tok.encode_chat(messages[:2])  # the generation prompt is a prefix, tokenised the same way
    assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)]) and mask[len(prompt)]
    assert sft.encode_example(tok, messages[:2]) is None


def test_sft_trains_and_writes_a_model_folder(tiny_ckpt, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in chat_examples(24)))
    out = tmp_path / "sft"
    sft.main(["--model", tiny_ckpt, "--data", str(data), "--out", str(out), "--epochs", "4",
                "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", "--log-interval", "3", "--no-progress",
                "--prompt-style", "compact"])
    log = read_lines(out / "sft_metrics.jsonl")
    assert [line["step"] for line in log] == [3, 6, 9, 12]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    model = Qwen.from_pretrained(str(out))
    assert Tokenizer.from_pretrained(str(out)).vocab_size <= model.config.vocab_size
    assert json.loads((out / "nano_rlsr.json").read_text())["prompt_style"] == "compact"


def test_sft_bad_data_is_one_line(tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"text": "no messages"}\n')
    line = fails(capsys, "--model", tiny_ckpt, "--data", bad, "--out", tmp_path / "o", main=sft.main)
    assert line.startswith("error: ") and "bad.jsonl:2" in line
    only_user = tmp_path / "u.jsonl"
    only_user.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert "no example" in fails(capsys, "--model", tiny_ckpt, "--data", only_user, "--out", tmp_path / "o",
                                 main=sft.main)
    assert "no such file" in fails(capsys, "--model", tiny_ckpt, "--data", tmp_path / "x.jsonl", main=sft.main)


def test_cosine_schedule_and_length_buckets():
    lrs = [sft.cosine_lr(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[-1] >= 0.1 - 1e-9
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    import random
    lengths = [random.Random(i).randint(1, 100) for i in range(50)]
    batches = sft.length_batches(lengths, 8, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(50))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 30  # similar lengths together: little padding


def test_sft_bf16_writes_fp32_weights(tiny_ckpt, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in chat_examples(8)))
    sft.main(["--model", tiny_ckpt, "--data", str(data), "--out", str(tmp_path / "o"),
                "--batch-size", "4", "--warmup", "1", "--dtype", "bf16", "--no-progress"])
    assert json.loads((tmp_path / "o" / "config.json").read_text())["torch_dtype"] == "float32"
    assert read_lines(tmp_path / "o" / "sft_metrics.jsonl")[-1]["step"] == 2


def test_run_summary_sums_the_judge_over_the_run(tmp_path):
    from train import run_summary
    f = tmp_path / "metrics.jsonl"
    lines = [{"step": 0, "heldout_acc": 0.25}, {"step": 1, "judge_tp": 3, "judge_fp": 1, "judge_tn": 4, "judge_fn": 2},
             {"step": 2, "judge_tp": 1, "judge_fp": 1, "judge_tn": 0, "judge_fn": 0, "heldout_acc": 0.5}]
    f.write_text("".join(json.dumps(m) + "\n" for m in lines))
    assert run_summary(str(f)) == ("held-out accuracy 0.250 (step 0) -> 0.500 (step 2); judge vs verifier over the "
                                   "run: TP 4 FP 2 TN 4 FN 2, precision 0.667, recall 0.667")


def integration_script(prompt, s):
    """Integration rows: solver rows 0 mod 2 the right answer (sympy integrates our own generated
    problem), the rest the real tiny model's text (never an answer); a judge that says 1 to everything."""
    import sympy as sp
    from tasks.calculus import parse, symbol_x, to_sympy
    user = re.search(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.S).group(1)
    if user.startswith("check "):
        return "<JUDGE_SCORE>1</JUDGE_SCORE>"
    if s % 2:
        return None
    problem = tasks.get("integration").parse_problem(user)
    f, x = to_sympy(parse(problem["integrand"])), symbol_x()
    if "lower" in problem:
        bounds = [to_sympy(parse(problem[k])) for k in ("lower", "upper")]
        return f"<answer>{sp.sstr(sp.integrate(f, (x, *bounds)))}</answer>"
    return f"<answer>{sp.sstr(sp.integrate(f, x))}</answer>"


@pytest.mark.parametrize("reward", ["self", "verifier"])
def test_integration_runs_the_loop(tiny_ckpt, tmp_path, monkeypatch, reward):
    """train.py --task integration on a model folder made for it: indefinite and definite problems,
    rewards from the judge or the verifier, held-out accuracy, a checkpoint."""
    model = tmp_path / "tiny-integration"
    shutil.copytree(tiny_ckpt, model)
    difficulty = dict(atoms="simple", max_terms=2, max_len=40, definite=0.5)
    (model / "nano_rlsr.json").write_text(json.dumps({"task": "integration", "prompt_style": "compact",
                                                      "difficulty": difficulty}))
    tok = Tokenizer.from_pretrained(str(model))
    calls = []
    monkeypatch.setattr(sample, "generate", scripted_generate(tok, integration_script, real=sample.generate,
                                                              calls=calls))
    out = tmp_path / "run"
    lines = run("--task", "integration", "--model", model, "--out", out, "--reward", reward, *TINY)
    assert [line["step"] for line in lines] == [0, 1, 2]
    assert lines[0]["heldout_acc"] == lines[2]["heldout_acc"] == 1.0  # greedy held-out rows are sample 0: right
    for line in lines[1:]:
        assert line["rollout_acc"] == line["reward_mean"] == line["format_rate"] == 0.5
        if reward == "self":  # the answered half is judged (all right: TP), the answerless half is not
            assert line["judge_tp"] == line["judge_judged"] == 2 and line["judge_fp"] == 0
    solver = [t for texts, _ in calls for t in texts if "user\nintegrate(" in t]
    assert any(", (x, " in t for t in solver) and any(", x)" in t for t in solver)  # definite and indefinite
    samples = read_lines(out / "samples.jsonl")
    integration = tasks.get("integration")
    for s in samples:
        assert s["correct"] == (s["answer"] is not None and integration.verify(s["problem"], s["answer"]))
    assert checkpoint.read_meta(str(out / "ckpt"))["task"] == "integration"


def test_report_to_tensorboard_and_wandb_get_the_metrics_lines(tiny_ckpt, scripted, tmp_path, monkeypatch):
    """--report-to: each metrics.jsonl line reaches the trackers at its step, read back from their files."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    from test_trackers import tensorboard_scalars, wandb_records, item_key
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "r"
    lines = run("--model", tiny_ckpt, "--out", out, *TINY, "--report-to", "tensorboard", "wandb")
    assert json.loads((out / "config.json").read_text())["report_to"] == ["tensorboard", "wandb"]
    found = tensorboard_scalars(out / "tb")
    assert found["reward_mean"] == [(line["step"], line["reward_mean"]) for line in lines if "reward_mean" in line]
    assert found["heldout_acc"] == [(line["step"], line["heldout_acc"]) for line in lines if "heldout_acc" in line]
    history = [{item_key(i): json.loads(i.value_json) for i in r.history.item}
               for r in wandb_records(out) if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [line["step"] for line in lines]
    assert [h.get("kl") for h in history] == [line.get("kl") for line in lines]


def test_report_to_is_checked_before_the_models_load(tiny_ckpt, tmp_path, capsys):
    assert "--report-to mlflow: unknown tracker" in fails(capsys, "--model", tiny_ckpt, "--out", tmp_path / "x",
                                                          "--report-to", "mlflow")
    assert not (tmp_path / "x").exists()


def test_the_closing_lines_say_how_to_draw_the_run(tiny_ckpt, scripted, tmp_path, capsys):
    out = tmp_path / "r"
    run("--model", tiny_ckpt, "--out", out, *TINY)
    assert f"python plot.py {out}" in capsys.readouterr().out


def test_cuda_without_a_micro_batch_size_takes_the_memory_plans(tiny_ckpt, monkeypatch, capsys):
    """On CUDA (faked: only its free-memory call is used) --micro-batch-size 0 becomes the largest micro-batch
    the plan fits; a given size, or the CPU, keeps the config as it is."""
    import memory
    policy, tok, _ = checkpoint.load_checkpoint(tiny_ckpt, torch.device("cpu"), torch.float32)
    models = train.Models(policy, policy, None, None, tok, {})
    cfg = make_config(TrainConfig, model=tiny_ckpt, out="unused", prompts_per_step=8, group_size=8)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    for budget in (2**40, 500 * 2**20):  # room for the whole minibatch; then only for part of it
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, b=budget: (b, 2 * b))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
        sized = train.sized_to_memory(cfg, models, countdown, cuda, torch.bfloat16, 1)
        probe = countdown.make_problems(64, seed=cfg.seed, split="train", **cfg.difficulty)
        prompt_len = max(len(tok.encode_chat(countdown.prompt(p, style=cfg.prompt_style))) for p in probe)
        expected = memory.fit_micro_batch(policy.config, 64, prompt_len, cfg.max_new_tokens, budget,
                                          rollouts=64, dtype=torch.bfloat16, ref="shard")
        assert sized.micro_batch_size == expected[0] and (sized.micro_batch_size == 64) == (budget == 2**40)
        assert f"micro-batch: {expected[0]} rollouts per forward/backward" in capsys.readouterr().out
    monkeypatch.setattr(train, "all_ranks", lambda choice: [choice, (5, 12345)])  # another rank has less room
    assert train.sized_to_memory(cfg, models, countdown, cuda, torch.bfloat16, 2).micro_batch_size == 5
    assert "micro-batch: 5 rollouts per forward/backward (the memory plan's peak 0.0 GiB" in capsys.readouterr().out
    monkeypatch.setattr(train, "all_ranks", lambda choice: [choice, (0, "the run does not fit the GPU: on rank 1")])
    with pytest.raises(memory.MemoryPlanError, match="on rank 1"):  # every rank stops, not only the one short
        train.sized_to_memory(cfg, models, countdown, cuda, torch.bfloat16, 2)
    monkeypatch.setattr(train, "all_ranks", lambda choice: [choice])
    assert train.sized_to_memory(cfg, models, countdown, cpu, torch.float32, 1) is cfg
    given = make_config(TrainConfig, model=tiny_ckpt, out="unused", micro_batch_size=4)
    assert train.sized_to_memory(given, models, countdown, cuda, torch.bfloat16, 1) is given
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**16, 2**16))
    with pytest.raises(memory.MemoryPlanError, match="does not fit the GPU"):
        train.sized_to_memory(cfg, models, countdown, cuda, torch.bfloat16, 1)
