"""config.py — every setting of a run, declared once, and the one path from defaults to a run's config.

    cfg = make_config(TrainConfig, task="countdown", steps=50)      # what experiments do
    cfg = config_from_flags(TrainConfig, sys.argv[1:], prog="train.py")  # what train.py / sft.py do
    parser, given = parse_flags(EvalConfig, argv, prog="eval.py")   # eval.py: then make_config per --model

A config is, field by field: the dataclass default < the model folder's nano_rlsr.json
("prompt_style", "difficulty", and "train_defaults": {field: value} for RL settings that suit that
model, e.g. the tiny model's lr; eval takes only its answer and judge budgets from them) < the
values given (flags, or keyword arguments). `--help` is rendered from the same fields and says which
value the default run takes. `--resume DIR` takes DIR/config.json and refuses a flag that would
change it (only RUN_FIELDS may).

Scopes: batch sizes count rollouts; --prompts-per-step and --minibatch-size are global (split over
torchrun ranks), --micro-batch-size is per rank (it bounds one forward's memory).
"""

import argparse
import json
import os
import time
from dataclasses import MISSING, dataclass, field, fields

import tasks
from checkpoint import UsageError, check_model_dir, read_meta
from distributed import pick_device
from hub import resolve_model
from model import CheckpointError
from trackers import TrackerError, check_available

ROOT = os.path.dirname(os.path.abspath(__file__))
ASSETS = os.path.join(ROOT, "assets")  # the embedded tiny models, one per task: assets/tiny-<task>


def default_model(task: str) -> str:
    """The embedded tiny model made for a task (used when no --model is given)."""
    return os.path.join(ASSETS, f"tiny-{task}")


def is_embedded(path: str) -> bool:
    return os.path.dirname(os.path.abspath(path)) == ASSETS and os.path.basename(path).startswith("tiny-")


DEFAULT_MODEL = default_model("countdown")


def setting(default, help: str, choices=None, metavar=None, nargs=None):
    """A config field with its --help text (and its allowed values; nargs for a flag taking several)."""
    meta = dict(help=help, choices=choices, metavar=metavar, nargs=nargs)
    if isinstance(default, (dict, list)):  # a dataclass field's mutable default needs a factory
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f):
    return f.default_factory() if f.default is MISSING else f.default


DIFFICULTY_HELP = "the task's make_problems knobs, a JSON object such as '{\"max_target\": 100}'"

# -----------------------------------------------------------------------------
# The RL run (train.py)


@dataclass
class TrainConfig:
    # run
    task: str = setting("countdown", "task: a module in tasks/", metavar="NAME")
    model: str = setting("", "starting model: a folder, or a hub id org/name[@revision] (default: "
                             "assets/tiny-<task>, the task's embedded model)", metavar="DIR|ID")
    out: str = setting("", "output folder (default: runs/<task>-rl-<date>-<time>)", metavar="DIR")
    resume: str = setting("", "continue the run saved in this folder (flags not given are taken from it)",
                          metavar="DIR")
    steps: int = setting(200, "RL steps: one batch of rollouts and one PPO update each")
    seed: int = setting(0, "seed of the problems, the sampling and the update order")
    device: str = setting("auto", "auto (cuda:0 when available, else cpu), cpu, cuda, cuda:N", metavar="DEVICE")
    dtype: str = setting("auto", "compute dtype: bf16 (fp32 master weights and optimizer) or fp32; auto: bf16 on CUDA",
                         choices=("auto", "bf16", "fp32"))
    prompt_style: str = setting("full", "prompt style of the task's prompts", metavar="STYLE")
    # problems and rollouts
    problems: str = setting("task", "task: the task's generator; self: the policy proposes problems with a "
                                    "witness its own judge must accept, kept inside the learnability band; "
                                    "self-mixed: the earlier method (no witness, kept when rewards are mixed)",
                            choices=("task", "self", "self-mixed"))
    difficulty: dict = setting({}, DIFFICULTY_HELP)
    prompts_per_step: int = setting(8, "problems per step, global (split over torchrun ranks)")
    group_size: int = setting(8, "rollouts per problem (G)")
    temperature: float = setting(1.0, "rollout sampling temperature (PPO's ratios use the same)")
    top_p: float = setting(1.0, "rollout nucleus sampling")
    max_new_tokens: int = setting(256, "longest rollout, in tokens")
    propose_n: int = setting(16, "--problems self: proposals sampled per step")
    propose_examples: int = setting(3, "--problems self: example problems shown in the propose prompt")
    propose_max_new_tokens: int = setting(128, "--problems self: longest proposal, in tokens")
    band_low: float = setting(0.25, "--problems self: keep a problem when its self-reward pass rate is >= this "
                                    "(2 of 8: one judge false positive alone does not make it look solvable)")
    band_high: float = setting(0.75, "--problems self: ... and <= this (6 of 8: nearly solved problems give way)")
    train_proposer: bool = setting(False, "--problems self: the proposals get their own PPO term, rewarded "
                                          "1 - pass rate inside the band, 0 outside, -1 invalid/repeated/rejected")
    # rewards
    reward: str = setting("self", "self: the policy judges its own answers (RLSR); verifier: the formal checker",
                          choices=("self", "verifier"))
    judge: str = setting("live", "live: the current policy; frozen: the initial model; or a model folder or hub id",
                         metavar="MODE|DIR")
    judge_samples: int = setting(1, "verdicts averaged per judged answer")
    judge_temperature: float = setting(1.0, "judge sampling temperature (0: greedy)")
    judge_max_new_tokens: int = setting(256, "longest judge output, in tokens")
    # PPO
    lr: float = setting(1e-6, "peak learning rate (AdamW)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    ppo_epochs: int = setting(1, "PPO passes over each batch of rollouts")
    minibatch_size: int = setting(0, "rollouts per optimizer step, global (0: the whole batch)")
    micro_batch_size: int = setting(0, "rollouts per forward/backward, per rank, gradients accumulated (0: on "
                                       "CUDA the most the memory plan fits in free memory, else the rank's "
                                       "share of the minibatch)")
    clip_eps: float = setting(0.2, "PPO ratio clip range [1 - eps, 1 + eps]")
    dual_clip: float = setting(0.0, "dual-clip constant c > 1 bounding negative-advantage losses (0: off)")
    kl_coef: float = setting(0.001, "k3 KL penalty to the initial model (0: no reference copy)")
    entropy_coef: float = setting(0.0, "entropy bonus")
    max_grad_norm: float = setting(1.0, "clip the gradient norm before each optimizer step")
    advantage: str = setting("group", "group: GRPO, RLSR's choice; gae: a value head (classic PPO)",
                             choices=("group", "gae"))
    scale_std: bool = setting(True, "group advantages divided by the group's std (off: Dr. GRPO)")
    gamma: float = setting(1.0, "gae: discount")
    lam: float = setting(1.0, "gae: lambda")
    vf_coef: float = setting(0.5, "gae: weight of the value loss")
    value_clip: float = setting(0.2, "gae: clip each value's change per update to +-this (0: unclipped)")
    whiten_gae: bool = setting(True, "gae: normalise advantages over the batch's response tokens")
    recompute_old_logp: bool = setting(True, "behaviour log-probs from the trainer's own forward, not the sampler's")
    # eval, logs, checkpoints
    eval_interval: int = setting(20, "held-out eval every this many steps, at the start and the end (0: never)")
    eval_n: int = setting(64, "held-out (test split) problems")
    eval_temperature: float = setting(0.0, "held-out sampling temperature (0: greedy)")
    save_interval: int = setting(20, "checkpoint every this many steps and at the end")
    progress: bool = setting(True, "show a progress bar")
    # memory and scale-out (one process, or torchrun --nproc_per_node N train.py ...)
    grad_ckpt: str = setting("off", "activation checkpointing: off, or layer (backward recomputes each decoder layer)",
                             choices=("off", "layer"))
    ref_placement: str = setting("shard", "KL reference and frozen judge: shard (on the device), cpu (moved in "
                                          "per pass)", choices=("shard", "cpu"))
    compile: bool = setting(False, "torch.compile the decode step of rollouts, proposals and the judge (shape "
                                   "buckets; inductor, CUDA graphs on CUDA)")
    report_to: list = setting([], "also log each metrics line to tensorboard (OUT/tb) and/or wandb (OUT/wandb); "
                                  "optional extras, see trackers.py", metavar="TRACKER", nargs="+")
    # self-rewarding correction (answer -> [VERIFY] -> correction; see experiments/self_correct.py)
    self_correct: bool = setting(False, "rollouts are [VERIFY] trajectories, rewarded on their final answer only")
    max_turns: int = setting(2, "self-correction: corrections allowed after the first answer")

    @property
    def band(self) -> tuple[float, float]:
        """The learnability band of --problems self: (low, high) self-reward pass rate."""
        return self.band_low, self.band_high


# the only fields a --resume may change: how long to run and what to log
RUN_FIELDS = ("steps", "resume", "out", "eval_interval", "save_interval", "progress", "report_to")


# -----------------------------------------------------------------------------
# Supervised fine-tuning (sft.py)


@dataclass
class SFTConfig:
    # run
    model: str = setting(DEFAULT_MODEL, "starting model: a folder, or a hub id org/name[@revision]", metavar="DIR|ID")
    data: str = setting("", "JSONL file, one {\"messages\": [{\"role\": ..., \"content\": ...}, ...]} a line",
                        metavar="FILE")
    out: str = setting("", "output model folder (default: runs/sft-<date>-<time>)", metavar="DIR")
    seed: int = setting(0, "seed of the batch order")
    device: str = setting("auto", "auto (cuda:0 when available, else cpu), cpu, cuda, cuda:N", metavar="DEVICE")
    dtype: str = setting("auto", "compute dtype: bf16 (fp32 master weights and optimizer) or fp32; auto: bf16 on CUDA",
                         choices=("auto", "bf16", "fp32"))
    prompt_style: str = setting("full", "prompt style recorded in the output folder", metavar="STYLE")
    # optimisation
    epochs: int = setting(1, "passes over the data")
    batch_size: int = setting(32, "examples per optimizer step (bucketed by length)")
    max_len: int = setting(512, "longest example in tokens (longer ones are skipped)")
    lr: float = setting(3e-4, "peak learning rate (AdamW)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup: int = setting(100, "linear warmup steps, then cosine decay to 10% of --lr")
    max_grad_norm: float = setting(1.0, "clip the gradient norm before each optimizer step")
    # logs
    log_interval: int = setting(50, "optimizer steps per log line")
    progress: bool = setting(True, "show a progress bar")


# -----------------------------------------------------------------------------
# Evaluation (eval.py): one config per --model, so each model takes its own folder's budgets and style


@dataclass
class EvalConfig:
    # run
    task: str = setting("countdown", "task: a module in tasks/", metavar="NAME")
    model: str = setting("", "model folder(s) or hub ids org/name[@revision]; two or more are compared side by side "
                             "(default: assets/tiny-<task>, the task's embedded model)", metavar="DIR|ID", nargs="+")
    out: str = setting("", "JSON results file (default: eval-<task>.json in the current folder)", metavar="FILE")
    seed: int = setting(0, "seed of the problems and the sampling")
    device: str = setting("auto", "auto (cuda:0 when available, else cpu), cpu, cuda, cuda:N", metavar="DEVICE")
    batch_size: int = setting(64, "prompts per generate call (0: all at once)")
    prompt_style: str = setting("full", "prompt style of the task's prompts", metavar="STYLE")
    # problems (the first model's difficulty: every model answers the same problems)
    problems: str = setting("", "problems to use, one JSON object a line (default: --n generated test-split problems)",
                            metavar="FILE.jsonl")
    split: str = setting("test", "split of generated problems, or bee: integration's fixed Integration Bee-style set",
                         choices=("train", "test", "bee"))
    n: int = setting(100, "number of problems (default: 100; --split bee: the whole set)")
    difficulty: dict = setting({}, DIFFICULTY_HELP)
    # answers and the judge
    samples: int = setting(1, "answers sampled per problem (k of mean@k, pass@k)", metavar="K")
    temperature: float = setting(1.0, "sampling temperature (0: greedy)")
    max_new_tokens: int = setting(256, "longest answer, in tokens")
    judge_samples: int = setting(1, "verdicts per judged answer (0: skip the judge)")
    judge_temperature: float = setting(1.0, "judge sampling temperature")
    judge_max_new_tokens: int = setting(256, "longest judge output, in tokens")
    # self-rewarding correction
    self_correct: bool = setting(False, "self-rewarding correction metrics instead: one answer -> [VERIFY] -> "
                                        "correction trajectory per problem (turn-1/final accuracy, deltas, "
                                        "verification accuracy)")
    max_turns: int = setting(2, "--self-correct: corrections allowed after the first answer")
    intrinsic: bool = setting(False, "--self-correct: the intrinsic baseline (asked in a second user turn to "
                                     "correct its answer)")


# what eval.py takes from a model folder's train_defaults: the answer and judge budgets
EVAL_BUDGETS = ("max_new_tokens", "judge_max_new_tokens", "judge_temperature")


# -----------------------------------------------------------------------------
# Defaults < the model folder < what is given


def folder_defaults(cls, model: str) -> dict:
    """The settings a model folder asks for: its prompt style and task knobs, and from its "train_defaults"
    every RL setting (TrainConfig) or the answer and judge budgets (EvalConfig)."""
    meta = read_meta(model)
    names = {f.name for f in fields(cls)}
    takes = {TrainConfig: names - {"model", "out", "resume"}, EvalConfig: set(EVAL_BUDGETS)}.get(cls, set())
    out = {k: v for k, v in (meta.get("train_defaults") or {}).items() if k in takes}
    out.update({k: meta[k] for k in ("prompt_style", "difficulty") if k in meta and k in names})
    return out


def make_config(cls, **given):
    """The run's config: cls defaults < the model folder's defaults < given. UsageError when it is wrong."""
    unknown = set(given) - {f.name for f in fields(cls)}
    if unknown:
        raise UsageError(f"unknown setting(s) {sorted(unknown)} for {cls.__name__}")
    if cls is not SFTConfig and not given.get("model"):
        given = {**given, "model": default_model(given.get("task", cls.task))}
    try:
        given = {k: normalise(k, v) for k, v in given.items()}  # hub ids -> cached folders, for experiments too
        model = given.get("model", DEFAULT_MODEL)
        check_model(model)
        defaults = folder_defaults(cls, model)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    cfg = cls(**{**defaults, **given})
    if not isinstance(cfg, SFTConfig):
        check_task(cfg.model, cfg.task)
    if isinstance(cfg, EvalConfig) and cfg.split == "bee" and "n" not in given:
        cfg.n = len(tasks.get("integration").BEE)
    if not cfg.out and isinstance(cfg, EvalConfig):
        cfg.out = f"eval-{cfg.task}.json"
    elif not cfg.out:
        what = f"{cfg.task}-rl" if cls is TrainConfig else "sft"
        cfg.out = os.path.join("runs", f"{what}-{time.strftime('%Y%m%d-%H%M%S')}")
    problem = validate(cfg, fresh=True)
    if problem:
        raise UsageError(problem)
    return cfg


def check_model(path: str):
    """checkpoint.check_model_dir; for an embedded model not built yet, how to build it or pass another."""
    if is_embedded(path) and not os.path.isdir(path):
        raise CheckpointError(f"the embedded model {os.path.relpath(path, ROOT)} is not built yet (see the README "
                              f"for the command that builds it); pass --model DIR with a Qwen model folder")
    check_model_dir(path)


def check_task(model: str, task: str):
    """A model folder made for another task (its nano_rlsr.json says so) is refused, in one line."""
    made_for = read_meta(model).get("task")
    if made_for and made_for != task:
        raise UsageError(f"--model {model} was built for the {made_for} task (its nano_rlsr.json), not {task}: "
                         f"pass --task {made_for}, or a model folder made for {task}")


def validate(cfg, fresh: bool) -> str | None:
    """The first thing wrong with a config, as one line (None when it is fine)."""
    try:
        pick_device(cfg.device)
        task = None if isinstance(cfg, SFTConfig) else tasks.get(cfg.task)
    except ValueError as e:
        return str(e)
    for f in fields(cfg):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            return f"--{flag(f.name)} {getattr(cfg, f.name)!r}: choose from {', '.join(choices)}"
    if task is not None and not isinstance(cfg.difficulty, dict):
        return (f"difficulty {cfg.difficulty!r}: not a JSON object of {cfg.task}'s make_problems knobs "
                f"(--difficulty, or the model folder's nano_rlsr.json)")
    known = getattr(task, "DEFAULTS", None)
    if known is not None and set(cfg.difficulty) - set(known):
        return (f"difficulty: unknown {cfg.task} knob(s) {sorted(set(cfg.difficulty) - set(known))} "
                f"(known: {', '.join(sorted(known))})")
    if isinstance(cfg, EvalConfig):
        return eval_problem(cfg)
    if isinstance(cfg, SFTConfig):
        return bounds_problem(cfg, positive=["epochs", "batch_size", "max_len", "log_interval"],
                              nonnegative=["warmup", "weight_decay"]) or sft_problem(cfg)
    return bounds_problem(cfg, positive=["steps", "prompts_per_step", "group_size", "max_new_tokens",
                                         "judge_samples", "judge_max_new_tokens", "ppo_epochs", "save_interval",
                                         "propose_n", "propose_max_new_tokens"],
                          nonnegative=["eval_interval", "minibatch_size", "micro_batch_size", "propose_examples",
                                       "kl_coef", "entropy_coef", "weight_decay", "temperature",
                                       "judge_temperature", "eval_temperature", "max_turns", "dual_clip",
                                       "value_clip"]) or train_problem(cfg, task, fresh)


def bounds_problem(cfg, positive, nonnegative) -> str | None:
    for name in positive:
        if getattr(cfg, name) < 1:
            if name == "prompts_per_step":  # the problem set of every step
                return "--prompts-per-step must be >= 1 (an empty problem set has nothing to train on)"
            return f"--{flag(name)} must be >= 1"
    for name in nonnegative:
        if getattr(cfg, name) < 0:
            return f"--{flag(name)} must be >= 0"
    if hasattr(cfg, "lr") and cfg.lr <= 0:
        return "--lr must be > 0"
    return None


def sft_problem(cfg) -> str | None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun's process count
        return "sft.py runs in one process (torchrun is for train.py)"
    if not cfg.data:
        return "sft.py needs --data FILE.jsonl (one {\"messages\": [...]} chat example a line)"
    if not os.path.isfile(cfg.data):
        return f"--data {cfg.data}: no such file"
    return None


def eval_problem(cfg) -> str | None:
    if cfg.split == "bee" and cfg.task != "integration":
        return f"--split bee: only the integration task has a Bee set, not {cfg.task}"
    if cfg.n < 1 and not cfg.problems:  # (a problems file sets the problems itself)
        return "--n must be >= 1 (an empty problem set has nothing to measure)"
    if cfg.intrinsic and not cfg.self_correct:
        return "--intrinsic is a --self-correct baseline: pass --self-correct too"
    return bounds_problem(cfg, positive=["samples", "max_new_tokens", "judge_max_new_tokens"],
                          nonnegative=["temperature", "judge_temperature", "judge_samples", "max_turns", "batch_size"])


def train_problem(cfg, task, fresh: bool) -> str | None:
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's process count
    if cfg.eval_interval and cfg.eval_n < 1:
        return "--eval-n must be >= 1 (or --eval-interval 0 to skip the held-out eval)"
    try:  # before any model loads: a tracker's missing package stops the run at once
        check_available(cfg.report_to)
    except TrackerError as e:
        return str(e)
    if cfg.advantage == "group" and cfg.group_size < 2:
        return "--group-size must be >= 2 for group advantages (one sample has no group to compare with)"
    if cfg.temperature == 0 or not 0 < cfg.top_p <= 1:
        return "--temperature must be > 0 for rollouts, --top-p in (0, 1]"
    if not 0 <= cfg.band_low <= cfg.band_high <= 1:
        return "--band-low and --band-high must satisfy 0 <= low <= high <= 1"
    if cfg.problems == "self" and not hasattr(task, "parse_proposal"):
        return f"--problems self: the {cfg.task} task has no proposals with a witness (parse_proposal) yet"
    if cfg.train_proposer and cfg.problems != "self":
        return "--train-proposer trains the proposals of --problems self: pass --problems self too"
    if cfg.dual_clip and cfg.dual_clip <= 1:
        return "--dual-clip must be > 1 (or 0: off)"
    if cfg.judge not in ("live", "frozen"):
        try:
            check_model_dir(cfg.judge)
        except CheckpointError as e:
            return f"--judge must be live, frozen or a model folder ({e})"
    if world > 1 and cfg.compile:  # the compiled decode step would run FSDP2's hooks, which dynamo cannot trace
        return "--compile runs in one process: under torchrun the sampler is the FSDP2-sharded policy; drop --compile"
    if world > 1 and cfg.advantage == "gae":
        return "--advantage gae runs in one process (its value head is not sharded): use group under torchrun"
    for name in ("prompts_per_step", "minibatch_size"):
        if world > 1 and getattr(cfg, name) % world:
            return (f"--{flag(name)} {getattr(cfg, name)} must be a multiple of the {world} torchrun "
                    f"processes (each rank takes an equal share)")
    if fresh and os.path.exists(os.path.join(cfg.out, "config.json")):
        return f"--out {cfg.out} already holds a run: --resume {cfg.out} continues it, or pick another --out"
    return None


# -----------------------------------------------------------------------------
# Command line: one flag per field


def flag(name: str) -> str:
    return name.replace("_", "-")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (the full usage is what --help is for)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def default_note(f, folder: dict) -> str:
    """What --help says a field takes in the default run (no flags)."""
    default = default_of(f)
    shown = {"model": os.path.relpath(DEFAULT_MODEL, ROOT)}.get(f.name, default) if default else default
    if isinstance(shown, list):  # a flag taking several values: as they are typed
        shown = " ".join(shown) or "none"
    if f.name in folder and folder[f.name] != default:
        return f"default: {folder[f.name]} from the model folder, else {shown}"
    return f"default: {shown}" if shown != "" else ""


def json_object(text: str) -> dict:
    """A flag's value that is a JSON object (--difficulty '{"max_target": 100}')."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"max_target\": 100}}', got {text!r}")
    return value


def build_parser(cls, prog: str, description: str = "", epilog: str = "") -> Parser:
    parser = Parser(prog=prog, description=description, epilog=epilog,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        folder = folder_defaults(cls, DEFAULT_MODEL)
    except Exception:  # the default model folder missing or broken: help still prints (without its values)
        folder = {}
    group = parser
    for f in fields(cls):
        if f.name in SECTION_STARTS[cls]:
            group = parser.add_argument_group(SECTION_STARTS[cls][f.name])
        note = default_note(f, folder)
        text = f.metadata["help"] + (f" ({note})" if note and "default" not in f.metadata["help"] else "")
        kw = dict(default=argparse.SUPPRESS, help=text.replace("%", "%%"))
        default = default_of(f)
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kind = {dict: json_object, list: str}.get(type(default), type(default))  # a list: nargs strings
            kw.update(type=kind, nargs=f.metadata["nargs"],
                      choices=f.metadata["choices"],
                      metavar=None if f.metadata["choices"] else f.metadata["metavar"] or
                      {int: "N", float: "X", dict: "JSON"}.get(type(default), "STR"))
        group.add_argument("--" + flag(f.name), **kw)
    return parser


SECTION_STARTS = {  # per config: field -> the --help heading of the section it opens
    TrainConfig: {"task": "run", "problems": "problems and rollouts", "reward": "rewards", "lr": "PPO",
                  "eval_interval": "eval, logs, checkpoints", "grad_ckpt": "memory and scale-out",
                  "self_correct": "self-rewarding correction"},
    SFTConfig: {"epochs": "optimisation", "log_interval": "logs"},
    EvalConfig: {"task": "run", "problems": "problems", "samples": "answers and the judge",
                 "self_correct": "self-rewarding correction"},
}


def normalise(name, value):
    """Model folders become absolute paths, and hub ids (org/name[@rev]) the cached snapshot's path, so
    a run resumed from another folder compares equal and records exactly which weights it started from."""
    if name in ("model", "data") and value or name == "judge" and value not in ("live", "frozen"):
        return os.path.abspath(resolve_model(value) if name != "data" else value)
    return value


def parse_flags(cls, argv, prog: str, description: str = "", epilog: str = ""):
    """-> (the parser, {field: value} of the flags on the line only). A bad flag exits with one line."""
    parser = build_parser(cls, prog, description, epilog)
    return parser, vars(parser.parse_args(argv))


def config_from_flags(cls, argv, prog: str, description: str = "", epilog: str = ""):
    """Flags -> the run's config (make_config's path); --resume DIR -> DIR's saved config. A bad flag
    exits with one line."""
    parser, given = parse_flags(cls, argv, prog, description, epilog)
    try:
        given = {k: normalise(k, v) for k, v in given.items()}
    except CheckpointError as e:  # a hub id that cannot be had
        parser.error(str(e))
    if not given.get("resume"):
        try:
            return make_config(cls, **given)
        except UsageError as e:
            parser.error(str(e))
    out = given["resume"]
    saved_file = os.path.join(out, "config.json")
    if not os.path.exists(saved_file):
        parser.error(f"--resume {out}: no config.json there (not a train.py output folder)")
    with open(saved_file) as f:
        saved = json.load(f)
    if "out" in given and os.path.abspath(given["out"]) != os.path.abspath(out):
        parser.error("--resume OUT continues in OUT: leave --out out (or give the same folder)")
    for k, v in given.items():
        if k not in RUN_FIELDS and saved.get(k) != v:
            parser.error(f"--resume {out}: the saved run has --{flag(k)} {saved.get(k)!r}, not {v!r} "
                         f"(only {', '.join('--' + flag(f) for f in RUN_FIELDS)} may change on resume)")
    unknown = set(saved) - {f.name for f in fields(cls)}
    if unknown:
        parser.error(f"--resume {out}: config.json has unknown fields {sorted(unknown)} (another version?)")
    try:  # a field config.json lacks takes what a fresh run takes: the model folder's value, else the default
        folder = folder_defaults(cls, saved["model"]) if saved.get("model") else {}
    except CheckpointError as e:
        parser.error(f"--resume {out}: {e}")
    cfg = cls(**{**folder, **saved, **given, "out": out})
    problem = validate(cfg, fresh=False)
    if problem:
        parser.error(problem)
    return cfg
