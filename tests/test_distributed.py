"""train.py under torchrun: 2 CPU processes (gloo, FSDP2) against 1 process with the same global
batch, save + resume under 2 processes, a resume on another number of processes (2 -> 1, 1 -> 2); the
pieces that make the runs agree (per-prompt sampling seeds, activation checkpointing changing nothing).

The runs use the embedded tiny model (it solves and judges some problems, so rewards and gradients
are not all zero, unlike a random model's)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import sample
import train
from config import DEFAULT_MODEL, TrainConfig, config_from_flags
from model import Qwen

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "64",
         "--judge-max-new-tokens", "96", "--eval-interval", "0", "--lr", "1e-4", "--kl-coef", "0.01", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def torchrun(*args, nproc=2):
    """train.py under `torchrun --nproc_per_node nproc --standalone` on the CPU (gloo); -> stderr."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone",
           os.path.join(REPO, "train.py"), *[str(a) for a in args]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as one_thread: the same numerics as the in-process run
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time_")} for line in f]


def weights(out):
    return Qwen.from_pretrained(os.path.join(out, "ckpt")).state_dict()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2 steps in one process and in two (the two with --grad-ckpt layer: FSDP2 + activation
    checkpointing together; it must change nothing)."""
    root = tmp_path_factory.mktemp("dist")
    one, two = str(root / "one"), str(root / "two")
    train.main([*FLAGS, "--out", one])
    torchrun(*FLAGS, "--grad-ckpt", "layer", "--out", two)
    return one, two


def test_two_processes_match_one_with_the_same_global_batch(runs):
    one, two = runs
    a, b = metrics(one), metrics(two)
    assert [m["step"] for m in b] == [1, 2]
    assert a[0]["grad_norm"] > 0 and a[0]["reward_std"] > 0  # a real update, not zero advantages
    # the same rollouts, rewards and judge verdicts; loss and grads to float noise. Parameters: Adam's first
    # steps divide by |grad| + eps, so the few elements whose gradient is at float-noise level (~1e-8) move
    # by visibly different fractions of lr; the update as a whole agrees
    assert_same_run(two, one)
    p1, p2 = weights(one), weights(two)
    assert max(float((p1[k] - p2[k]).abs().max()) for k in p1) < 0.5 * 1e-4  # below half a step of lr


def test_save_and_resume_under_two_processes_or_one(runs, tmp_path, capsys):
    one, two = runs
    out, out_for_one = str(tmp_path / "r"), str(tmp_path / "r1")
    torchrun(*FLAGS, "--grad-ckpt", "layer", "--out", out, "--steps", "1")
    saved = os.listdir(os.path.join(out, "ckpt"))
    assert {"model.safetensors", "config.json", "tokenizer.json", "optimizer", "trainer_state.pt"} <= set(saved)
    # torch.distributed.checkpoint: each rank wrote its own shard of AdamW's state, rank 0 the metadata
    assert sorted(os.listdir(os.path.join(out, "ckpt", "optimizer"))) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    Qwen.from_pretrained(os.path.join(out, "ckpt"))  # an ordinary model folder: full weights, not shards
    shutil.copytree(out, out_for_one)
    torchrun("--resume", out, "--steps", "2")
    assert metrics(out) == metrics(two)
    a, b = weights(out), weights(two)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # one process continues the 2-process run, as the 1-process run would have gone on
    capsys.readouterr()
    train.main(["--resume", out_for_one, "--steps", "2"])
    assert "saved by 2 process(es), on 1: AdamW's state is resharded" in capsys.readouterr().out
    assert_same_run(out_for_one, one)


def test_torchrun_input_errors_are_one_line(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for flags, expected in ((["--prompts-per-step", "3"], "--prompts-per-step 3 must be a multiple of the 2"),
                            (["--advantage", "gae"], "--advantage gae runs in one process"),
                            (["--minibatch-size", "3"], "--minibatch-size 3 must be a multiple")):
        with pytest.raises(SystemExit):
            config_from_flags(TrainConfig, [*flags, "--out", "unused"], prog="train.py")
        assert expected in capsys.readouterr().err.strip().splitlines()[-1]
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(SystemExit):
        config_from_flags(TrainConfig, ["--grad-ckpt", "yes"], prog="train.py")
    assert "--grad-ckpt: invalid choice: 'yes'" in capsys.readouterr().err


def test_torchrun_compile_is_refused_in_one_line(tmp_path):
    """Under torchrun the sampler is the FSDP2-sharded policy, whose hooks a compiled decode step cannot
    trace: 2 gloo processes with --compile stop before any model loads, with one line from rank 0."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           os.path.join(REPO, "train.py"), *FLAGS, "--compile", "--out", str(tmp_path / "c")]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    ours = proc.stderr.split("torch/distributed/elastic")[0].splitlines()[:-1]  # before torchrun's own report
    assert proc.returncode != 0 and ours == ["train.py: error: --compile runs in one process: under torchrun the "
                                             "sampler is the FSDP2-sharded policy; drop --compile (see --help)"]
    assert not (tmp_path / "c" / "config.json").exists()


def test_per_prompt_seeds_make_samples_independent_of_the_batch(tiny_ckpt):
    model = Qwen.from_pretrained(tiny_ckpt)
    a, b = [5, 6, 7], [8, 9]
    both = sample.generate(model, [a, b], n=3, max_new_tokens=6, seed=[11, 22])
    alone = sample.generate(model, [b], n=3, max_new_tokens=6, seed=[22])
    assert all(both.completion(3 + i) == alone.completion(i) for i in range(3))
    assert torch.allclose(both.logprobs[3:, :alone.logprobs.shape[1]], alone.logprobs, atol=1e-5)  # batch-shape noise
    with pytest.raises(ValueError, match="one per prompt"):
        sample.generate(model, [a, b], seed=[1])


def test_grad_ckpt_gives_the_same_loss_and_gradients(tiny_ckpt):
    ids = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(0))
    grads = []
    for ckpt in (False, True):
        model = Qwen.from_pretrained(tiny_ckpt).train()
        model.grad_ckpt = ckpt
        logp = torch.log_softmax(model(ids)[:, :-1], -1).gather(-1, ids[:, 1:, None])
        loss = -logp.mean()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = grads
    assert torch.equal(l0, l1)
    assert all(torch.allclose(g0[n], g1[n], rtol=1e-6, atol=1e-7) for n in g0)


def test_bf16_cpu_placed_frozen_judge_and_self_problems_under_two_processes(tmp_path):
    """The other paths in one short run: FSDP mixed precision (fp32 shards, bf16 compute), the frozen
    judge kept on the CPU (--ref-placement cpu), policy-proposed problems split over the ranks."""
    out = str(tmp_path / "b")
    torchrun("--steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "32",
             "--judge-max-new-tokens", "32", "--propose-n", "4", "--propose-max-new-tokens", "24",
             "--eval-interval", "0", "--dtype", "bf16", "--ref-placement", "cpu", "--judge", "frozen",
             "--problems", "self", "--no-progress", "--out", out)
    (line,) = metrics(out)
    assert line["step"] == 1 and "problems_self" in line
    # every answered rollout of both ranks was judged once, and each verdict was counted against the verifier
    assert line["judge_judged"] == round(line["format_rate"] * 4) > 0  # 2 problems x 2 rollouts
    assert sum(line[f"judge_{k}"] for k in ("tp", "fp", "tn", "fn")) == line["judge_judged"]
    assert all(v.dtype == torch.float32 for v in weights(out).values())  # the master weights, saved fp32
    assert torch.load(os.path.join(out, "ckpt", "trainer_state.pt"), weights_only=False)["world_size"] == 2


def test_devices_carry_an_index_so_placement_checks_hold(monkeypatch):
    """torch.device("cuda") != torch.device("cuda:0"): an unindexed device made resident() move every
    model back to the CPU after each pass. pick_device always names the index."""
    import distributed
    assert distributed.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for name in ("auto", "cuda"):
        assert distributed.pick_device(name) == torch.device("cuda", 0) and distributed.pick_device(name).index == 0
    assert distributed.pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="not a device"):
        distributed.pick_device("tpu:x")


def assert_same_run(out, reference):
    """The run in `out` went as `reference` did: the same rollouts, rewards and judge verdicts, PPO stats
    to float noise, parameters within 1e-4 of the update's L1 size."""
    a, b = metrics(out), metrics(reference)
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        assert x.pop("sampler_logp_err") < 1e-4 and y.pop("sampler_logp_err") < 1e-4
        for k in x:
            assert x[k] == (y[k] if not isinstance(y[k], float) else pytest.approx(y[k], rel=1e-5, abs=1e-7)), k
    init, p1, p2 = Qwen.from_pretrained(DEFAULT_MODEL).state_dict(), weights(reference), weights(out)
    moved = sum(float((p1[k] - init[k]).abs().sum()) for k in init)
    diff = sum(float((p1[k] - p2[k]).abs().sum()) for k in init)
    assert moved > 0 and diff < 1e-4 * moved, (diff, moved)


def test_a_one_process_checkpoint_resumes_under_two_processes(runs, tmp_path):
    one, _ = runs
    out = str(tmp_path / "o")
    train.main([*FLAGS, "--out", out, "--steps", "1"])
    torchrun("--resume", out, "--steps", "2")  # the saved tensors whole, each rank reads its shard of them
    assert_same_run(out, one)
