"""Every entry point at Qwen2.5-0.5B's real shapes: width 896, 14 heads over 2 KV heads, tied embeddings
and the full 151,936-row vocabulary with Qwen's real tokenizer and `--prompt-style full` (one random
decoder layer: depth is not what is rehearsed). sft.py, then train.py with each reward (verifier, frozen
judge, live judge), --resume, --problems self and --self-correct, eval.py and sample.py; the folders
they write load in transformers with equal logits, also through a hub id in an offline cache.

A random model writes no answer tags, so a scripted sampler writes a correct answer (or proposal) in
every other row and leaves the rest, and every judge call on an answer, to the real model: the judge
really runs at full vocabulary on real prompts. Budgets are tiny; each run is in-process except the
hub-id one (huggingface_hub reads HF_HOME when imported).
"""

import json
import os
import random
import re
import subprocess
import sys

import pytest
import torch

import eval as eval_cli
import sample
import sft
import tasks
import train
from checkpoint import load_checkpoint
from conftest import scripted_generate
from model import Qwen
from qwen_real import QWEN25_0_5B_CONFIG, qwen25_random_dir, qwen25_tokenizer_dir  # noqa: F401  (fixtures)
from test_hub import lay_out_cache
from tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
countdown = tasks.get("countdown")
HUB_ID = "random-org/Qwen2.5-0.5B-Instruct"
PROPOSAL, WITNESS = "nums 3 5 7 target 22", "3*5+7"
SOLVER = re.compile(r"numbers \[([\d, ]+)\], create an equation that equals (\d+)")
BUDGET = ["--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "8", "--judge-max-new-tokens", "8",
          "--propose-n", "2", "--propose-max-new-tokens", "8", "--lr", "1e-5", "--prompt-style", "full",
          "--no-progress"]


def script(prompt, sample_index):
    """Rows 0 mod 2 of solver and propose prompts: a correct answer (with "[VERIFY] correct" when asked to
    verify) or a new problem with its witness; everything else, the judge included, is the real model's.
    The one scripted verdict accepts that witness, so a self-proposed problem is admitted."""
    if "Proposed answer: " in prompt:
        answer = prompt.split("Proposed answer: ", 1)[1].split("\n", 1)[0]
        admit = answer == WITNESS and "Numbers: [3, 5, 7]. Target: 22." in prompt
        return "<JUDGE_SCORE>1</JUDGE_SCORE>" if admit else None
    if sample_index % 2:
        return None
    if "Write one new Countdown problem" in prompt:
        return f"<answer>{PROPOSAL} by {WITNESS}</answer>"
    m = SOLVER.search(prompt)
    if m is None:
        return None
    answer = f"<answer>{countdown.solve([int(x) for x in m.group(1).split(',')], int(m.group(2)))}</answer>"
    return answer + " [VERIFY] correct" if "[VERIFY]" in prompt else answer


@pytest.fixture(scope="module")
def sft_dir(qwen25_random_dir, tmp_path_factory):
    """sft.py on the hub-layout folder (bf16, Qwen's tokenizer files): two steps on formatted answers."""
    out = tmp_path_factory.mktemp("real_shapes") / "sft"
    data = out.parent / "sft.jsonl"
    problems = countdown.make_problems(2, seed=5)
    with open(data, "w") as f:
        for p in problems:
            answer = countdown.solution_text(p, random.Random(0), style="full")
            f.write(json.dumps({"messages": countdown.prompt(p, style="full")
                                + [{"role": "assistant", "content": answer}]}) + "\n")
    sft.main(["--model", qwen25_random_dir, "--data", str(data), "--out", str(out), "--batch-size", "1",
              "--lr", "1e-3", "--warmup", "1", "--log-interval", "1", "--prompt-style", "full", "--no-progress"])
    return str(out)


@pytest.fixture(scope="module")
def qwen_tok(qwen25_tokenizer_dir):
    return Tokenizer.from_pretrained(qwen25_tokenizer_dir)


@pytest.fixture()
def scripted(qwen_tok, monkeypatch):
    monkeypatch.setattr(sample, "generate", scripted_generate(qwen_tok, script, real=sample.generate))


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def run_train(*args):
    train.main([str(a) for a in args])
    out = args[list(args).index("--out" if "--out" in args else "--resume") + 1]
    return read_lines(os.path.join(out, "metrics.jsonl")), read_lines(os.path.join(out, "samples.jsonl"))


def moved(before_dir, after_dir):
    before, after = Qwen.from_pretrained(before_dir).state_dict(), Qwen.from_pretrained(after_dir).state_dict()
    return {k for k in before if not torch.equal(before[k].float(), after[k])}


def test_sft_writes_a_qwen_folder_that_keeps_the_tokenizer(qwen25_random_dir, sft_dir):
    losses = [line["loss"] for line in read_lines(os.path.join(sft_dir, "sft_metrics.jsonl"))]
    assert len(losses) == 2 and losses[1] < losses[0]
    model, tok, meta = load_checkpoint(sft_dir)
    config = model.config
    for key in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                "tie_word_embeddings", "rope_theta", "rms_norm_eps"):
        assert getattr(config, key) == QWEN25_0_5B_CONFIG[key], key
    assert model.lm_head is None and meta.get("prompt_style", "full") == "full"
    original = Tokenizer.from_pretrained(qwen25_random_dir)
    assert (tok.vocab_size, tok.eos_id, tok.pad_id, tok.stop_ids, tok.default_system) == \
        (original.vocab_size, original.eos_id, original.pad_id, original.stop_ids, original.default_system)
    assert "model.embed_tokens.weight" in moved(qwen25_random_dir, sft_dir)


def test_verifier_reward_with_self_correction_and_heldout_eval(sft_dir, scripted, tmp_path):
    out = tmp_path / "run"
    lines, samples = run_train("--model", sft_dir, "--out", out, "--reward", "verifier", "--self-correct",
                               "--steps", "2", "--eval-interval", "2", "--eval-n", "2", "--kl-coef", "0", *BUDGET)
    assert [line["step"] for line in lines] == [0, 1, 2]
    for line in lines[1:]:  # the scripted half answers correctly; the random model never writes an answer
        assert line["rollout_acc"] == 0.5 and line["reward_mean"] == 0.5 and line["groups_mixed"] == 1.0
        assert "judge_tp" not in line  # the verifier's reward: no judge
        assert line["sc_turn1_acc"] == line["sc_final_acc"] == 0.5 and line["sc_verify_acc_correct"] == 1.0
    assert lines[0]["heldout_acc"] == lines[2]["heldout_acc"] == 1.0  # greedy rows are row 0: scripted
    assert all(s["correct"] == countdown.verify(s["problem"], s["answer"]) for s in samples if s["answer"])
    assert "model.embed_tokens.weight" in moved(sft_dir, str(out / "ckpt"))


def test_frozen_judge_admits_self_proposed_problems(sft_dir, scripted, tmp_path):
    lines, samples = run_train("--model", sft_dir, "--out", tmp_path / "run", "--judge", "frozen", "--problems",
                               "self", "--steps", "1", "--eval-interval", "0", *BUDGET)  # KL to the same frozen copy
    (line,) = lines
    assert line["proposed"] == 2 and line["proposed_valid"] == 1 and line["admitted"] == 1
    assert line["judge_judged"] >= 1  # the frozen model judged the answered rows itself
    (logged,) = samples  # row 0, a scripted answer: its verdict is the frozen model's own text
    assert logged["answer"] is not None and len(logged["judge"]) == 1 and "JUDGE_SCORE" not in logged["judge"][0]


def test_live_judge_then_resume_and_transformers_loads_the_checkpoint(sft_dir, scripted, tmp_path):
    out = tmp_path / "run"
    first, _ = run_train("--model", sft_dir, "--out", out, "--steps", "1", "--eval-interval", "0", "--kl-coef", "0",
                         *BUDGET)
    assert [line["step"] for line in first] == [1] and first[0]["judge_judged"] == 2
    lines, samples = run_train("--resume", out, "--steps", "2", "--no-progress")
    assert [line["step"] for line in lines] == [1, 2] and lines[0] == first[0]
    assert lines[1]["judge_judged"] == 2 and lines[1]["format_rate"] == 0.5
    assert torch.load(out / "ckpt" / "trainer_state.pt", weights_only=False)["step"] == 2
    assert all(s["answer"] is not None and len(s["judge"]) == 1 for s in samples)  # the live model's verdicts

    ckpt = str(out / "ckpt")
    tok = Tokenizer.from_pretrained(ckpt)
    hf_tok = transformers.AutoTokenizer.from_pretrained(ckpt)
    messages = countdown.prompt(countdown.make_problems(1, seed=9)[0], style="full")
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == tok.chat(messages)
    ids = torch.tensor([tok.encode_chat(messages)])
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ours = Qwen.from_pretrained(ckpt)
    with torch.no_grad():
        want, got = hf(ids).logits, ours(ids)
    assert got.shape[-1] == QWEN25_0_5B_CONFIG["vocab_size"]
    assert (got - want).abs().max().item() <= 1e-4


def test_eval_judges_its_own_samples(sft_dir, scripted, tmp_path):
    out = tmp_path / "eval.json"
    eval_cli.main(["--model", sft_dir, "--n", "2", "--samples", "2", "--max-new-tokens", "8",
                   "--judge-max-new-tokens", "8", "--prompt-style", "full", "--out", str(out)])
    (result,) = json.loads(out.read_text())["results"]
    assert result["problems"] == 2 and result["prompt_style"] == "full"
    assert result["mean@2"] == 0.5 and result["pass@2"] == 1.0 and result["format_rate"] == 0.5
    assert result["judge_judged"] == 2  # the real model judged both answered samples


def test_sample_cli_equals_transformers_greedy(sft_dir, capsys):
    prompt = "Using the numbers [3, 5, 7], create an equation that equals 22."
    sample.main(["--model", sft_dir, "--prompt", prompt, "--max-new-tokens", "8", "--device", "cpu"])
    printed = capsys.readouterr().out
    tok = transformers.AutoTokenizer.from_pretrained(sft_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=8, do_sample=False, repetition_penalty=1.0,
                          eos_token_id=list(Tokenizer.from_pretrained(sft_dir).stop_ids), pad_token_id=tok.pad_token_id)
    new = [t for t in out[0, ids.shape[1]:].tolist() if t not in (tok.eos_token_id, tok.pad_token_id)]
    assert printed == tok.decode(new, skip_special_tokens=True) + "\n"


HUB_CHECK = """
import json, runpy, sys
import torch, transformers
sys.argv = ["eval.py", "--model", ID, "--n", "1", "--max-new-tokens", "4", "--judge-samples", "0",
            "--prompt-style", "full", "--out", OUT]
runpy.run_path("eval.py", run_name="__main__")
import hub
from checkpoint import load_checkpoint
model, tok, _ = load_checkpoint(hub.resolve_model(ID))
hf_tok = transformers.AutoTokenizer.from_pretrained(ID)
hf = transformers.AutoModelForCausalLM.from_pretrained(ID, dtype=torch.float32).eval()
messages = [{"role": "user", "content": "nums 3 5 7 target 22"}]
ids = tok.encode_chat(messages)
with torch.no_grad():
    diff = (model(torch.tensor([ids])) - hf(torch.tensor([ids])).logits).abs().max().item()
chat_ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
print(json.dumps({"diff": diff, "same_ids": list(chat_ids) == ids, "vocab": model.config.vocab_size}))
"""


def test_a_hub_id_in_an_offline_cache(qwen25_random_dir, tmp_path):
    """The README's `--model Qwen/...` path: the hub layout (bf16 weights, Qwen's tokenizer files)
    resolved from an offline cache by eval.py, by the loader and by transformers alike."""
    home = str(tmp_path / "hf")
    lay_out_cache(home, HUB_ID, qwen25_random_dir)
    env = {**os.environ, "HF_HOME": home, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "eval.json"
    code = f"ID, OUT = {HUB_ID!r}, {str(out)!r}\n" + HUB_CHECK
    r = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r})\n" + code],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    check = json.loads(r.stdout.strip().splitlines()[-1])
    assert check["diff"] <= 1e-4 and check["same_ids"] and check["vocab"] == QWEN25_0_5B_CONFIG["vocab_size"]
    (result,) = json.loads(out.read_text())["results"]
    assert result["problems"] == 1 and result["prompt_style"] == "full"
