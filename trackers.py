"""trackers — optional views of a run's metrics in TensorBoard or Weights & Biases (--report-to).

    check_available(["tensorboard", "wandb"])   # known, and installed: before anything is loaded
    trackers = open_trackers(["tensorboard", "wandb"], out, config, start=0)
    trackers.log(line)    # a metrics.jsonl line: its numeric fields, as scalars at line["step"]
    trackers.close()

OUT/metrics.jsonl stays the run's record; a tracker gets the same lines, under the same names:
  tensorboard   event files in OUT/tb (`tensorboard --logdir OUT/tb`); needs the tensorboard package,
                `pip install -e ".[tensorboard]"`
  wandb         a W&B run in OUT/wandb, with the run's config; WANDB_MODE=offline keeps it on disk
                (`wandb sync` uploads it later), WANDB_PROJECT names the project (default nano-rlsr);
                needs `pip install -e ".[wandb]"`
A missing package or an unknown kind is a TrackerError whose message is one line saying what to do.

A resumed run (start > 0) continues where its checkpoint was: TensorBoard hides the events it had
written after that step, and W&B continues the same run (its id is kept in OUT/wandb/run-id). W&B
keeps a run's steps increasing, so steps logged again after a resume are dropped there if that run
had already reached them.
"""

import math
import os

KINDS = ("tensorboard", "wandb")
DEFAULT_PROJECT = "nano-rlsr"


class TrackerError(Exception):
    """A tracker cannot be opened: an unknown kind, or its package is not installed."""


def _kinds(kinds) -> list[str]:
    """["tensorboard", "wandb"] from a list, a string ("tensorboard,wandb") or nothing; unknown ones refused."""
    if isinstance(kinds, str):
        kinds = [kinds]
    found = [k.strip() for entry in kinds or [] for k in entry.split(",") if k.strip() and k.strip() != "none"]
    for kind in found:
        if kind not in KINDS:
            raise TrackerError(f"--report-to {kind}: unknown tracker; choose from {', '.join(KINDS)}")
    return list(dict.fromkeys(found))


def scalars(line: dict) -> dict:
    """The numeric fields of a metrics.jsonl line other than its step (None, text and lists are left out)."""
    return {k: float(v) for k, v in line.items()
            if k != "step" and isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}


class TensorBoard:
    """Scalars in OUT/tb through torch's SummaryWriter."""

    def __init__(self, out: str, config: dict, start: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise TrackerError("--report-to tensorboard needs the tensorboard package: "
                               'pip install -e ".[tensorboard]"') from None
        # purge_step: after a resume, events past the checkpoint's step belong to the lost attempt
        self.writer = SummaryWriter(os.path.join(out, "tb"), purge_step=start + 1 if start else None, flush_secs=10)

    def log(self, step: int, values: dict):
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self):
        self.writer.close()


class WandB:
    """A W&B run in OUT/wandb (online, or offline with WANDB_MODE=offline)."""

    def __init__(self, out: str, config: dict, start: int):
        try:
            import wandb
        except ImportError:
            raise TrackerError('--report-to wandb needs the wandb package: pip install -e ".[wandb]"') from None
        folder = os.path.join(out, "wandb")
        os.makedirs(folder, exist_ok=True)
        id_file = os.path.join(folder, "run-id")
        run_id = None
        if start and os.path.exists(id_file):  # a resumed run continues its W&B run
            with open(id_file) as f:
                run_id = f.read().strip() or None
        self.run = wandb.init(dir=out, config=config, id=run_id, resume="allow" if run_id else None,
                              project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
                              name=os.path.basename(os.path.abspath(out)))
        with open(id_file, "w") as f:
            f.write(self.run.id + "\n")

    def log(self, step: int, values: dict):
        self.run.log(values, step=step)

    def close(self):
        import wandb
        self.run.finish()
        wandb.teardown()  # finish() returns before W&B's service has written the run's files; this waits


class Trackers:
    """The trackers a run reports to (possibly none): log(line) each metrics line, close() at the end."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, line: dict):
        values = scalars(line)
        for sink in self.sinks if values else ():
            sink.log(int(line["step"]), values)

    def close(self):
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_available(kinds) -> list[str]:
    """The trackers of `kinds` (list or "a,b"), each known and its package importable; raises
    TrackerError otherwise. Cheap: run it before a run's models load, so a missing extra stops it early."""
    packages = {"tensorboard": "tensorboard", "wandb": "wandb"}
    found = _kinds(kinds)
    for kind in found:
        try:
            __import__(packages[kind])
        except ImportError:
            raise TrackerError(f"--report-to {kind} needs the {packages[kind]} package: "
                               f'pip install -e ".[{kind}]"') from None
    return found


def open_trackers(kinds, out: str, config: dict, start: int = 0) -> Trackers:
    """Open each tracker of `kinds` for the run folder `out` (config: the run's settings, shown by W&B;
    start: the step a resumed run continues from). Raises TrackerError with one line to act on."""
    makers = {"tensorboard": TensorBoard, "wandb": WandB}
    sinks = []
    try:
        for kind in _kinds(kinds):
            sinks.append(makers[kind](out, config, start))
    except BaseException:
        Trackers(sinks).close()  # those already open are not left running
        raise
    return Trackers(sinks)
