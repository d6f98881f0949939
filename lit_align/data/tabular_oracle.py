"""The tabular oracle: the paper's toy (Fig. 1), where every policy is a table of logits.

X prompts, A single-token responses; pi*(.|x) and pi_0(.|x) are softmaxes of logits drawn from N(0, std^2),
and preferences follow the tilted Bradley-Terry model ``P(a > b | x) = s(gamma (ln pi*(a|x) - ln pi*(b|x)))``.
Policies are (..., X, A) logit tensors, so the pure losses of ``lit_align.losses`` apply to them directly (a
response's log-prob is one entry of ``log_softmax(logits)``) and every expectation over responses is exact.
A leading batch dimension S holds independent trials (one oracle and one data set each).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TabularPairs:
    """n labelled pairs per trial: indices (S, n) of the prompt, the chosen and the rejected response."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor


@dataclass
class TabularOracle:
    """S independent toy oracles: ``target_logits`` and ``reference_logits`` (S, X, A), tilt ``gamma``.

    ``sampler_logits`` (S, X, A) is mu, the policy the compared responses come from (pi_0 by default).
    """

    target_logits: torch.Tensor
    reference_logits: torch.Tensor
    gamma: float
    sampler_logits: torch.Tensor | None = None

    @classmethod
    def toy(cls, trials: int = 1, num_prompts: int = 10, num_responses: int = 10, std: float = 0.1,
            gamma: float = 0.5, seed: int = 0) -> TabularOracle:
        """The paper's toy: 10 prompts x 10 responses, logits of pi* and pi_0 ~ N(0, 0.1^2), gamma = 0.5."""
        generator = torch.Generator().manual_seed(seed)
        shape = (trials, num_prompts, num_responses)
        target = std * torch.randn(shape, generator=generator, dtype=torch.float64)
        reference = std * torch.randn(shape, generator=generator, dtype=torch.float64)
        return cls(target, reference, gamma)

    @property
    def sampler(self) -> torch.Tensor:
        return self.sampler_logits if self.sampler_logits is not None else self.reference_logits

    @property
    def target_logps(self) -> torch.Tensor:
        return self.target_logits.log_softmax(-1)

    @property
    def reference_logps(self) -> torch.Tensor:
        return self.reference_logits.log_softmax(-1)

    def reward(self) -> torch.Tensor:
        """The oracle reward R*(x, a) = gamma ln pi*(a|x). -> (S, X, A)"""
        return self.gamma * self.target_logps

    def preference_probability(self, prompt: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """P(a > b | x) of (S, n) index tensors under the tilted Bradley-Terry model. -> (S, n)"""
        logps = self.target_logps
        return torch.sigmoid(self.gamma * (pick(logps, prompt, a) - pick(logps, prompt, b)))

    def sample_pairs(self, n: int, generator: torch.Generator) -> TabularPairs:
        """n pairs per trial: x uniform, a, b ~ mu(x) independently, the label drawn from the model."""
        trials, num_prompts, num_responses = self.target_logits.shape
        prompt = torch.randint(num_prompts, (trials, n), generator=generator)
        probs = self.sampler.softmax(-1).gather(1, prompt[..., None].expand(-1, -1, num_responses))  # (S, n, A)
        flat = probs.reshape(-1, num_responses)
        a = torch.multinomial(flat, 1, generator=generator).view(trials, n)
        b = torch.multinomial(flat, 1, generator=generator).view(trials, n)
        uniform = torch.rand((trials, n), generator=generator, dtype=torch.float64)
        a_wins = uniform < self.preference_probability(prompt, a, b)
        return TabularPairs(prompt, torch.where(a_wins, a, b), torch.where(a_wins, b, a))

    def forward_kl(self, logits: torch.Tensor) -> torch.Tensor:
        """E_x KL(pi*(x) || pi(x)) with x uniform, per trial. (S, X, A) -> (S,)"""
        return kl(self.target_logits, logits).mean(-1)

    def reverse_kl(self, logits: torch.Tensor) -> torch.Tensor:
        """E_x KL(pi(x) || pi*(x)) with x uniform, per trial. (S, X, A) -> (S,)"""
        return kl(logits, self.target_logits).mean(-1)


def pick(table: torch.Tensor, prompt: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Entries ``table[s, prompt[s, i], response[s, i]]`` of an (S, X, A) table. -> (S, n)"""
    trials = torch.arange(table.shape[0])[:, None]
    return table[trials, prompt, response]


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax p || softmax q) over the last dimension. (..., A) -> (...)"""
    p = p_logits.log_softmax(-1)
    return (p.exp() * (p - q_logits.log_softmax(-1))).sum(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dimension. (..., A) -> (...)"""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)
