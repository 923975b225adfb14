"""propose.py and --problems self: a proposal enters training only when the policy's own
judge accepts its witness (the verifier is never asked), the learnability band, repeats dropped,
buffer reuse, the proposer's PPO rows, and the buffer surviving a resume."""

import json
import re

import pytest
import torch

import ppo
import propose
import sample
import tasks
import train
from config import TrainConfig, make_config
from conftest import scripted_generate
from tokenizer import Tokenizer

countdown = tasks.get("countdown")
GOOD = "nums 3 5 7 target 22"       # witness accepted by the scripted judge
BAD = "nums 2 3 4 target 24"        # witness rejected by the scripted judge
EXTRA = "nums 4 6 9 target 15"      # a third problem, accepted
FLAGS = ["--problems", "self", "--steps", "1", "--prompts-per-step", "2", "--group-size", "4",
         "--max-new-tokens", "12", "--judge-max-new-tokens", "8", "--propose-max-new-tokens", "8", "--propose-n", "4",
         "--eval-interval", "0", "--lr", "1e-3", "--no-progress", "--judge-temperature", "0"]

pytestmark = pytest.mark.usefixtures("one_thread")


def numbers_of(text):
    m = re.search(r"nums ([\d ]+) target (\d+)", text)
    return [int(x) for x in m.group(1).split()], int(m.group(2))


def make_script(solved_rollouts):
    """Proposals GOOD, BAD, EXTRA and a repeat of GOOD; the judge passes a witness or answer unless
    it is for BAD; rollout s of a problem answers right when s < solved_rollouts[problem]."""
    def script(prompt, s):
        if prompt.startswith("<|im_start|>user\npropose") or "propose\n" in prompt:
            return [f"<answer>{GOOD} by 3*5+7</answer>", f"<answer>{BAD} by 2*3*4</answer>",
                    f"<answer>{EXTRA} by 4+6+9-4</answer>", f"<answer>{GOOD} by 7+15</answer>"][s % 4]
        if prompt.lstrip().startswith("<|im_start|>user\ncheck") or "check nums" in prompt:
            return f"<JUDGE_SCORE>{int(BAD not in prompt)}</JUDGE_SCORE>"
        numbers, target = numbers_of(prompt)
        key = f"nums {' '.join(map(str, numbers))} target {target}"
        if s < solved_rollouts.get(key, 0):
            return f"<answer>{countdown.solve(numbers, target)}</answer>"
        return "no idea"
    return script


@pytest.fixture()
def compact_ckpt(tiny_ckpt, tmp_path):
    import shutil
    folder = tmp_path / "model"
    shutil.copytree(tiny_ckpt, folder)
    (folder / "nano_rlsr.json").write_text(json.dumps({"task": "countdown", "prompt_style": "compact"}))
    return str(folder)


def test_only_judge_admitted_proposals_reach_ppo_and_the_verifier_is_never_asked(compact_ckpt, tmp_path,
                                                                                 monkeypatch):
    tok = Tokenizer.from_pretrained(compact_ckpt)
    monkeypatch.setattr(sample, "generate", scripted_generate(tok, make_script({GOOD: 2, EXTRA: 2, BAD: 2})))
    real_admit, admitted_calls = propose.admit, []

    def admit_without_a_verifier(*a, **kw):  # admission runs while the verifier raises
        with monkeypatch.context() as m:
            m.setattr(countdown, "verify", lambda *_: (_ for _ in ()).throw(AssertionError("verifier asked")))
            m.setattr(countdown, "verify_many", lambda *_: (_ for _ in ()).throw(AssertionError("verifier")),
                      raising=False)
            m.setattr(countdown, "solve", lambda *_ , **__: (_ for _ in ()).throw(AssertionError("solver asked")))
            out = real_admit(*a, **kw)
        admitted_calls.append([countdown.problem_text(p["problem"]) for p in out])
        return out
    monkeypatch.setattr(propose, "admit", admit_without_a_verifier)
    trained = []
    real_batch = train.ppo_batch
    monkeypatch.setattr(train, "ppo_batch", lambda rows, *a: trained.append(rows) or real_batch(rows, *a))
    out = tmp_path / "run"
    train.main(["--model", compact_ckpt, "--out", str(out), *FLAGS])
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert admitted_calls == [[GOOD, EXTRA]]  # BAD's witness was rejected by the judge; the repeat dropped
    problems = {countdown.problem_text(r["problem"]) for r in trained[0]}
    assert problems == {GOOD, EXTRA} and BAD not in problems
    assert line["proposed_rejected"] == 1 and line["proposed_repeat"] == 1 and line["admitted"] == 2
    assert line["witness_correct"] == 0.5 and line["admitted_solvable"] == 1.0  # measured after admission


@pytest.mark.parametrize("solved, band", [({GOOD: 2, EXTRA: 4}, (0.25, 0.75)),  # 4/4 passes: too easy
                                          ({GOOD: 1, EXTRA: 3}, (0.25, 0.75)),  # both inside
                                          ({GOOD: 1, EXTRA: 2}, (0.5, 0.75))])  # mixed, yet 1/4 is below 0.5
def test_the_band_keeps_learnable_problems(compact_ckpt, tmp_path, monkeypatch, solved, band):
    """A problem is trained on when its self-reward pass rate is inside the band (not merely mixed);
    a short step is topped up (by the task while the buffer is empty)."""
    tok = Tokenizer.from_pretrained(compact_ckpt)
    monkeypatch.setattr(sample, "generate", scripted_generate(tok, make_script(solved)))
    trained = []
    real_batch = train.ppo_batch
    monkeypatch.setattr(train, "ppo_batch", lambda rows, *a: trained.append(rows) or real_batch(rows, *a))
    train.main(["--model", compact_ckpt, "--out", str(tmp_path / "r"), *FLAGS, "--band-low", str(band[0]),
                "--band-high", str(band[1])])
    line = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    in_band = {k for k, n in solved.items() if band[0] <= n / 4 <= band[1]}
    got = {countdown.problem_text(r["problem"]) for r in trained[0] if r["what"] == "self"}
    assert got == in_band and line["problems_self"] == len(in_band)
    assert line["self_share"] == len(in_band) / 2 and len(trained[0]) == 2 * 4  # topped up to 2 problems


def test_buffer_dedup_reuse_and_examples():
    buf = propose.ProblemBuffer(size=3)
    p = [{"numbers": [i, 2, 3], "target": 6 + i} for i in range(5)]
    for i, q in enumerate(p):
        buf.add(q, pass_rate=0.5 if i % 2 == 0 else 1.0)
    assert len(buf.items) == 3 and buf.keys() == {propose.canonical(q) for q in p[2:]}  # the oldest fall out
    buf.add({"numbers": [3, 2, 4], "target": 10}, 0.25)  # the same problem as p[4] (numbers reordered)
    assert len(buf.items) == 3 and buf.items[-1]["pass_rate"] == 0.25
    assert buf.learnable((0.25, 0.75)) == [p[2], {"numbers": [3, 2, 4], "target": 10}]
    import random
    assert propose.reuse(buf, (0.25, 0.75), 5, random.Random(0)) and all(
        q in buf.learnable((0.25, 0.75)) for q in propose.reuse(buf, (0.25, 0.75), 5, random.Random(0)))
    assert propose.ProblemBuffer(buf.state()).state() == buf.state()  # what a checkpoint saves and restores


def test_reused_problems_renew_every_ranks_buffer_alike(monkeypatch):
    """Under torchrun each rank reuses its own buffer problems; renew() adds every rank's pass rates, in
    rank order, so the buffers (and what a checkpoint saves of rank 0's) stay the same on all ranks."""
    cfg = make_config(TrainConfig, out="unused", problems="self")
    mine, theirs = {"numbers": [1, 2, 3], "target": 6}, {"numbers": [2, 3, 4], "target": 24}
    group = lambda problem, rewards: [{"problem": problem, "reward": r} for r in rewards]  # noqa: E731
    rank1 = [(theirs, 0.5)]  # what rank 1 renews this step
    monkeypatch.setattr(propose, "all_items", lambda items: items + rank1)  # as rank 0 of 2 ranks
    proposer = propose.Proposer(cfg, tasks.get("countdown"), propose.ProblemBuffer())
    assert proposer.renew([group(mine, [1.0, 0.0, 0.0, 0.0])]) == [group(mine, [1.0, 0.0, 0.0, 0.0])]
    assert [(q["problem"], q["pass_rate"]) for q in proposer.buffer.items] == [(mine, 0.25), (theirs, 0.5)]
    assert proposer.n_reused == 1  # this rank's count: the step's metrics sum it over the ranks
    proposer.renew([])  # a rank with nothing to reuse still joins the gather
    assert len(proposer.buffer.items) == 2 and proposer.buffer.items[-1]["problem"] == theirs


def test_proposer_rewards_and_rows(compact_ckpt, tmp_path, monkeypatch):
    """--train-proposer: every proposal row joins the PPO batch with its learnability reward (1 - pass
    rate in the band, 0 outside it, -1 rejected or repeated), its loss only on its own tokens."""
    tok = Tokenizer.from_pretrained(compact_ckpt)
    monkeypatch.setattr(sample, "generate", scripted_generate(tok, make_script({GOOD: 1, EXTRA: 4})))
    batches = []
    real_update = ppo.update
    monkeypatch.setattr(ppo, "update", lambda policy, opt, batch, cfg, **kw: batches.append(batch)
                        or real_update(policy, opt, batch, cfg, **kw))
    train.main(["--model", compact_ckpt, "--out", str(tmp_path / "p"), *FLAGS, "--train-proposer"])
    batch = batches[0]  # as the update gets it: advantages [B, T]
    n = batch["input_ids"].shape[0]
    # the last 4 rows, the proposals: GOOD 1/4 in band; BAD rejected; EXTRA 4/4 out of it; a repeat
    assert batch["rewards"][n - 4:].tolist() == [0.75, -1.0, 0.0, -1.0] and batch["proposals"] == 4
    mask = batch["response_mask"][n - 4:]
    adv = batch["advantages"][n - 4:].sum(1) / mask.sum(1)  # each proposal's advantage, on every one of its tokens
    torch.testing.assert_close(batch["advantages"][n - 4:], adv[:, None] * mask)
    assert abs(float(adv.mean())) < 1e-5 and float(adv.std()) == pytest.approx(1.0, abs=1e-3)
    prompt = tok.encode_chat(countdown.propose_prompt([], style="compact"))[:3]
    for b in range(n - 4, n):  # the mask covers the proposal's tokens only, never its prompt
        first = int(batch["response_mask"][b].nonzero()[0])
        assert first > len(prompt) and torch.equal(batch["input_ids"][b, :3], torch.tensor(prompt))


def test_resume_keeps_the_buffer(compact_ckpt, tmp_path, monkeypatch):
    tok = Tokenizer.from_pretrained(compact_ckpt)
    monkeypatch.setattr(sample, "generate", scripted_generate(tok, make_script({GOOD: 2, EXTRA: 2})))
    flags = [f for f in FLAGS if f not in ("--steps", "1")] + ["--save-interval", "1"]
    straight = tmp_path / "a"
    train.main(["--model", compact_ckpt, "--out", str(straight), *flags, "--steps", "3"])
    part = tmp_path / "b"
    train.main(["--model", compact_ckpt, "--out", str(part), *flags, "--steps", "1"])
    state = torch.load(part / "ckpt" / "trainer_state.pt", weights_only=False)
    assert {propose.canonical(x["problem"]) for x in state["problem_buffer"]} == {
        propose.canonical(countdown.parse_problem(GOOD)), propose.canonical(countdown.parse_problem(EXTRA))}
    train.main(["--resume", str(part), "--steps", "3"])

    def untimed(path):
        return [{k: v for k, v in json.loads(x).items() if not k.startswith("time_")}
                for x in (path / "metrics.jsonl").read_text().splitlines()]
    assert untimed(part) == untimed(straight)
    assert untimed(part)[1]["problems_reused"] == 2  # step 2: all proposals are repeats, the buffer fills it
