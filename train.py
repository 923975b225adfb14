"""train.py — the RLSR loop: problems -> rollouts -> self-reward -> advantages -> PPO.

Lands with the self-reward loop issue. Nothing here works yet.
"""
