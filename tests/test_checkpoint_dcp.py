"""checkpoint.py's run checkpoints in one process: what a checkpoint holds (the weights once, in the
model folder; AdamW's two moments through torch.distributed.checkpoint; a few bytes of trainer state),
an exact restore (value head included), checkpoints of the older format, a kill while the optimizer
shards are written. Resumes across process counts run under torchrun in tests/test_distributed.py."""

import os
from types import SimpleNamespace

import pytest
import torch

import checkpoint
from checkpoint import latest_checkpoint, load_trainer_state, restore, save_checkpoint, saved_optimizer_state
from model import Qwen
from ppo import ValueHead

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def training_state(path, value_head=False):
    """(policy, tokenizer, value head or None, fused AdamW over both) as train.py builds them."""
    policy, tok, _ = checkpoint.load_checkpoint(path)
    head = ValueHead(policy.config.hidden_size) if value_head else None
    params = list(policy.parameters()) + (list(head.parameters()) if head else [])
    return policy, tok, head, torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01, fused=True)


def take_step(policy, head, optimizer, seed):
    """One AdamW step on a loss of the policy's logits (and of the value head's values)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, policy.config.vocab_size, (2, 12), generator=g)
    loss = policy(ids).float().logsumexp(-1).mean()
    if head is not None:
        loss = loss + (head(torch.randn(2, 12, policy.config.hidden_size, generator=g)) - 1).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_config(out):
    return SimpleNamespace(out=str(out), prompt_style="full")


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_a_checkpoint_holds_the_weights_once_and_adams_two_moments(tiny_ckpt, tmp_path):
    policy, tok, _, optimizer = training_state(tiny_ckpt)
    take_step(policy, None, optimizer, 0)
    buffer = [{"problem": {"nums": [3, 5, 7], "target": 22}, "pass_rate": 0.5}]
    save_checkpoint(run_config(tmp_path), policy, tok, {}, optimizer, None, 1, buffer)
    ckpt = tmp_path / "ckpt"
    checkpoint.save_model_folder(tmp_path / "model_only", policy, tok, {}, "full")
    # beside an ordinary model folder (the weights): the optimizer's folder and the trainer state, nothing else
    assert set(os.listdir(ckpt)) - set(os.listdir(tmp_path / "model_only")) == {"optimizer", "trainer_state.pt"}
    assert not (tmp_path / "ckpt.tmp").exists() and not (tmp_path / "ckpt.old").exists()

    saved = saved_optimizer_state(str(ckpt))
    params = dict(policy.named_parameters())
    assert set(saved["state"]) == set(params)  # keyed by parameter name, so any sharding reads it
    for name, p in params.items():
        s = saved["state"][name]
        assert set(s) == {"exp_avg", "exp_avg_sq", "step"} and float(s["step"]) == 1
        assert all(torch.equal(s[k], optimizer.state[p][k]) and s[k].dtype == torch.float32
                   for k in ("exp_avg", "exp_avg_sq"))

    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert state == {"step": 1, "world_size": 1, "value_head": None, "problem_buffer": buffer}

    # what it weighs: 4 bytes per parameter of fp32 weights, 8 of AdamW's moments, and little else
    # (torch.distributed.checkpoint's framing and index: about 6 kB per parameter tensor)
    n = sum(p.numel() for p in params.values())
    assert 4 * n <= os.path.getsize(ckpt / "model.safetensors") < 4 * n + 4096
    assert 8 * n <= folder_bytes(ckpt / "optimizer") < 8 * n + 8192 * len(params)
    assert os.path.getsize(ckpt / "trainer_state.pt") < 4096


def test_restore_continues_exactly_with_a_value_head(tiny_ckpt, tmp_path):
    policy, tok, head, optimizer = training_state(tiny_ckpt, value_head=True)
    take_step(policy, head, optimizer, 0)
    save_checkpoint(run_config(tmp_path), policy, tok, {}, optimizer, head, 1)

    ckpt = latest_checkpoint(str(tmp_path))
    resumed, _, resumed_head, resumed_optimizer = training_state(ckpt, value_head=True)
    state = load_trainer_state(ckpt, str(tmp_path), "cpu")
    assert restore(ckpt, state, resumed, resumed_optimizer, resumed_head, "cpu") == 1
    for seed in (1, 2):
        take_step(policy, head, optimizer, seed)
        take_step(resumed, resumed_head, resumed_optimizer, seed)
    for a, b in ((policy, resumed), (head, resumed_head)):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert float(resumed_optimizer.state[resumed_head.proj.bias]["step"]) == 3


def test_older_checkpoints_resume_on_the_process_count_that_saved_them(tiny_ckpt, tmp_path, monkeypatch):
    policy, tok, _, optimizer = training_state(tiny_ckpt)
    take_step(policy, None, optimizer, 0)
    ckpt = tmp_path / "ckpt"
    checkpoint.save_model_folder(ckpt, policy, tok, {}, "full")
    older = {"step": 3, "optimizer": optimizer.state_dict(), "world_size": 1, "config": {}, "value_head": None,
             "rng": {"torch": torch.get_rng_state(), "python": None, "cuda": None}, "problem_buffer": []}
    torch.save(older, ckpt / "trainer_state.pt")

    # one process: the optimizer state inside trainer_state.pt loads as before
    resumed, _, _, resumed_optimizer = training_state(str(ckpt))
    state = load_trainer_state(str(ckpt), str(tmp_path), "cpu")
    assert restore(str(ckpt), state, resumed, resumed_optimizer, None, "cpu") == 3
    take_step(policy, None, optimizer, 1)
    take_step(resumed, None, resumed_optimizer, 1)
    assert all(torch.equal(p, q) for p, q in zip(policy.parameters(), resumed.parameters()))

    # another number of processes: one line saying how to resume it
    monkeypatch.setattr(checkpoint, "world_size", lambda: 2)
    with pytest.raises(checkpoint.UsageError) as e:
        load_trainer_state(str(ckpt), str(tmp_path), "cpu")
    assert "older checkpoint format, saved by 1 process(es), this run has 2" in str(e.value)
    assert "resume with python train.py" in str(e.value) and len(str(e.value).splitlines()) == 1

    # the older per-rank shards of a 2-process run, in one process
    monkeypatch.setattr(checkpoint, "world_size", lambda: 1)
    torch.save({**older, "optimizer": None, "world_size": 2}, ckpt / "trainer_state.pt")
    for rank in (0, 1):
        (ckpt / f"optimizer.rank{rank}.pt").write_bytes(b"")
    with pytest.raises(checkpoint.UsageError, match="resume with torchrun --nproc_per_node 2 train.py"):
        load_trainer_state(str(ckpt), str(tmp_path), "cpu")


def test_a_kill_while_the_optimizer_shards_are_written_leaves_the_last_checkpoint(tiny_ckpt, tmp_path, monkeypatch):
    policy, tok, _, optimizer = training_state(tiny_ckpt)
    take_step(policy, None, optimizer, 0)
    save_checkpoint(run_config(tmp_path), policy, tok, {}, optimizer, None, 1)
    take_step(policy, None, optimizer, 1)

    def killed(state_dict, checkpoint_id):  # a first shard half written, then the process dies
        os.makedirs(checkpoint_id)
        with open(os.path.join(checkpoint_id, "__0_0.distcp"), "wb") as f:
            f.write(b"\0" * 100)
        raise SystemError("killed")

    monkeypatch.setattr(checkpoint.dcp, "save", killed)
    with pytest.raises(SystemError):
        save_checkpoint(run_config(tmp_path), policy, tok, {}, optimizer, None, 2)
    monkeypatch.undo()
    assert (tmp_path / "ckpt.tmp").exists()
    ckpt = latest_checkpoint(str(tmp_path))
    assert ckpt == str(tmp_path / "ckpt") and load_trainer_state(ckpt, str(tmp_path), "cpu")["step"] == 1
    resumed, _, _, resumed_optimizer = training_state(ckpt)
    assert restore(ckpt, load_trainer_state(ckpt, str(tmp_path), "cpu"), resumed, resumed_optimizer, None, "cpu") == 1

    save_checkpoint(run_config(tmp_path), policy, tok, {}, optimizer, None, 2)  # the next save clears the leftover
    assert sorted(x for x in os.listdir(tmp_path) if x.startswith("ckpt")) == ["ckpt"]
    assert load_trainer_state(str(tmp_path / "ckpt"), str(tmp_path), "cpu")["step"] == 2
