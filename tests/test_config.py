"""config.py: the one path from defaults to a config (dataclass default < the model folder's nano_rlsr.json <
what is given) for eval.py as for train.py, the task difficulty as a setting, and the project's import graph."""

import ast
import json
import os
import re
import shutil
from dataclasses import asdict, fields

import pytest

import eval as ev
import tasks
from checkpoint import read_meta
from config import DEFAULT_MODEL, EvalConfig, TrainConfig, UsageError, config_from_flags, make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNOBS = {"max_count": 3, "max_number": 9, "max_target": 50}


def model_folder(tmp_path, tiny_ckpt, meta, name="m") -> str:
    """A copy of the tiny checkpoint whose nano_rlsr.json is `meta`."""
    path = tmp_path / name
    shutil.copytree(tiny_ckpt, path)
    (path / "nano_rlsr.json").write_text(json.dumps(meta))
    return str(path)


def train_flags(*argv):
    return config_from_flags(TrainConfig, [str(a) for a in argv], prog="train.py")


def test_difficulty_comes_from_the_folder_then_the_flag_and_resume_keeps_it(tiny_ckpt, tmp_path):
    model = model_folder(tmp_path, tiny_ckpt, {"task": "countdown", "difficulty": KNOBS})
    assert make_config(TrainConfig, model=model, out=str(tmp_path / "a")).difficulty == KNOBS
    assert make_config(TrainConfig, model=tiny_ckpt, out=str(tmp_path / "a")).difficulty == {}
    cfg = train_flags("--model", model, "--out", tmp_path / "r", "--difficulty", '{"max_count": 4}')
    assert cfg.difficulty == {"max_count": 4}
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(asdict(cfg)))  # what train.py writes
    assert train_flags("--resume", run).difficulty == {"max_count": 4}
    assert train_flags("--resume", run, "--difficulty", '{"max_count": 4}').difficulty == {"max_count": 4}
    with pytest.raises(SystemExit):
        train_flags("--resume", run, "--difficulty", "{}")
    # a config.json without the field resumes with what a fresh run takes: the folder's knobs
    saved = {k: v for k, v in asdict(cfg).items() if k != "difficulty"}
    (run / "config.json").write_text(json.dumps(saved))
    assert train_flags("--resume", run).difficulty == KNOBS


@pytest.mark.parametrize("difficulty, message", [([3, 9], "not a JSON object"),
                                                 ({"max_numbr": 9}, "unknown countdown knob")])
def test_a_bad_difficulty_in_the_folder_is_refused_in_one_line(tiny_ckpt, tmp_path, difficulty, message):
    model = model_folder(tmp_path, tiny_ckpt, {"task": "countdown", "difficulty": difficulty})
    for cls in (TrainConfig, EvalConfig):
        with pytest.raises(UsageError, match=message):
            make_config(cls, model=model, out=str(tmp_path / "o"))


def test_a_difficulty_flag_that_is_no_json_object_is_one_line(tiny_ckpt, tmp_path, capsys):
    for text in ("max_count=3", "[3]"):
        with pytest.raises(SystemExit) as e:
            train_flags("--model", tiny_ckpt, "--out", tmp_path / "x", "--difficulty", text)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "--difficulty" in err[-1] and "JSON object" in err[-1] and "Traceback" not in "\n".join(err)


def test_eval_takes_only_the_answer_and_judge_budgets_from_the_folders_rl_settings(tiny_ckpt, tmp_path):
    model = model_folder(tmp_path, tiny_ckpt, {
        "task": "countdown", "prompt_style": "compact", "difficulty": KNOBS,
        "train_defaults": {"max_new_tokens": 5, "judge_max_new_tokens": 7, "judge_temperature": 0.0,
                           "temperature": 0.3, "eval_n": 7, "seed": 4, "lr": 1.0}})
    cfg = make_config(EvalConfig, model=model)
    assert (cfg.max_new_tokens, cfg.judge_max_new_tokens, cfg.judge_temperature) == (5, 7, 0.0)
    # RL's rollout temperature, held-out size and seed are not eval's settings
    assert (cfg.temperature, cfg.n, cfg.seed) == (EvalConfig.temperature, EvalConfig.n, EvalConfig.seed)
    assert (cfg.prompt_style, cfg.difficulty, cfg.out) == ("compact", KNOBS, "eval-countdown.json")
    assert make_config(EvalConfig, model=model, max_new_tokens=3, prompt_style="full").max_new_tokens == 3
    bee = make_config(EvalConfig, model=tiny_ckpt, task="integration", split="bee")
    assert bee.n == len(tasks.get("integration").BEE)
    assert make_config(EvalConfig, model=tiny_ckpt, task="integration", split="bee", n=5).n == 5


def help_of_each_flag(text) -> dict:
    """--help text -> {flag: its help text, on one line} (argparse wraps long lines)."""
    out, flag = {}, None
    for line in text.splitlines():
        # a flag's own line: two spaces, the flag, its metavar(s), its help; wrapped help is indented further
        m = re.match(r"  (--[\w-]+)(?:, --no-[\w-]+)?(?: \S+(?: \[\S+ \.\.\.\])?)?(?:\s{2,}(.*))?$", line)
        if m and not line.strip().startswith("--no-"):
            flag, out[m.group(1)] = m.group(1), m.group(2) or ""
        elif flag and line.startswith(" " * 10):
            out[flag] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in out.items()}


def test_eval_help_states_the_value_each_flag_takes_in_the_default_run(capsys):
    with pytest.raises(SystemExit) as e:
        ev.main(["--help"])
    assert e.value.code == 0
    helps = help_of_each_flag(capsys.readouterr().out)
    default_run = make_config(EvalConfig)
    assert set(helps) == {"--" + f.name.replace("_", "-") for f in fields(EvalConfig)}
    for f in fields(EvalConfig):
        text = helps["--" + f.name.replace("_", "-")]
        assert f.metadata["help"] in text
        if f.name not in ("model", "out", "n", "problems"):  # their help says what their default is
            assert f"default: {getattr(default_run, f.name)}" in text, (f.name, text)
    budget = read_meta(DEFAULT_MODEL)["train_defaults"]["max_new_tokens"]
    assert f"default: {budget} from the model folder, else {EvalConfig.max_new_tokens}" in helps["--max-new-tokens"]


# -----------------------------------------------------------------------------
# The import graph: no module of the project imports itself back, lazily or not


def project_modules() -> dict:
    """{module: (file, folder)}: the root modules, tasks/ as tasks.<name>, experiments/ and bench/ scripts."""
    out = {}
    for folder in ("", "tasks", "experiments", "bench"):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py"):
                stem = name[:-3]
                module = {"": stem, "tasks": "tasks" if stem == "__init__" else f"tasks.{stem}"}.get(
                    folder, f"{folder}/{stem}")
                out[module] = (os.path.join(ROOT, folder, name), folder)
    return out


def import_graph() -> dict:
    """{module: the project modules it imports anywhere in its file}. A script in experiments/ or bench/
    imports the root modules first (they put the root first on sys.path), then its neighbours."""
    modules = project_modules()

    def resolve(name, folder):
        if name.split(".")[0] == "tasks":
            while name not in modules:  # tasks.pool.Pool -> tasks.pool; tasks.extract_answer -> tasks
                name = name.rsplit(".", 1)[0]
            return name
        top = name.split(".")[0]
        if modules.get(top, (None, None))[1] == "":
            return top
        return f"{folder}/{top}" if f"{folder}/{top}" in modules else None

    graph = {}
    for module, (path, folder) in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        names = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        graph[module] = {resolve(n, folder) for n in names} - {None, module}
    return graph


def cycles(graph) -> list[list[str]]:
    """Every back edge found by a depth-first search, as the cycle it closes."""
    found, state, path = [], {}, []

    def visit(u):
        state[u] = "open"
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v)
        path.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return found


def test_the_cycle_finder_finds_a_lazy_import_cycle():
    assert cycles({"config": {"checkpoint"}, "checkpoint": {"config", "model"}, "model": set()}) == \
        [["checkpoint", "config", "checkpoint"]]


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert {"config", "checkpoint", "tokenizer", "tasks.integration", "experiments/rlsr", "bench/verify"} <= set(graph)
    assert "config" in graph["eval"] and "tokenizer" in graph["checkpoint"]  # the graph sees real edges
    assert cycles(graph) == []
