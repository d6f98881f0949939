"""Rewards: the one dispatch from what an objective is given to a ``Reward`` of rollouts (``dispatch``), reward
models (``model``), reward functions (``functions``) and what a reward model of another tokenizer reads
(``inputs``)."""
