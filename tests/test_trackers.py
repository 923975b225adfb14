"""trackers.py: metrics lines reach TensorBoard and W&B (offline) at their steps, read back from what
each wrote; a missing package or an unknown tracker is one line to act on."""

import builtins
import glob
import json
import os

import pytest

import trackers

CONFIG = {"task": "countdown", "lr": 1e-4, "steps": 3}
LINES = [{"step": 0, "heldout_acc": 0.25, "heldout_format_rate": 1.0, "time_eval": 0.5},
         {"step": 1, "reward_mean": 0.5, "kl": 0.0, "judge_precision": None, "len_max": 40, "lr": 1e-4},
         {"step": 2, "reward_mean": 0.75, "kl": 0.002, "judge_precision": 0.8, "len_max": 44, "lr": 1e-4,
          "heldout_acc": 0.5}]


def report(kinds, out, lines=LINES, start=0):
    with trackers.open_trackers(kinds, str(out), CONFIG, start=start) as t:
        for line in lines:
            t.log(line)


def tensorboard_scalars(folder) -> dict:
    """{tag: [(step, value), ...]} from the event files in `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, pytest.approx(e.value)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_file_holds_each_scalar_at_its_step(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    report(["tensorboard"], tmp_path)
    found = tensorboard_scalars(tmp_path / "tb")
    assert found["reward_mean"] == [(1, 0.5), (2, 0.75)]
    assert found["heldout_acc"] == [(0, 0.25), (2, 0.5)]
    assert found["judge_precision"] == [(2, 0.8)]  # None (no judged answers yet) is left out
    assert found["len_max"] == [(1, 40), (2, 44)]
    assert "step" not in found


def test_tensorboard_after_a_resume_shows_the_continued_steps_only(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    report("tensorboard", tmp_path, [{"step": s, "reward_mean": 0.1 * s} for s in range(1, 6)])  # killed at 5
    report("tensorboard", tmp_path, [{"step": s, "reward_mean": 1.0 + s} for s in range(3, 5)], start=2)
    assert tensorboard_scalars(tmp_path / "tb")["reward_mean"] == [(1, 0.1), (2, 0.2), (3, 4.0), (4, 5.0)]


def wandb_records(folder):
    """The records of the offline W&B run files under `folder` (the LevelDB-style log of protobuf
    records that `wandb sync` uploads: a 7-byte header, then 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2
    (path,) = glob.glob(os.path.join(str(folder), "wandb", "offline-run-*", "run-*.wandb"))
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too short for a chunk header: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (2, 3):  # first, middle
            pending += chunk
            continue
        if kind not in (1, 4):  # full, last; 0 is the zero-filled rest of a block
            break
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending + chunk)
        records.append(record)
        pending = b""
    return records


def item_key(item):
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_run_holds_the_config_and_each_scalar_at_its_step(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network: the run stays on disk
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    report(["wandb"], tmp_path)
    records = wandb_records(tmp_path)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {item_key(u): json.loads(u.value_json) for u in run.config.update}
    assert {k: config[k] for k in CONFIG} == CONFIG
    assert run.project == "nano-rlsr" and run.display_name == tmp_path.name
    history = [{item_key(i): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [0, 1, 2]
    assert [h.get("reward_mean") for h in history] == [None, 0.5, 0.75]
    assert [h.get("heldout_acc") for h in history] == [0.25, None, 0.5]
    assert [h.get("judge_precision") for h in history] == [None, None, 0.8]
    assert (tmp_path / "wandb" / "run-id").read_text().strip() == run.run_id


@pytest.mark.parametrize("kind, extra", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_missing_package_is_one_line_naming_the_extra(tmp_path, monkeypatch, kind, extra):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name.split(".")[0] == extra or name == "torch.utils.tensorboard":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", without)
    for opening in (lambda: trackers.open_trackers([kind], str(tmp_path), CONFIG),
                    lambda: trackers.check_available([kind])):
        with pytest.raises(trackers.TrackerError) as e:
            opening()
        message = str(e.value)
        assert "\n" not in message and f'pip install -e ".[{extra}]"' in message and f"--report-to {kind}" in message
    assert os.listdir(tmp_path) == []


def test_an_unknown_tracker_is_refused_and_none_is_nothing(tmp_path):
    with pytest.raises(trackers.TrackerError, match="--report-to mlflow: unknown tracker; choose from"):
        trackers.open_trackers(["mlflow"], str(tmp_path), CONFIG)
    quiet = trackers.open_trackers([], str(tmp_path), CONFIG)
    quiet.log(LINES[1])  # nothing to report to: nothing happens
    quiet.close()
    assert os.listdir(tmp_path) == []
    assert trackers._kinds("tensorboard,wandb") == trackers._kinds(["tensorboard", "wandb", "tensorboard"]) \
        == ["tensorboard", "wandb"]
    assert trackers._kinds("") == trackers._kinds(None) == trackers._kinds(["none"]) == []
    with pytest.raises(trackers.TrackerError, match="--report-to mlflow: unknown tracker"):
        trackers.check_available("tensorboard,mlflow")
