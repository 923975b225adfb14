"""Build an embedded tiny model from nothing: data -> tokenizer -> SFT -> self-sample SFT.

    python experiments/build_tiny.py                       # writes runs/tiny-countdown
    python experiments/build_tiny.py --quick --out /tmp/t  # a minute-sized run of the same pipeline
    python experiments/build_tiny.py --task integration    # writes runs/tiny-integration
    python experiments/build_tiny.py --task integration --measure-only --out DIR   # measure DIR again
    python experiments/build_tiny.py --replace-assets      # writes assets/tiny-countdown, the shipped model

A build never touches the shipped model (assets/tiny-<task>, what every run without --model uses)
unless --replace-assets says so. To ship a build, copy its folder over the shipped one and commit it:
    rm -r assets/tiny-countdown && cp -r runs/tiny-countdown assets/tiny-countdown

The steps below are Countdown's; integration (--task integration) runs the same pipeline on its own
data: small antiderivatives (TASK_SETTINGS), a solver that integrates term by term ("int g = G"
lines, then F at the bounds when definite) before its answer, a judge that differentiates the
candidate term by term and compares with the integrand (definite: confirms an antiderivative by
differentiating it and evaluates it at the bounds) before <JUDGE_SCORE>, and proposals that are
plain problems (it has no proposals with a witness yet). Its data has one or two terms; the folder's
difficulty, which RL and the held-out set use, has up to three (room to learn).

1. Task-generated supervised data (compact prompts): for each training problem a worked solution,
   and judge examples whose answers are a correct solution and a near miss (right numbers, value a
   little off; a number twice or missing; a misread number) — the judge first checks the numbers
   and evaluates the expression, then gives <JUDGE_SCORE>. Proposals with a witness too (three
   example problems shown; a new problem worked forward from its numbers, "nums ... target T by
   EXPR"), so `--problems self` works; every round adds more, so the format is kept.
2. A byte-level BPE tokenizer with Qwen's special tokens, trained on that text.
3. A small Qwen2-architecture model (random init) trained by sft.py.
4. Rounds 2, 3, ...: the model solves fresh training problems; its own answers, labelled by the
   verifier, become judge examples (balanced right/wrong) — the judge must be good on the policy's
   own mistakes, not only on synthetic ones — plus fresh solutions so solving is not forgotten.
   Each round samples from the previous round's model, so the judge also sees where the policy
   moves next (sequential rejection sampling, in miniature).
5. The folder gets nano_rlsr.json (task, prompt style, difficulty, how it was built) and the
   held-out accuracy, judge agreement and proposal quality measured at the end.
"""

import argparse
import json
import os
import random
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import quiet_threads  # noqa: E402,F401  (before torch: idle OpenMP threads sleep)
import torch  # noqa: E402

import sample  # noqa: E402
import tasks  # noqa: E402
from checkpoint import read_meta  # noqa: E402
from config import SFTConfig, make_config  # noqa: E402
from eval import evaluate  # noqa: E402
from judge import Judge  # noqa: E402
from model import Qwen, QwenConfig  # noqa: E402
from sft import train_sft  # noqa: E402
from tokenizer import Tokenizer, chatml  # noqa: E402

STYLE = "compact"
# small numbers keep the arithmetic within reach of a few-million-parameter model trained in minutes
# RL settings that suit this model (train.py reads them; flags override): short outputs, a larger lr
# greedy judging: at T=1 this judge's recall on its own samples was 0.46, greedy 0.71 (same precision);
# kl_coef 0.1: with 0.001 the live judge's recall fell 0.53 -> 0.30 within 100 steps (its arithmetic drifted)
TRAIN_DEFAULTS = dict(lr=1e-4, max_new_tokens=64, judge_max_new_tokens=96, judge_temperature=0.0, kl_coef=0.1,
                      eval_n=200, eval_interval=50, steps=200)
DIFFICULTY = dict(min_count=3, max_count=3, min_number=1, max_number=25, min_target=1, max_target=100)
# integration: taught one or two textbook terms (x**n, exp/sin/cos of a*x + b, x times one of those: one
# rule each), integrands of at most 40 characters, a quarter definite on nice bounds (as in a Bee qualifier)
INTEGRATION_SFT_DIFFICULTY = dict(atoms="simple", max_terms=2, max_len=40, definite=0.25)
# RL and the folder's held-out set go one term further: taught up to two terms the stage-1 model already
# solved 83% of indefinite problems greedy (63% overall), and 38% of three-term ones
INTEGRATION_DIFFICULTY = dict(atoms="simple", max_terms=3, max_len=60, definite=0.25)
# not tuned (one build, one experiment): Countdown's, with room for the longer
# worked solutions (about 3 lines) and judgements (about 5-8 lines)
INTEGRATION_TRAIN_DEFAULTS = dict(lr=1e-4, max_new_tokens=160, judge_max_new_tokens=192, judge_temperature=0.0,
                                  kl_coef=0.1, eval_n=200, eval_interval=50, steps=200)
# per task: model folder name, knobs (the folder's: RL and held-out; sft_difficulty: the built data's, when
# they differ), RL defaults, and the token budgets of the build's own sampling
TASK_SETTINGS = {
    "countdown": dict(folder="tiny-countdown", difficulty=DIFFICULTY, train_defaults=TRAIN_DEFAULTS,
                      answer_tokens=96, judge_tokens=128, max_len=256),
    "integration": dict(folder="tiny-integration", difficulty=INTEGRATION_DIFFICULTY,
                        sft_difficulty=INTEGRATION_SFT_DIFFICULTY,
                        train_defaults=INTEGRATION_TRAIN_DEFAULTS, answer_tokens=160, judge_tokens=192, max_len=384,
                        epochs=2),  # ~4 examples per problem, each 2-3x a Countdown one: 2 epochs fit in ~30 min
}


def chat_line(messages, reply):
    return {"messages": messages + [{"role": "assistant", "content": reply}]}


def stage1_examples(task, problems, rng, difficulty, propose_fraction=0.1):
    """Solutions, judge examples (one right, one near-miss answer per problem) and proposals."""
    out = []
    for p in problems:
        solutions = [task.solution_text(p, rng, style=STYLE) for _ in range(2)]  # often two different ones
        out += [chat_line(task.prompt(p, style=STYLE), s) for s in solutions]
        for answer in (task.extract_answer(rng.choice(solutions)), task.near_miss(p, rng)):
            out.append(chat_line(task.judge_prompt(p, answer, style=STYLE), task.judge_text(p, answer, style=STYLE)))
    out += proposal_examples(task, problems, rng, int(propose_fraction * len(problems)), difficulty)
    rng.shuffle(out)
    return out


def proposal_examples(task, problems, rng, n, difficulty):
    """Proposals with their witness: three example problems shown, then a new problem worked forward
    from its numbers (steps, then "nums ... target T by EXPR"). A task without proposals with a
    witness (integration) proposes a fourth problem of the list as it is."""
    if not hasattr(task, "proposal_text"):
        shown = [rng.sample(problems, 4) for _ in range(n)]
        return [chat_line(task.propose_prompt(s[:3], style=STYLE), task.problem_text(s[3])) for s in shown]
    return [chat_line(task.propose_prompt(rng.sample(problems, 3), style=STYLE),
                      task.proposal_text(rng, style=STYLE, **difficulty)) for _ in range(n)]


def own_sample_examples(task, model, tok, problems, rng, samples, seed, solutions=True, max_new_tokens=96):
    """Judge examples on the model's own answers (balanced right/wrong), plus fresh solutions."""
    prompts = [tok.encode_chat(task.prompt(p, style=STYLE)) for p in problems]
    right, wrong = [], []
    done = sample.completions(model, tok, prompts, n=samples, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed,
                              batch_size=256)
    rows = [(problems[i // samples], task.extract_answer(c.text)) for i, c in enumerate(done)]
    rows = [(p, answer) for p, answer in rows if answer is not None and answer.strip()]
    for (p, answer), correct in zip(rows, tasks.verify_all(task, [p for p, _ in rows], [a for _, a in rows])):
        (right if correct else wrong).append((p, answer))  # one batch: integration verifies in worker processes
    rng.shuffle(right)
    rng.shuffle(wrong)
    k = min(len(right), len(wrong))
    judged = right[:k] + wrong[:k]
    # when one side is scarce, fill it with synthetic examples of that side so the set stays balanced
    extra = abs(len(right) - len(wrong)) // 2
    pool = wrong[k:] if len(wrong) > len(right) else right[k:]
    judged += pool[:extra]
    for p, _ in pool[:extra]:
        answer = task.extract_answer(task.solution_text(p, rng, style=STYLE)) if pool is wrong else task.near_miss(p, rng)
        judged.append((p, answer))
    out = [chat_line(task.judge_prompt(p, a, style=STYLE), task.judge_text(p, a, style=STYLE)) for p, a in judged]
    if solutions:
        out += [chat_line(task.prompt(p, style=STYLE), task.solution_text(p, rng, style=STYLE)) for p in problems]
    rng.shuffle(out)
    return out, {"own_right": len(right), "own_wrong": len(wrong), "judge_examples": len(judged)}


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main():
    ap = argparse.ArgumentParser(
        description="Build an embedded tiny model (see the module docstring).",
        epilog="The shipped model, assets/tiny-<task>, is written only with --replace-assets. To ship a build "
               "from another folder: rm -r assets/tiny-<task> && cp -r runs/tiny-<task> assets/tiny-<task>, "
               "then commit it.")
    ap.add_argument("--task", default="countdown", choices=sorted(TASK_SETTINGS), help="the task the model is for")
    ap.add_argument("--out", default="", help="model folder to write (default: runs/tiny-<task>)")
    ap.add_argument("--replace-assets", action="store_true",
                    help="write into assets/tiny-<task>, replacing the shipped model (with --measure-only: "
                         "rewrite its nano_rlsr.json)")
    ap.add_argument("--work", default="", help="scratch folder (default: OUT.work, removed at the end)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--problems", type=int, default=16000, help="stage-1 training problems")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of judge training on the model's own samples")
    ap.add_argument("--round-problems", type=int, default=3000, help="problems the model solves in each round")
    ap.add_argument("--round-samples", type=int, default=2, help="own samples per problem in each round")
    ap.add_argument("--round-proposals", type=int, default=1500,
                    help="proposal examples (problem + witness) in each round, so the format is kept")
    ap.add_argument("--vocab", type=int, default=512, help="tokenizer vocabulary size")
    ap.add_argument("--d", type=int, default=128, help="hidden size")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=None, help="stage-1 SFT epochs (default: countdown 4, integration 2)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak SFT lr (2e-3 and up learned arithmetic far worse)")
    ap.add_argument("--eval-n", type=int, default=300, help="held-out problems measured at the end")
    ap.add_argument("--continue-from", default="", metavar="DIR",
                    help="skip stage 1 and the first --done-rounds rounds: continue from this model folder")
    ap.add_argument("--done-rounds", type=int, default=1, help="with --continue-from: rounds DIR already had")
    ap.add_argument("--quick", action="store_true", help="a minute-sized budget (tests, smoke runs)")
    ap.add_argument("--measure-only", action="store_true",
                    help="build nothing: measure the model folder --out (default runs/tiny-<task>; the shipped "
                         "one with --replace-assets) again (held-out set, judge, proposals) with this script's "
                         "difficulty and settings, and rewrite its nano_rlsr.json")
    args = ap.parse_args()
    settings = TASK_SETTINGS[args.task]
    if args.replace_assets and args.out:
        ap.error("--replace-assets writes assets/tiny-<task>: leave out --out")
    args.out, args.shipped = output_folder(args.task, args.out, args.replace_assets), shipped_folder(args.task)
    args.difficulty, args.train_defaults = settings["difficulty"], settings["train_defaults"]
    args.sft_difficulty = settings.get("sft_difficulty", args.difficulty)
    args.epochs = args.epochs or settings.get("epochs", 4)
    args.answer_tokens, args.judge_tokens, args.max_len = (settings[k] for k in ("answer_tokens", "judge_tokens",
                                                                                 "max_len"))
    continued_meta = built_meta(ap, "--continue-from", args.continue_from, args.task) if args.continue_from else None
    if args.quick:
        args.problems, args.round_problems, args.eval_n, args.d, args.layers, args.epochs = 300, 60, 30, 64, 2, 1
        args.round_proposals = 60
    if args.measure_only:
        meta = built_meta(ap, "--measure-only", args.out, args.task)
        measure_and_record(args, tasks.get(args.task), Tokenizer.from_pretrained(args.out), meta)
        print(where_written(args, "measured"))
        return
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    task = tasks.get(args.task)
    work = args.work or args.out.rstrip("/") + ".work"
    os.makedirs(work, exist_ok=True)
    t0 = time.time()

    # a prefix-stable list: stage 1's problems, then round 2's (later rounds re-draw from all of them:
    # 3 numbers in 1..25 with targets <= 100 leave only ~20k distinct training problems)
    problems = task.make_problems(args.problems + args.round_problems, args.seed, split="train", **args.sft_difficulty)
    if args.continue_from:
        build_rounds(args, task, problems, rng, work, t0, args.continue_from,
                     Tokenizer.from_pretrained(args.continue_from), continued_meta)
        return

    # 1. stage-1 data
    stage1 = problems[: args.problems]
    rows = stage1_examples(task, stage1, rng, args.sft_difficulty)
    write_jsonl(os.path.join(work, "sft1.jsonl"), rows)
    print(f"[{time.time() - t0:.0f}s] stage 1: {len(rows)} examples from {len(stage1)} problems")

    # 2. tokenizer, 3. random init
    tok = Tokenizer.train((chatml(r["messages"], add_generation_prompt=False) for r in rows), vocab_size=args.vocab)
    cfg = QwenConfig(model_type="qwen2", vocab_size=tok.vocab_size, hidden_size=args.d,
                     intermediate_size=int(args.d * 8 / 3) // 16 * 16, num_hidden_layers=args.layers,
                     num_attention_heads=max(1, args.d // 64), num_key_value_heads=max(1, args.d // 128),
                     max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True,
                     eos_token_id=tok.eos_id, bos_token_id=None)
    model = Qwen(cfg)
    init_weights(model)
    init = os.path.join(work, "init")
    model.save_pretrained(init)
    tok.save_pretrained(init)
    meta = {"task": args.task, "prompt_style": STYLE, "difficulty": args.difficulty,
            "train_defaults": args.train_defaults}
    with open(os.path.join(init, "nano_rlsr.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"[{time.time() - t0:.0f}s] tokenizer {tok.vocab_size} tokens, model {model.num_params() / 1e6:.2f}M parameters")

    # SFT, stage 1
    sft1 = os.path.join(work, "sft1")
    train_sft(make_config(SFTConfig, model=init, data=os.path.join(work, "sft1.jsonl"), out=sft1,
                          epochs=args.epochs, lr=args.lr, batch_size=64, warmup=50, seed=args.seed,
                          device="cpu", max_len=args.max_len))
    print(f"[{time.time() - t0:.0f}s] stage-1 SFT done")
    meta["bootstrap"] = {"stage1_examples": len(rows)}
    build_rounds(args, task, problems, rng, work, t0, sft1, tok, meta)


def built_meta(ap, flag, folder, task):
    """The nano_rlsr.json of a model folder this script built for `task`; else one error line naming `flag`."""
    if not os.path.exists(os.path.join(folder, "nano_rlsr.json")):
        ap.error(f"{flag} {folder}: no nano_rlsr.json there (not a build_tiny.py model)")
    meta = read_meta(folder)
    if meta.get("task", "countdown") != task:
        ap.error(f"{flag} {folder}: a model for another task than {task}")
    return meta


def build_rounds(args, task, problems, rng, work, t0, prev, tok, meta):
    """4. Rounds on the model's own samples, each from the previous round's model; 5. measure, record."""
    first = args.done_rounds if args.continue_from else 0
    own_stats = list(meta.get("bootstrap", {}).get("rounds", []))[:first]
    for r in range(first, args.rounds):
        model = Qwen.from_pretrained(prev)
        if r == 0:
            round_rng, mine = rng, problems[args.problems:]
        else:  # its own rng, so --continue-from gives the same round
            round_rng = random.Random(args.seed * 7919 + r)
            mine = round_rng.sample(problems, args.round_problems)
        # solutions only in round 2: later rounds train the judge alone. With solutions there too the
        # solver reached 55% greedy and RL, even with the verifier's reward, had almost no room left
        rows2, own = own_sample_examples(task, model, tok, mine, round_rng, args.round_samples, args.seed + 1000 * r,
                                         solutions=r == 0, max_new_tokens=args.answer_tokens)
        if rows2:
            rows2 += proposal_examples(task, problems, round_rng, args.round_proposals, args.sft_difficulty)
            round_rng.shuffle(rows2)
        own_stats.append(own)
        if not rows2:  # a model that answers nothing (a --quick build) gives nothing to learn from
            print(f"[{time.time() - t0:.0f}s] round {r + 2}: no answers to judge, skipped")
            continue
        data = os.path.join(work, f"sft{r + 2}.jsonl")
        write_jsonl(data, rows2)
        print(f"[{time.time() - t0:.0f}s] round {r + 2}: {own}")
        dest = args.out if r == args.rounds - 1 else os.path.join(work, f"sft{r + 2}")
        train_sft(make_config(SFTConfig, model=prev, data=data, out=dest, epochs=1, lr=args.lr / 3,
                              batch_size=64, warmup=20, seed=args.seed + 1 + r, device="cpu", max_len=args.max_len))
        prev = dest
    if os.path.abspath(prev) != os.path.abspath(args.out):  # no round wrote the output folder
        shutil.copytree(prev, args.out, dirs_exist_ok=True)

    meta["built_by"] = "python experiments/build_tiny.py " + " ".join(sys.argv[1:])
    seconds = round(time.time() - t0) + (meta.get("bootstrap", {}).get("seconds", 0) if args.continue_from else 0)
    meta["bootstrap"] = {**meta.get("bootstrap", {}), "rounds": own_stats, "seconds": seconds}
    measure_and_record(args, task, tok, meta)
    if not args.work:
        shutil.rmtree(work)
    print(f"[{time.time() - t0:.0f}s] " + where_written(args, "wrote"))


def shipped_folder(task):
    """assets/tiny-<task>: the model every run without --model uses."""
    return os.path.join(ROOT, "assets", TASK_SETTINGS[task]["folder"])


def output_folder(task, out="", replace_assets=False):
    """The folder a build writes: --out, else the shipped folder with --replace-assets, else runs/tiny-<task>."""
    if out:
        return out
    return shipped_folder(task) if replace_assets else os.path.join(ROOT, "runs", TASK_SETTINGS[task]["folder"])


def _shown(path):
    """A path as the user would type it: relative to here when it is below here."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def where_written(args, verb):
    """The last line of a build: where the model folder is, and how to ship it."""
    out, shipped = _shown(args.out), _shown(args.shipped)
    if os.path.abspath(args.out) == os.path.abspath(args.shipped):
        return f"{verb} {out}: this is the shipped model (commit it to ship it)"
    return (f"{verb} {out} (the shipped model {shipped} is unchanged); to ship it: "
            f"rm -r {shipped} && cp -r {out} {shipped}, then commit")


def measure_and_record(args, task, tok, meta):
    """5. Held-out accuracy (T=1 and greedy), the greedy judge on its own T=1 samples and proposal
    quality, on the folder's difficulty; written with the settings to OUT/nano_rlsr.json."""
    model = Qwen.from_pretrained(args.out)
    test = task.make_problems(args.eval_n, 0, split="test", **args.difficulty)
    judge = Judge(model, tok, task, samples=1, temperature=0.0, max_new_tokens=args.judge_tokens,
                  style=STYLE)  # as in RL
    result = evaluate(model, tok, task, test, samples=1, temperature=1.0, max_new_tokens=args.answer_tokens,
                      style=STYLE, seed=0, judge=judge)
    greedy = evaluate(model, tok, task, test, samples=1, temperature=0.0, max_new_tokens=args.answer_tokens,
                      style=STYLE, seed=0)
    if hasattr(task, "parse_proposal"):
        proposals = measure_proposals(task, model, tok, test, judge)
    else:
        proposals = measure_plain_proposals(task, model, tok, test)
    meta["difficulty"], meta["train_defaults"] = args.difficulty, args.train_defaults
    if args.sft_difficulty != args.difficulty:  # the data's, when RL's differs
        meta.setdefault("bootstrap", {})["difficulty"] = args.sft_difficulty
    meta["heldout"] = {"n": args.eval_n, "accuracy_t1": result["mean@1"], "accuracy_greedy": greedy["mean@1"],
                       **{k: v for k, v in result.items() if k.startswith("judge_")}, "proposals": proposals}
    with open(os.path.join(args.out, "nano_rlsr.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(json.dumps(meta["heldout"]))


def measure_proposals(task, model, tok, examples, judge, n=200, seed=0):
    """n proposals at T=1 (3 examples shown each): how many carry a problem + witness, how many
    witnesses are right, how many the model's own greedy judge admits, and how many admitted
    problems are solvable (the verifier measures; it admits nothing)."""
    rng = random.Random(seed)
    prompts = [tok.encode_chat(task.propose_prompt(rng.sample(examples, 3), style=STYLE)) for _ in range(n)]
    texts = [c.text for c in sample.completions(model, tok, prompts, max_new_tokens=96, temperature=1.0, seed=seed,
                                                batch_size=256)]
    parsed = [p for p in map(task.parse_proposal, texts) if p]
    verdicts, _ = judge.score([p for p, _ in parsed], [w for _, w in parsed], seed=seed) if parsed else ([], [])
    admitted = [p for (p, _), v in zip(parsed, verdicts) if v > 0.5]
    return {"n": n, "valid": len(parsed) / n, "witness_correct": sum(task.verify(p, w) for p, w in parsed) / max(1, len(parsed)),
            "admitted": len(admitted) / n, "admitted_solvable": sum(map(task.solvable, admitted)) / max(1, len(admitted))}


def measure_plain_proposals(task, model, tok, examples, n=200, seed=0):
    """n proposals at T=1 (3 examples shown each) for a task without witnesses: how many parse as a
    well-formed problem (task.parse_problem), and how many of those are none of the examples shown."""
    rng = random.Random(seed)
    shown = [rng.sample(examples, 3) for _ in range(n)]
    prompts = [tok.encode_chat(task.propose_prompt(s, style=STYLE)) for s in shown]
    texts = [c.text for c in sample.completions(model, tok, prompts, max_new_tokens=96, temperature=1.0, seed=seed,
                                                batch_size=256)]
    parsed = [(task.parse_problem(t), s) for t, s in zip(texts, shown)]
    valid = [(p, s) for p, s in parsed if p is not None]
    new = [p for p, s in valid if all(p != {k: e.get(k) for k in p} for e in s)]
    return {"n": n, "valid": len(valid) / n, "new": len(new) / max(1, len(valid))}


def init_weights(model, std=0.02):
    """GPT-2 style init: normal(0, 0.02) matrices, residual projections scaled down by depth."""
    n = model.config.num_hidden_layers
    for name, p in model.named_parameters():
        if p.dim() == 1:
            continue  # norms start at 1, biases at 0
        scale = (2 * n) ** -0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
        torch.nn.init.normal_(p, 0.0, std * scale)
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            torch.nn.init.zeros_(p)


if __name__ == "__main__":
    main()
