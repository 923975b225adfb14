"""judge.py — the model scores its own answers (RLSR's self-reward).

    judge = Judge(policy, tokenizer, task, samples=1)          # the live policy judges itself
    rewards, texts = judge.score(problems, answers)            # rewards in [0, 1]

The judge sees the problem and the extracted answer only (never the solver's reasoning), through
`task.judge_prompt`, which neutralises any judge tag or special token inside the answer. Each judge
call samples `samples` verdicts; the reward is the mean of the verdicts (the last
`<JUDGE_SCORE>0|1</JUDGE_SCORE>` of each judge text, no verdict counting as 0). A missing or empty
answer scores 0 and costs no judge call. A greedy judge (temperature 0) gives the same verdict to
the same prompt, so each distinct (problem, answer) prompt is generated once and its verdict shared
(a group of G rollouts often repeats answers); sampled verdicts are drawn per answer, as if judged
alone. All judge prompts of one `score` go through one `sample.completions` call (in chunks of
`batch_size`).

The judge model is whatever model you pass: the live policy (RLSR's setting), the frozen reference
copy, or another checkpoint folder (train.py's `--judge live|frozen|DIR`). `agreement` compares
judged verdicts with the formal verifier — for the logs only; the verifier never feeds the self-reward.
"""

from __future__ import annotations

import sample
import tasks


class Judge:
    """`model` (with its own `tokenizer`) judging answers to `task` problems, `samples` verdicts each."""

    def __init__(self, model, tokenizer, task, samples: int = 1, temperature: float = 1.0,
                 max_new_tokens: int = 256, top_p: float = 1.0, style: str = "full",
                 batch_size: int = 0, compile: bool = False):
        if samples < 1:
            raise ValueError(f"judge samples must be >= 1, got {samples}")
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.samples, self.temperature, self.top_p = samples, temperature, top_p
        self.max_new_tokens, self.style, self.batch_size = max_new_tokens, style, batch_size
        self.compile = compile  # torch.compile the decode step (inductor; CUDA graphs on CUDA)

    def prompt_ids(self, problem, answer) -> list[int]:
        return self.tokenizer.encode_chat(self.task.judge_prompt(problem, answer, style=self.style))

    def score(self, problems: list, answers: list, seed: int | list[int] | None = None):
        """-> (rewards: list[float] in [0, 1], judge_texts: list[list[str]]; [] where not judged).

        seed: one int for the call, or one per answer (each verdict then independent of the batch)."""
        if len(problems) != len(answers):
            raise ValueError(f"{len(problems)} problems but {len(answers)} answers")
        rewards = [0.0] * len(answers)
        texts: list[list[str]] = [[] for _ in answers]
        todo = [i for i, a in enumerate(answers) if a is not None and str(a).strip()]
        if not todo:
            return rewards, texts
        prompts = [self.prompt_ids(problems[i], answers[i]) for i in todo]
        tok, k = self.tokenizer, self.samples
        if self.temperature == 0:  # greedy: one generation per distinct prompt, shared by its copies
            first = {}
            source = [first.setdefault(tuple(p), j) for j, p in enumerate(prompts)]  # prompt j's generation
            n = 1
        else:  # sampled verdicts: every answer gets its own k samples, as if judged alone
            source, n = list(range(len(prompts))), k
        runs = sorted(set(source))
        if isinstance(seed, (list, tuple)):  # per-answer seeds: each verdict independent of the batch
            seed = [seed[todo[j]] for j in runs]
        done = sample.completions(self.model, tok, [prompts[j] for j in runs], n=n, max_new_tokens=self.max_new_tokens,
                                  temperature=self.temperature, top_p=self.top_p, seed=seed, compile=self.compile,
                                  batch_size=self.batch_size)
        judged = {j: [c.text for c in done[r * n:(r + 1) * n]] * (k // n) for r, j in enumerate(runs)}  # k texts each
        for i, j in zip(todo, source):
            texts[i] = judged[j]
            rewards[i] = sum(tasks.parse_verdict(t) for t in texts[i]) / k  # last tag; none: 0
        return rewards, texts


def agreement(judged: list[bool], correct: list[bool]) -> dict:
    """Confusion counts of the judge's pass/fail against the verifier (positive = judged correct), and rates."""
    tp = sum(j and c for j, c in zip(judged, correct))
    fp = sum(j and not c for j, c in zip(judged, correct))
    tn = sum(not j and not c for j, c in zip(judged, correct))
    fn = sum(not j and c for j, c in zip(judged, correct))
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, **confusion_rates(tp, fp, tn, fn)}


def confusion_rates(tp: int, fp: int, tn: int, fn: int) -> dict:
    """Precision, recall and accuracy of confusion counts (None where undefined: nothing to divide by)."""
    n = tp + fp + tn + fn
    return {"precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "accuracy": (tp + tn) / n if n else None}


def passed(reward: float) -> bool:
    """A judged answer passes when the majority of its verdicts says 1."""
    return reward > 0.5
