"""eval.py — measure a checkpoint: accuracy by the formal verifier, judge agreement.

Lands with the self-reward loop issue. Nothing here works yet.
"""
