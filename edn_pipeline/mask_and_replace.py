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
from diffusers.schedulers.scheduling_vq_diffusion import index_to_log_onehot

__all__ = ["posterior_log_probs", "q_sample", "q_xt_given_x0_log_probs"]

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


def q_xt_given_x0_log_probs(
    x_0: torch.LongTensor, t: torch.LongTensor, scheduler: VQDiffusionScheduler
) -> torch.Tensor:
    """log q(x_t | x_0) over all K + 1 classes, shape (B, K + 1, N), each example at its own t."""
    _check_tokens(x_0, "x_0")
    _check_timesteps(t, x_0.shape[0], scheduler)
    return _apply_cumulative(index_to_log_onehot(x_0, _num_tokens(scheduler)), t, scheduler)


def q_sample(
    x_0: torch.LongTensor,
    t: torch.LongTensor,
    scheduler: VQDiffusionScheduler,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Draw x_t ~ q(x_t | x_0), each example at its own t.

    One uniform number per token picks keep (ā_t), a uniformly drawn token (K·b̄_t, x_0 itself among them, so
    x_0 survives with ā_t + b̄_t) or [MASK] (c̄_t): exact, and it never builds the (B, K + 1, N) table that
    Gumbel-max sampling from :func:`q_xt_given_x0_log_probs` would need for a large codebook.
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
