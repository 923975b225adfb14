"""propose.py — RLSR's first stage: the policy writes its own practice problems (--problems self).

A proposal is a problem together with a witness: a solution the proposer claims for it (Countdown:
the numbers, an expression over them, and the target that expression reaches). It is admitted only
when the policy's own judge, on the very judge prompt it uses for answers, accepts the witness for
the claimed problem. Admitted problems are solved G times and self-judged; a problem is trained on
when its self-reward pass rate lies in the learnability band (default [0.25, 0.75]: at least two
passes, so one false positive of the judge cannot make a problem look solvable, and at most six of
eight, so nearly solved problems give way). Repeats (same numbers and target) are dropped within a
step and against a buffer of recent problems; when a step has too few new problems in the band,
problems admitted earlier are drawn from that buffer again, so the task's generator is needed only
for the propose prompt's first examples (afterwards the examples come from the buffer too).

The formal verifier never admits, filters or rewards anything here: `measure` only counts how many
admitted problems are truly solvable and how many witnesses are right, for the logs.

With --train-proposer the proposal tokens get their own PPO term: reward 1 - pass rate inside the
band (Absolute Zero's learnability), 0 outside it, -1 for an invalid, repeated or judge-rejected
proposal; advantages normalised over the step's proposals (ppo.proposal_advantages).

`Proposer` is the stage as train.py's step calls it (admission, the band, the buffer, the metrics,
the ranks' counts through distributed.py); the functions after it are its parts.
"""

import json
from collections import deque

import sample
from distributed import all_items, rank_and_world, sum_over_ranks
from judge import agreement, passed

BUFFER_SIZE = 512  # recent admitted problems kept for deduplication and reuse


def canonical(problem) -> str:
    """The key two proposals share when they are the same problem (Countdown: sorted numbers + target)."""
    if "numbers" in problem:
        return json.dumps({"numbers": sorted(problem["numbers"]), "target": problem["target"]})
    return json.dumps(problem, sort_keys=True)


class ProblemBuffer:
    """Recent admitted problems, oldest first: dedup keys, examples for the propose prompt, reuse."""

    def __init__(self, items=None, size=BUFFER_SIZE):
        self.items = deque(items or [], maxlen=size)  # [{"problem": ..., "pass_rate": float}]

    def keys(self) -> set:
        return {canonical(x["problem"]) for x in self.items}

    def add(self, problem, pass_rate):
        key = canonical(problem)
        self.items = deque([x for x in self.items if canonical(x["problem"]) != key], maxlen=self.items.maxlen)
        self.items.append({"problem": problem, "pass_rate": pass_rate})

    def learnable(self, band) -> list:
        """Problems last seen inside the band (the ones worth solving again)."""
        return [x["problem"] for x in self.items if band[0] <= x["pass_rate"] <= band[1]]

    def pool(self, band) -> list:
        """The problems to draw from again: the learnable ones, or all of them when none is."""
        return self.learnable(band) or [x["problem"] for x in self.items]

    def state(self) -> list:
        return list(self.items)


class Proposer:
    """RLSR's first stage, step by step (train.py calls these in order each step):

        admitted(...)      the policy proposes, its own judge admits -> the step's problems
        keep(groups, k)    their scored groups (this rank's) -> those inside the learnability band;
                           every admitted problem enters the buffer with its pass rate
        from_buffer(k)     problems admitted at earlier steps, for a step short of learnable ones
        renew(groups)      the scored groups of those: pass rates renewed in the buffer
        rows()             --train-proposer: this rank's proposals with their learnability reward
        metrics(groups)    the step's counts over every rank, for metrics.jsonl

    Every rank proposes and admits the same problems (the same seeds), and solves its share of them.
    The buffer (a ProblemBuffer) lives across steps and in checkpoints."""

    def __init__(self, cfg, task, buffer):
        self.cfg, self.task, self.buffer = cfg, task, buffer

    def admitted(self, model, tok, judge, timer, rng, seed, judge_seeds) -> list[dict]:
        """The step's propose_n proposals (examples drawn with rng, sampled with seed) -> the problems
        the judge admits (judge_seeds: one per proposal). --problems self-mixed admits every new valid one."""
        cfg = self.cfg
        self.shown, self.from_task = examples(cfg, self.task, self.buffer, rng)
        with timer("generate"):
            self.proposals = propose(cfg, model, tok, self.task, self.shown, seed)
        with timer("judge"):
            judge = judge if cfg.problems == "self" else None
            admitted = admit(self.proposals, judge, self.buffer, self.shown, judge_seeds, self.task)
        self.problems = [p["problem"] for p in admitted]
        return self.problems

    def keep(self, groups, quota) -> list:
        """This rank's scored groups of the admitted problems -> at most quota worth training on: pass
        rate inside the band (self-mixed: mixed rewards). Records every proposal's learnability reward."""
        self.candidates, self.n_reused = groups, 0
        rates = dict(all_items([(canonical(g[0]["problem"]), pass_rate(g)) for g in groups]))
        self.earlier = ProblemBuffer(self.buffer.state())  # what from_buffer draws on: problems of earlier steps
        for problem in self.problems:  # every rank adds the same problems in the same order
            self.buffer.add(problem, rates[canonical(problem)])
        if self.cfg.train_proposer:
            for p, reward in zip(self.proposals, proposer_rewards(self.proposals, rates, self.cfg.band)):
                p["reward"] = reward
        if self.cfg.problems == "self-mixed":
            self.kept = [g for g in groups if len({r["reward"] for r in g}) > 1][:quota]
        else:
            self.kept = [g for g in groups if in_band(g, self.cfg.band)][:quota]
        return self.kept

    def from_buffer(self, k, rng) -> list:
        """Up to k problems admitted at earlier steps (--problems self; none while the buffer is empty)."""
        if k <= 0 or not self.earlier.items or self.cfg.problems != "self":
            return []
        return reuse(self.earlier, self.cfg.band, k, rng)

    def renew(self, groups) -> list:
        """This rank's scored groups of the problems from_buffer gave (maybe none): every rank's pass rates
        renewed in the buffer, in rank order, so that all ranks keep the same buffer. Every rank calls it."""
        for problem, rate in all_items([(g[0]["problem"], pass_rate(g)) for g in groups]):
            self.buffer.add(problem, rate)
        self.n_reused = len(groups)
        return groups

    def rows(self) -> list[dict]:
        """--train-proposer: this rank's share of the proposals, each with its reward (PPO rows); else []."""
        rank, world = rank_and_world()
        return self.proposals[rank::world] if self.cfg.train_proposer else []

    def metrics(self, groups) -> dict:
        """The step's proposal metrics over every rank; groups: this rank's trained groups (kept, reused,
        then the task's). The verifier and the solver only measure here."""
        task = self.task
        solvable = {canonical(p): bool(task.solvable(p)) for p in self.problems} if hasattr(task, "solvable") else {}
        out = {**measure(task, self.proposals, self.candidates, solvable), "examples_from_task": self.from_task}
        kept = all_items([solvable[canonical(g[0]["problem"])] for g in self.kept] if solvable else [])
        if kept:
            out["trained_solvable"] = sum(kept) / len(kept)
        n_self, n_reused, n = sum_over_ranks((len(self.kept), self.n_reused, len(groups)))
        out.update(problems_self=n_self, problems_reused=n_reused, self_share=(n_self + n_reused) / n)
        if self.cfg.train_proposer:
            out["proposer_reward"] = sum(p["reward"] for p in self.proposals) / len(self.proposals)
        return out


def examples(cfg, task, buffer, rng) -> tuple[list, int]:
    """Problems shown in the propose prompt: the policy's own admitted ones once the buffer holds
    enough, else the task generator's -> (examples, how many came from the generator)."""
    own = buffer.pool(cfg.band)
    if len(own) >= cfg.propose_examples:
        return rng.sample(own, cfg.propose_examples), 0
    shown = task.make_problems(cfg.propose_examples, seed=rng.randrange(2**31), split="train", **cfg.difficulty)
    return shown, len(shown)


def propose(cfg, model, tok, task, shown, seed) -> list[dict]:
    """propose_n proposals -> [{"problem", "witness", "text", "completion", "prompt", "logp"}] with
    problem None where the text holds no valid proposal."""
    prompt = tok.encode_chat(task.propose_prompt(shown, style=cfg.prompt_style))
    rows = []
    for c in sample.completions(model, tok, [prompt], n=cfg.propose_n, max_new_tokens=cfg.propose_max_new_tokens,
                                temperature=cfg.temperature, top_p=cfg.top_p, seed=seed, compile=cfg.compile):
        parsed = task.parse_proposal(c.text) if cfg.problems == "self" else (task.parse_problem(c.text), None)
        problem, witness = parsed if parsed else (None, None)
        rows.append(dict(problem=problem, witness=witness, text=c.text, completion=c.ids, prompt=prompt,
                         logp=c.logp))
    return rows


def admit(proposals, judge, buffer, shown, seeds, task) -> list[dict]:
    """Mark each proposal: "invalid" (no problem), "heldout" (it falls in the task's test split, which
    training never sees), "repeat" (seen this step, in the buffer or among the examples), "rejected"
    (the judge fails its witness) or "admitted". The judge is the policy's own
    (or the configured judge model): the verifier is never asked. judge None admits every new valid
    problem (--problems self-mixed, the earlier method)."""
    seen = buffer.keys() | {canonical(p) for p in shown}
    todo = []
    for p in proposals:
        if p["problem"] is None:
            p["status"] = "invalid"
            continue
        if task.split_of(p["problem"]) != "train":
            p["status"] = "heldout"
            continue
        key = canonical(p["problem"])
        p["status"] = "repeat" if key in seen else "judge"
        seen.add(key)
        if p["status"] == "judge":
            todo.append(p)
    if todo and judge is None:
        for p in todo:
            p["status"] = "admitted"
    elif todo:
        rewards, texts = judge.score([p["problem"] for p in todo], [p["witness"] for p in todo],
                                     seed=[seeds[proposals.index(p)] for p in todo])
        for p, r, t in zip(todo, rewards, texts):
            p["status"], p["judge_texts"] = ("admitted" if passed(r) else "rejected"), t
    return [p for p in proposals if p["status"] == "admitted"]


def pass_rate(group) -> float:
    """The share of a group's rollouts its judge passed (self-reward only: no verifier)."""
    return sum(passed(r["reward"]) for r in group) / len(group)


def in_band(group, band) -> bool:
    return band[0] <= pass_rate(group) <= band[1]


def proposer_rewards(proposals, rates: dict, band) -> list[float]:
    """Learnability reward per proposal: 1 - pass rate inside the band, 0 outside it, -1 when invalid,
    repeated or rejected by the judge. rates: canonical key -> pass rate of admitted problems."""
    out = []
    for p in proposals:
        if p["status"] != "admitted":
            out.append(-1.0)
            continue
        rate = rates.get(canonical(p["problem"]))
        out.append(0.0 if rate is None or not band[0] <= rate <= band[1] else 1.0 - rate)
    return out


def measure(task, proposals, groups, solvable: dict) -> dict:
    """The verifier's view, for the logs only: admitted problems that are truly solvable (solvable:
    canonical key -> bool, from task.solvable), witnesses that are right, and the judge's precision
    on the admitted problems' rollouts."""
    admitted = [p for p in proposals if p.get("status") == "admitted"]
    out = {"proposed": len(proposals), "proposed_valid": sum(p["problem"] is not None for p in proposals),
           "proposed_repeat": sum(p.get("status") == "repeat" for p in proposals),
           "proposed_rejected": sum(p.get("status") == "rejected" for p in proposals),
           "admitted": len(admitted)}
    if admitted and solvable:
        out["admitted_solvable"] = sum(solvable[canonical(p["problem"])] for p in admitted) / len(admitted)
    if admitted and all(p["witness"] is not None for p in admitted):
        out["witness_correct"] = sum(bool(task.verify(p["problem"], p["witness"])) for p in admitted) / len(admitted)
    if groups:  # the judge on the admitted problems' rollouts
        judged = [r for g in groups for r in g if r.get("judge_texts")]
        out["admitted_judge_precision"] = agreement([passed(r["reward"]) for r in judged],
                                                    [r["correct"] for r in judged])["precision"]
    return out


def reuse(buffer, band, k, rng) -> list:
    """Up to k problems admitted earlier (preferring those last seen inside the band)."""
    pool = buffer.pool(band)
    return rng.sample(pool, min(k, len(pool)))


