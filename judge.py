"""judge.py — the model scores its own answers (RLSR's self-reward).

Will hold `Judge(model, tokenizer, task, samples=k, ...).score(problems, answers)`; lands with
the self-reward loop issue. Nothing here works yet.
"""
