"""Rules rewards for the RL learning tests (loaded by `rl.reward_function` / `rl.cost_function` as file:function)."""

from __future__ import annotations


def letter_a(prompts, completions, **_):
    """The share of the letter 'a' among a completion's characters (0 to 1)."""
    return [c.count("a") / max(len(c), 1) for c in completions]


def letter_e_cost(prompts, completions, **_):
    """1 when the completion's share of the letter 'e' is above 5%, else 0."""
    return [float(c.count("e") / max(len(c), 1) > 0.05) for c in completions]


def flaky(prompts, completions, **_):
    """No reward for completions that contain 'x' (as a failed judgment), else the 'a' share."""
    return [None if "x" in c else c.count("a") / max(len(c), 1) for c in completions]
