"""Rewards: reward models (``model``), reward functions (``functions``) and the inputs a reward model of another
tokenizer reads (``inputs``)."""
