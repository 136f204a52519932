"""The mask-and-replace forward process against VQ-Diffusion's closed-form schedule and diffusers' scheduler."""

import math

import pytest
import torch
from diffusers import VQDiffusionScheduler
from diffusers.schedulers.scheduling_vq_diffusion import index_to_log_onehot

from edn_pipeline.mask_and_replace import posterior_log_probs, prior_kl, q_sample, true_posterior_kl

K, T = 4, 10  # codebook tokens (class K is [MASK]) and training steps
A_START, A_END, C_START, C_END = 0.99999, 0.000009, 0.000009, 0.99999  # the scheduler's defaults


def scheduler() -> VQDiffusionScheduler:
    return VQDiffusionScheduler(num_vec_classes=K + 1, num_train_timesteps=T)


def cumulative(t: int) -> tuple[float, float, float]:
    """(ā_t, b̄_t, c̄_t) from VQ-Diffusion's linear schedule (paper §4.1), independently of the scheduler."""
    a = A_START + t / (T - 1) * (A_END - A_START)
    c = C_START + t / (T - 1) * (C_END - C_START)
    return a, (1 - a - c) / K, c


def one_step(t: int) -> tuple[float, float, float]:
    """(a_t, b_t, c_t) of the step t-1 -> t implied by the cumulative schedule."""
    (a_prev, _, c_prev), (a, _, c) = cumulative(t - 1), cumulative(t)
    a_t, c_t = a / a_prev, 1 - (1 - c) / (1 - c_prev)
    return a_t, (1 - a_t - c_t) / K, c_t


def test_q_sample_frequencies_match_the_schedule():
    n = 20_000
    steps = [2, 5, 8]
    x_0 = torch.tensor([[1], [3], [0]]).expand(-1, n)
    x_t = q_sample(x_0, torch.tensor(steps), scheduler(), generator=torch.Generator().manual_seed(0))
    for row, t in enumerate(steps):
        a, b, c = cumulative(t)
        for cls in range(K + 1):
            p = c if cls == K else a + b if cls == x_0[row, 0] else b
            freq = (x_t[row] == cls).float().mean().item()
            assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (t, cls, freq, p)


def test_q_sample_first_step_keeps_almost_everything_and_last_step_masks_almost_everything():
    x_0 = torch.randint(K, (2, 20_000), generator=torch.Generator().manual_seed(1))
    x_t = q_sample(x_0, torch.tensor([0, T - 1]), scheduler(), generator=torch.Generator().manual_seed(2))
    assert (x_t[0] != x_0[0]).float().mean() < 1e-3
    assert (x_t[1] == K).float().mean() > 0.999


def test_q_sample_is_reproducible_with_a_generator():
    x_0 = torch.randint(K, (3, 50), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 4, 7])
    first = q_sample(x_0, t, scheduler(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, q_sample(x_0, t, scheduler(), generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("t", range(1, T))
def test_posterior_equals_the_scheduler_for_a_scalar_t(t):
    gen = torch.Generator().manual_seed(t)
    x_0 = torch.randint(K, (3, 40), generator=gen)
    x_t = q_sample(x_0, torch.full((3,), t), scheduler(), generator=gen)
    log_x0 = torch.randn(3, K, 40, generator=gen).log_softmax(1)
    ours = posterior_log_probs(log_x0, x_t, torch.full((3,), t), scheduler())
    torch.testing.assert_close(ours, scheduler().q_posterior(log_x0, x_t, t), rtol=1e-5, atol=1e-5)


def test_posterior_with_a_timestep_per_example_matches_the_scheduler_row_by_row():
    gen = torch.Generator().manual_seed(0)
    steps = torch.tensor([1, 4, 9, 4])
    x_t = q_sample(torch.randint(K, (4, 30), generator=gen), steps, scheduler(), generator=gen)
    log_x0 = torch.randn(4, K, 30, generator=gen).log_softmax(1)
    ours = posterior_log_probs(log_x0, x_t, steps, scheduler())
    for row, t in enumerate(steps.tolist()):
        expected = scheduler().q_posterior(log_x0[row : row + 1], x_t[row : row + 1], t)
        torch.testing.assert_close(ours[row : row + 1], expected, rtol=1e-5, atol=1e-5)


def test_true_posterior_is_bayes_rule_normalised_and_excludes_the_impossible():
    t = 5
    x_0 = torch.tensor([[0, 0, 0]])
    x_t = torch.tensor([[K, 0, 2]])  # masked, kept, replaced
    probs = posterior_log_probs(index_to_log_onehot(x_0, K), x_t, torch.tensor([t]), scheduler()).exp()[0]
    torch.testing.assert_close(probs.sum(0), torch.ones(3))

    a1, b1, c1 = cumulative(t - 1)
    a, b, c = cumulative(t)
    step_a, step_b, step_c = one_step(t)
    # x_t = [MASK]: q(x_{t-1}=j | x_0) q(x_t=[MASK] | x_{t-1}=j) / q(x_t=[MASK] | x_0)
    masked = [(a1 + b1) * step_c / c] + [b1 * step_c / c] * (K - 1) + [c1 / c]
    # x_t = x_0 = 0: only a real x_{t-1} can lead there
    kept = [(a1 + b1) * (step_a + step_b) / (a + b)] + [b1 * step_b / (a + b)] * (K - 1) + [0.0]
    # x_t = 2 != x_0: reached from x_0 by a replacement, from 2 by keeping, from the others by a replacement
    replaced = [(a1 + b1) * step_b / b, b1 * step_b / b, b1 * (step_a + step_b) / b, b1 * step_b / b, 0.0]
    expected = torch.tensor([masked, kept, replaced]).T
    torch.testing.assert_close(probs, expected, rtol=1e-4, atol=1e-6)
    assert probs[K, 1] < 1e-20 and probs[K, 2] < 1e-20


def test_true_posterior_normalises_on_random_tokens():
    gen = torch.Generator().manual_seed(3)
    x_0 = torch.randint(K, (T - 1, 64), generator=gen)
    steps = torch.arange(1, T)
    x_t = q_sample(x_0, steps, scheduler(), generator=gen)
    log_probs = posterior_log_probs(index_to_log_onehot(x_0, K), x_t, steps, scheduler())
    torch.testing.assert_close(log_probs.logsumexp(1), torch.zeros(T - 1, 64), atol=1e-5, rtol=0)
    assert (log_probs[:, K].exp()[x_t != K] < 1e-20).all()


def test_posterior_is_differentiable():
    logits = torch.randn(2, K, 8, requires_grad=True)
    x_t = torch.tensor([[0, 1, 2, 3, K, K, 0, 1]] * 2)
    posterior_log_probs(logits.log_softmax(1), x_t, torch.tensor([2, 7]), scheduler())[:, 0].sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_bad_shapes_and_timesteps_raise_value_errors():
    x = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="log_x0"):
        posterior_log_probs(torch.zeros(2, K + 1, 8), x, torch.tensor([1, 1]), scheduler())
    with pytest.raises(ValueError, match=r"t must lie in \[1"):
        posterior_log_probs(torch.zeros(2, K, 8), x, torch.tensor([0, 1]), scheduler())
    with pytest.raises(ValueError, match="t must lie"):
        q_sample(x, torch.tensor([0, T]), scheduler())
    with pytest.raises(ValueError, match="t must have shape"):
        q_sample(x, torch.tensor(1), scheduler())
    with pytest.raises(ValueError, match="x_0 must be an integer"):
        q_sample(x.float(), torch.tensor([1, 1]), scheduler())


@pytest.mark.parametrize("tokens", [K, 64])
def test_closed_form_kl_equals_the_kl_of_the_tabulated_true_posterior(tokens):
    """true_posterior_kl against KL(table ‖ model) with the table from posterior_log_probs of a one-hot x_0."""
    vq = VQDiffusionScheduler(num_vec_classes=tokens + 1, num_train_timesteps=T)
    gen = torch.Generator().manual_seed(4)
    x_0 = torch.randint(tokens, (T - 1, 200), generator=gen)
    steps = torch.arange(1, T)
    x_t = q_sample(x_0, steps, vq, generator=gen)
    x_t[:, :3] = torch.stack([x_0[:, 0], (x_0[:, 1] + 1) % tokens, torch.full_like(x_0[:, 2], tokens)], dim=1)
    model = posterior_log_probs(torch.randn(T - 1, tokens, 200, generator=gen).log_softmax(1), x_t, steps, vq)
    true = posterior_log_probs(index_to_log_onehot(x_0, tokens), x_t, steps, vq)
    expected = (true.exp() * (true - model)).sum(dim=1).mean(dim=-1)
    torch.testing.assert_close(true_posterior_kl(model, x_0, x_t, steps, vq), expected, rtol=1e-4, atol=1e-5)
    assert true_posterior_kl(true, x_0, x_t, steps, vq).abs().max() < 1e-4  # zero against itself


def test_prior_kl_is_the_kl_of_the_last_marginal_to_the_uniform_prior():
    a, b, c = cumulative(T - 1)
    prior = [a / K + b] * K + [c]
    for x_0 in range(K):
        marginal = [a + b if cls == x_0 else b for cls in range(K)] + [c]
        expected = sum(q * math.log(q / p) for q, p in zip(marginal, prior))
        assert prior_kl(scheduler()).item() == pytest.approx(expected, rel=1e-5, abs=1e-9)
