"""VQ-Diffusion's mask-and-replace forward process, per example, for training EDN's token refiner (paper §1.3).

diffusers' :class:`~diffusers.VQDiffusionScheduler` holds the schedule and the reverse step, but for one
timestep shared by the whole batch; training draws a timestep per example. These functions index the
scheduler's own schedule tensors (``log_cumprod_at`` …, ``log_at`` …) with a ``(B,)`` tensor of timesteps, so
they agree with ``scheduler.q_posterior`` wherever that is defined and the schedule lives in one place.

Conventions are the scheduler's: classes ``0 … K-1`` are codebook tokens and class ``K`` is [MASK]
(``num_vec_classes = K + 1``); ``t`` runs over ``[0, T)``, ``T = num_train_timesteps``. Under
``q(x_t | x_0)`` a token keeps its class with probability ``ā_t + b̄_t``, becomes each other token with
``b̄_t`` and is masked with ``c̄_t``. Probabilities are carried as logs, impossible events at ``log(1e-30)``
as the scheduler does, so that KL divergences between them stay finite.
"""

import math

import torch
import torch.nn.functional as F
from diffusers import VQDiffusionScheduler

__all__ = ["posterior_log_probs", "prior_kl", "q_sample", "true_posterior_kl"]

# The scheduler's log 0 (index_to_log_onehot clamps probabilities at 1e-30).
LOG_ZERO = math.log(1e-30)


def _num_tokens(scheduler: VQDiffusionScheduler) -> int:
    return scheduler.config.num_vec_classes - 1


def _check_tokens(x: torch.Tensor, name: str) -> None:
    if x.ndim != 2 or x.dtype.is_floating_point:
        raise ValueError(f"{name} must be an integer tensor of shape (B, N), got {x.dtype} {tuple(x.shape)}")


def _check_timesteps(t: torch.Tensor, batch: int, scheduler: VQDiffusionScheduler, first: int = 0) -> None:
    """Out-of-range t must fail loudly: a negative index would silently read the schedule from its end."""
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},), one timestep per example, got {tuple(t.shape)}")
    last = scheduler.config.num_train_timesteps - 1
    if batch and (int(t.min()) < first or int(t.max()) > last):
        raise ValueError(f"t must lie in [{first}, {last}], got values in [{int(t.min())}, {int(t.max())}]")


def _log_abc(scheduler: VQDiffusionScheduler, t: torch.Tensor, cumulative: bool) -> tuple[torch.Tensor, ...]:
    """The schedule's (log a, log b, log c) at each example's t, shaped (B, 1, 1) to broadcast over (K, N)."""
    names = ("log_cumprod_at", "log_cumprod_bt", "log_cumprod_ct") if cumulative else ("log_at", "log_bt", "log_ct")
    return tuple(getattr(scheduler, name).to(t.device)[t].view(-1, 1, 1) for name in names)


def _apply_cumulative(log_p: torch.Tensor, t: torch.Tensor, scheduler: VQDiffusionScheduler) -> torch.Tensor:
    """Push normalised log-probs over the K tokens through q(x_t | x_0).

    ``scheduler.apply_cumulative_transitions`` with a timestep per example.
    """
    log_a, log_b, log_c = _log_abc(scheduler, t, cumulative=True)
    real = (log_p + log_a).logaddexp(log_b)
    return torch.cat([real, log_c.expand(-1, 1, log_p.shape[-1])], dim=1)


def q_sample(
    x_0: torch.LongTensor,
    t: torch.LongTensor,
    scheduler: VQDiffusionScheduler,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Draw x_t ~ q(x_t | x_0), each example at its own t.

    One uniform number per token picks keep (ā_t), a uniformly drawn token (K·b̄_t, x_0 itself among them, so
    x_0 survives with ā_t + b̄_t) or [MASK] (c̄_t): exact, and it never builds the (B, K + 1, N) table that
    Gumbel-max sampling from the (B, K + 1, N) table of q(x_t | x_0) would need for a large codebook.
    """
    _check_tokens(x_0, "x_0")
    _check_timesteps(t, x_0.shape[0], scheduler)
    num_tokens = _num_tokens(scheduler)
    log_a, _, log_c = _log_abc(scheduler, t, cumulative=True)
    keep, mask = log_a.exp().view(-1, 1), log_c.exp().view(-1, 1)
    u = torch.rand(x_0.shape, generator=generator, device=x_0.device)
    replacement = torch.randint(num_tokens, x_0.shape, generator=generator, device=x_0.device)
    x_t = torch.where(u < keep, x_0, replacement)
    return torch.where(u >= 1 - mask, num_tokens, x_t)


def posterior_log_probs(
    log_x0: torch.Tensor, x_t: torch.LongTensor, t: torch.LongTensor, scheduler: VQDiffusionScheduler
) -> torch.Tensor:
    """log q(x_{t-1} | x_t, x_0) averaged over x_0 ~ exp(log_x0), shape (B, K + 1, N); valid for t >= 1.

    With the model's log p(x_0 | x_t) this is the model's p(x_{t-1} | x_t); with a log one-hot x_0 it is the
    true posterior. It is ``scheduler.q_posterior`` with a timestep per example:
    ``q(x_t | x_{t-1}) · Σ_{x_0} q(x_{t-1} | x_0) p(x_0) / q(x_t | x_0)``, the weights normalised before the
    transition (and the normaliser added back) as the scheduler does, for range. ``log_x0`` must be normalised
    over its K classes (e.g. a log_softmax); entries may be -inf.
    """
    _check_tokens(x_t, "x_t")
    num_tokens = _num_tokens(scheduler)
    batch, length = x_t.shape
    if log_x0.shape != (batch, num_tokens, length):
        raise ValueError(
            f"log_x0 must have shape (B, K, N) = ({batch}, {num_tokens}, {length}), got {tuple(log_x0.shape)}"
        )
    _check_timesteps(t, batch, scheduler, first=1)

    is_mask = (x_t == num_tokens).unsqueeze(1)
    is_token = F.one_hot(x_t, num_tokens + 1).permute(0, 2, 1)[:, :num_tokens].bool()
    # Column x_t of the cumulative matrix: log q(x_t | x_0 = i) for each token i.
    log_a, log_b, log_c = _log_abc(scheduler, t, cumulative=True)
    log_q_xt_x0 = torch.where(is_mask, log_c, torch.where(is_token, log_a.logaddexp(log_b), log_b))
    # Column x_t of the one-step matrix: log q(x_t | x_{t-1} = j) for each class j, [MASK] (which stays) last.
    log_a, log_b, log_c = _log_abc(scheduler, t, cumulative=False)
    from_token = torch.where(is_mask, log_c, torch.where(is_token, log_a.logaddexp(log_b), log_b))
    from_mask = torch.where(is_mask, 0.0, LOG_ZERO)
    log_q_step = torch.cat([from_token, from_mask], dim=1)

    log_weights = log_x0 - log_q_xt_x0
    log_norm = log_weights.logsumexp(dim=1, keepdim=True)
    return _apply_cumulative(log_weights - log_norm, t - 1, scheduler) + log_q_step + log_norm


def _schedule(scheduler: VQDiffusionScheduler, t: torch.Tensor, cumulative: bool) -> tuple[torch.Tensor, ...]:
    """The schedule's (a, b, c) at each example's t as float64 probabilities, shaped (B, 1)."""
    return tuple(log.double().exp().view(-1, 1) for log in _log_abc(scheduler, t, cumulative))


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    return torch.where(p > 0, p * p.clamp_min(1e-300).log(), 0.0)


def true_posterior_kl(
    log_p: torch.Tensor, x_0: torch.LongTensor, x_t: torch.LongTensor, t: torch.LongTensor, scheduler
) -> torch.Tensor:
    """KL(q(x_{t-1} | x_t, x_0) ‖ p) per example, averaged over the N tokens; ``log_p`` (B, K + 1, N) are
    normalised log-probs over the classes of x_{t-1} (e.g. :func:`posterior_log_probs` of a model); t >= 1.

    The true posterior takes at most four values per token (at x_0, at x_t, at [MASK] and at every other token),
    so the KL needs ``log_p`` only at those classes and its sum over the tokens: one pass over ``log_p``, where
    tabulating the posterior over all K + 1 classes costs tens of passes (seconds a batch for K = 4096).
    """
    _check_tokens(x_t, "x_t")
    num_tokens = _num_tokens(scheduler)
    _check_timesteps(t, x_t.shape[0], scheduler, first=1)
    a1, b1, c1 = _schedule(scheduler, t - 1, cumulative=True)  # q(x_{t-1} | x_0)
    step_a, step_b, step_c = _schedule(scheduler, t, cumulative=False)  # q(x_t | x_{t-1})
    a, b, c = _schedule(scheduler, t, cumulative=True)  # q(x_t | x_0)
    # Bayes' rule q(x_t | x_{t-1}) q(x_{t-1} | x_0) / q(x_t | x_0) in the three cases of x_t (the test file
    # tabulates the same from the paper's formulas).
    masked, kept = x_t == num_tokens, x_t == x_0
    replaced = ~masked & ~kept
    at_x0 = torch.where(
        masked,
        step_c * (a1 + b1) / c,
        torch.where(kept, (step_a + step_b) * (a1 + b1) / (a + b), step_b * (a1 + b1) / b),
    )
    other = torch.where(masked, step_c * b1 / c, torch.where(kept, step_b * b1 / (a + b), step_b * b1 / b))
    at_xt = torch.where(replaced, (step_a + step_b) * b1 / b, 0.0)  # x_t's own token, when it is not x_0
    at_mask = torch.where(masked, c1 / c, 0.0)
    others = num_tokens - 1 - replaced.double()

    log_p = log_p.float()
    log_p_x0 = log_p.gather(1, x_0.unsqueeze(1)).squeeze(1).double()
    log_p_xt = log_p.gather(1, x_t.unsqueeze(1)).squeeze(1).double()
    log_p_mask = log_p[:, num_tokens].double()
    log_p_others = log_p[:, :num_tokens].sum(dim=1, dtype=torch.float64) - log_p_x0 - replaced * log_p_xt
    cross = other * log_p_others + at_x0 * log_p_x0 + at_xt * log_p_xt + at_mask * log_p_mask
    neg_entropy = others * _xlogx(other) + _xlogx(at_x0) + _xlogx(at_xt) + _xlogx(at_mask)
    return (neg_entropy - cross).mean(dim=-1).to(log_p.dtype)


def prior_kl(scheduler: VQDiffusionScheduler) -> torch.Tensor:
    """L_T = KL(q(x_{T-1} | x_0) ‖ p(x_T)) with the prior the forward marginal at T - 1 of a uniform x_0 (ā/K + b̄
    per token, c̄ for [MASK]): by symmetry the same for every x_0, so one number of the schedule."""
    last = torch.tensor([scheduler.config.num_train_timesteps - 1])
    a, b, _ = (value.squeeze() for value in _schedule(scheduler, last, cumulative=True))
    num_tokens = _num_tokens(scheduler)
    prior = a / num_tokens + b
    return (
        (a + b) * ((a + b) / prior).log() + (num_tokens - 1) * _xlogx(b) - (num_tokens - 1) * b * prior.log()
    ).float()
