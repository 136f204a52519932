"""The decoder's VQ-Diffusion stage: quantiser, mask-and-replace refiner, config switches, pipeline arguments."""

import numpy as np
import pytest
import torch
from conftest import seeded

from edn_pipeline import EDNInputError, EDNPipeline, LuminanceDecoder
from edn_pipeline.testing_utils import TINY_VQ_OPTIONS, tiny_components


@pytest.fixture
def parts():
    return tiny_components(vq_decoder=True)


def inputs(batch=1, seed=0):
    generator = seeded(seed)
    latents = torch.randn(batch, 4, 8, 8, generator=generator) * 2
    gray = torch.rand(batch, 1, 16, 16, generator=generator) * 2 - 1
    text = torch.randn(batch, 16, 16, generator=generator)
    return latents, gray, text


TABLE_3_VARIANTS = {
    "KL-f8 decoder": dict(use_gray_encoder=False),
    "luminance-aware decoder": dict(),
    "VQ-Diffusion decoder": TINY_VQ_OPTIONS,
}


@pytest.mark.parametrize("variant", list(TABLE_3_VARIANTS))
def test_table_3_variants_are_configurations_of_one_class_that_save_and_load(parts, tmp_path, variant):
    decoder = LuminanceDecoder.from_vae(parts["vae"], **TABLE_3_VARIANTS[variant])
    assert (decoder.gray_encoder is not None) == (variant != "KL-f8 decoder")
    assert (decoder.quantizer is not None) == (variant == "VQ-Diffusion decoder")
    assert (decoder.refiner is not None) == (variant == "VQ-Diffusion decoder")
    decoder.save_pretrained(tmp_path)
    loaded = LuminanceDecoder.from_pretrained(tmp_path)
    for key in ("use_gray_encoder", "use_quantizer", "use_refiner", "codebook_size", "vq_num_train_timesteps"):
        assert loaded.config[key] == decoder.config[key]
    latents, gray, text = inputs()
    with torch.no_grad():
        a = decoder(latents, gray, text, generator=seeded(1)).sample
        b = loaded(latents, gray, text, generator=seeded(1)).sample
    assert torch.equal(a, b)


def test_with_quantizer_and_refiner_off_it_decodes_exactly_as_sd(parts):
    decoder = LuminanceDecoder.from_vae(parts["vae"], use_quantizer=False, use_refiner=False, codebook_size=64)
    assert decoder.config.codebook_size == 64
    latents, gray, _ = inputs()
    with torch.no_grad():
        assert torch.equal(decoder(latents, gray).sample, parts["vae"].decode(latents).sample)


def test_refiner_needs_quantizer_and_gray_encoder(parts):
    with pytest.raises(ValueError, match="use_refiner needs use_quantizer"):
        LuminanceDecoder.from_vae(parts["vae"], use_refiner=True)
    with pytest.raises(ValueError, match="use_refiner needs"):
        LuminanceDecoder.from_vae(parts["vae"], use_refiner=True, use_quantizer=True, use_gray_encoder=False)


def test_quantizer_picks_the_nearest_codebook_entry(parts):
    decoder = parts["decoder"]
    latents, _, _ = inputs(batch=2)
    codebook = decoder.quantizer.embedding.weight.detach()
    with torch.no_grad():
        out = decoder.quantize(latents)
    vectors = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    brute_force = ((vectors[:, None, :] - codebook[None]) ** 2).sum(-1).argmin(1).view(2, 8, 8)
    assert torch.equal(out.tokens, brute_force)
    assert torch.allclose(out.latents.permute(0, 2, 3, 1), codebook[brute_force], atol=1e-6)
    assert out.commitment_loss > 0


def test_vq_steps_zero_decodes_the_quantised_latent(parts):
    decoder = parts["decoder"]
    latents, gray, text = inputs()
    with torch.no_grad():
        quantized = decoder.quantize(latents).latents
        expected = decoder.decode_quantized(quantized, decoder.encode_gray(gray))
        got = decoder(latents, gray, text, vq_steps=0).sample
    assert torch.equal(got, expected)


def test_refinement_with_an_oracle_model_restores_the_tokens(parts, monkeypatch):
    decoder = parts["decoder"]
    latents, gray, text = inputs(batch=2)
    with torch.no_grad():
        tokens = decoder.quantize(latents).tokens

        def oracle(noised, timestep, gray_features, encoder_hidden_states, temperature=1.0):
            one_hot = torch.nn.functional.one_hot(tokens.flatten(1), decoder.config.codebook_size)
            return torch.log(one_hot.float().clamp_min(1e-30)).transpose(1, 2)

        monkeypatch.setattr(decoder, "token_log_probs", oracle)
        refined = decoder.refine(tokens, decoder.encode_gray(gray), text, steps=10, generator=seeded(0))
    assert torch.equal(refined, tokens)


def test_refinement_changes_tokens_deterministically_and_temperature_matters(parts):
    decoder = parts["decoder"]
    latents, gray, text = inputs()
    with torch.no_grad():
        tokens = decoder.quantize(latents).tokens
        features = decoder.encode_gray(gray)
        a = decoder.refine(tokens, features, text, steps=4, generator=seeded(3))
        b = decoder.refine(tokens, features, text, steps=4, generator=seeded(3))
        hot = decoder.refine(tokens, features, text, steps=4, temperature=5.0, generator=seeded(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, tokens)  # an untrained refiner does not return the input
    assert not torch.equal(a, hot)
    assert int(a.max()) < decoder.config.codebook_size  # never [MASK] after the last step


@pytest.mark.parametrize("rate, allowed", [(0.5, {7}), (0.85, {7, 9}), (1.0, None)])
def test_truncation_samples_only_the_likeliest_tokens(parts, monkeypatch, rate, allowed):
    """A refiner that says token 7 with p = 0.6, token 9 with 0.3 and the rest 0.1 spread evenly: truncated at 0.5
    only 7 can come out, at 0.85 only 7 or 9 (0.6 < 0.85 ≤ 0.9), untruncated the tail shows up too."""
    decoder = parts["decoder"]
    size = decoder.config.codebook_size
    probs = torch.full((size,), 0.1 / (size - 2))
    probs[7], probs[9] = 0.6, 0.3
    latents, gray, text = inputs()
    with torch.no_grad():
        tokens = decoder.quantize(latents).tokens

        def fixed(noised, timestep, gray_features, encoder_hidden_states, temperature=1.0):
            return probs.log()[None, :, None].expand(noised.shape[0], size, noised[0].numel())

        monkeypatch.setattr(decoder, "token_log_probs", fixed)
        drawn = torch.cat(
            [decoder.refine(tokens, None, text, steps=1, generator=seeded(i), truncation_rate=rate) for i in range(8)]
        )
    if allowed is None:
        assert not set(drawn.unique().tolist()) <= {7, 9}
    else:
        assert set(drawn.unique().tolist()) == allowed


def test_truncation_rate_default_comes_from_the_config(parts):
    decoder = LuminanceDecoder.from_vae(parts["vae"], **TINY_VQ_OPTIONS, vq_truncation_rate=1e-6)
    latents, gray, text = inputs()
    with torch.no_grad():
        default = decoder(latents, gray, text, vq_steps=2, generator=seeded(0)).sample
        greedy = decoder(latents, gray, text, vq_steps=2, generator=seeded(0), truncation_rate=1e-6).sample
        full = decoder(latents, gray, text, vq_steps=2, generator=seeded(0), truncation_rate=1.0).sample
    assert torch.equal(default, greedy) and not torch.equal(default, full)
    with pytest.raises(ValueError, match="vq_truncation_rate"):
        LuminanceDecoder.from_vae(parts["vae"], **TINY_VQ_OPTIONS, vq_truncation_rate=0.0)


def test_pipeline_exposes_vq_steps_and_temperature(photo):
    pipe = EDNPipeline(**tiny_components(vq_decoder=True))
    pipe.set_progress_bar_config(disable=True)

    def run(**kwargs):
        return pipe(photo, num_inference_steps=2, generator=seeded(0), output_type="np", **kwargs).images

    off, default, more = run(vq_steps=0), run(), run(vq_steps=8)
    assert not np.allclose(off, default) and not np.allclose(default, more)
    np.testing.assert_array_equal(default, run(vq_steps=4))  # the config's vq_inference_steps
    assert not np.allclose(default, run(temperature=3.0))
    assert not np.allclose(default, run(truncation_rate=1e-6))
    batch = pipe(
        [photo, photo[::-1].copy()], num_inference_steps=2, generator=[seeded(0), seeded(1)], output_type="np"
    ).images
    single = pipe(photo[::-1].copy(), num_inference_steps=2, generator=seeded(1), output_type="np").images
    np.testing.assert_allclose(batch[1], single[0], atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vq_steps=11), r"vq_steps must be an integer in \[0, 10\]"),
        (dict(vq_steps=-1), "vq_steps"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(truncation_rate=0.0), "truncation_rate"),
        (dict(truncation_rate=1.5), "truncation_rate"),
    ],
)
def test_bad_refinement_arguments(photo, kwargs, message):
    pipe = EDNPipeline(**tiny_components(vq_decoder=True))
    with pytest.raises(EDNInputError, match=message):
        pipe(photo, num_inference_steps=1, **kwargs)


def test_vq_steps_on_a_decoder_without_refiner_is_refused(pipe, photo):
    with pytest.raises(EDNInputError, match="no token refiner"):
        pipe(photo, num_inference_steps=1, vq_steps=3)
    assert pipe(photo, num_inference_steps=1, vq_steps=0).images


@pytest.mark.slow
def test_training_the_refiner_on_fixed_tokens_lowers_the_variational_bound(parts):
    """A few dozen Adam steps on one token grid: the Eq. 6 bound, on held-fixed draws of t and x_t, falls."""
    from edn_pipeline.mask_and_replace import q_sample
    from edn_pipeline.training.losses import vq_diffusion_loss

    torch.manual_seed(0)
    decoder = parts["decoder"]
    scheduler = decoder.vq_scheduler
    num_steps = decoder.config.vq_num_train_timesteps
    latents, gray, text = inputs(batch=2)
    with torch.no_grad():
        x_0 = decoder.quantize(latents).tokens.flatten(1).repeat(5, 1)  # 10 examples of 2 fixed grids
        features = [f.repeat(5, 1, 1, 1) for f in decoder.encode_gray(gray)]
    text = text.repeat(5, 1, 1)
    t = torch.arange(10) % num_steps
    x_t = q_sample(x_0, t, scheduler, generator=seeded(0))

    def bound():
        log_x0 = decoder.token_log_probs(x_t.view(10, 8, 8), t, features, text)
        return vq_diffusion_loss(log_x0, x_0, x_t, t, scheduler).vlb

    optimizer = torch.optim.Adam(decoder.refiner.parameters(), lr=1e-2)
    with torch.no_grad():
        start = bound().item()
    for _ in range(40):
        optimizer.zero_grad()
        loss = bound()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        end = bound().item()
    assert end < 0.5 * start, (start, end)
