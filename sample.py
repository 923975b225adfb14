"""sample.py — batched KV-cache sampler used by rollouts and by the judge.

Lands with the sampler issue. Nothing here works yet.
"""
