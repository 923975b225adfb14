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
proposal; advantages normalised over the step's proposals.
"""

import json
from collections import deque

import sample
from judge import agreement, decode_completion, passed

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


def examples(cfg, task, buffer, rng, difficulty) -> tuple[list, int]:
    """Problems shown in the propose prompt: the policy's own admitted ones once the buffer holds
    enough, else the task generator's -> (examples, how many came from the generator)."""
    own = buffer.pool(cfg.band)
    if len(own) >= cfg.propose_examples:
        return rng.sample(own, cfg.propose_examples), 0
    shown = task.make_problems(cfg.propose_examples, seed=rng.randrange(2**31), split="train", **difficulty)
    return shown, len(shown)


def propose(cfg, model, tok, task, shown, seed) -> list[dict]:
    """propose_n proposals -> [{"problem", "witness", "text", "completion", "prompt", "logp"}] with
    problem None where the text holds no valid proposal."""
    prompt = tok.encode_chat(task.propose_prompt(shown, style=cfg.prompt_style))
    out = sample.generate(model, [prompt], n=cfg.propose_n, max_new_tokens=cfg.propose_max_new_tokens,
                          temperature=cfg.temperature, top_p=cfg.top_p, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                          seed=seed, compile=cfg.compile)
    rows = []
    for i in range(cfg.propose_n):
        ids = out.completion(i)
        text = decode_completion(tok, ids)
        parsed = task.parse_proposal(text) if cfg.problems == "self" else (task.parse_problem(text), None)
        problem, witness = parsed if parsed else (None, None)
        rows.append(dict(problem=problem, witness=witness, text=text, completion=ids, prompt=prompt,
                         logp=out.logprobs[i, :len(ids)].float().cpu()))
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


