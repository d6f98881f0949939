"""A new on-policy loss as a pure function of log-probs and rewards (in the library: lit_align/losses/group.py)."""

import torch


def group_reinforce_loss(token_logps: torch.Tensor, response_mask: torch.Tensor, scores: torch.Tensor,
                         group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE with each prompt's mean reward as the baseline: ``-mean_i A_i * ln pi(y_i | x)``.

    Args:
        token_logps: (N, T-1) the policy's per-token log-probs of the responses, with gradient.
        response_mask: (N, T-1) bool, the response tokens.
        scores: (N,) the reward of each response; rows ``i * k .. i * k + k - 1`` answer prompt i.
        group_size: k, the responses per prompt.

    Returns:
        The scalar loss and the advantages ``A_i = r_i - mean of its prompt's rewards`` (N,).
    """
    groups = scores.view(-1, group_size)
    advantages = (groups - groups.mean(-1, keepdim=True)).view(-1)
    sequence_logps = (token_logps * response_mask).sum(-1)
    return -(advantages * sequence_logps).mean(), advantages
