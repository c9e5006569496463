"""The ViT attention's two forms of text padding ("folded" into the heads, "mask") against each other
and against an explicit softmax with the materialised relative-position bias."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ditsam.model.inject import LayerwiseInjection
from ditsam.model.sam.common import padding_to_additive_mask
from ditsam.model.sam.image_encoder import (
    Attention,
    ImageEncoderViT,
    set_text_padding,
)
from ditsam.model.sam.position import fold_last_column, relative_position_bias

TEXT_DIM = 24
TOLERANCE = 1e-5  # relative to the output's largest magnitude, fp32


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return module


def _encoder(window_size: int) -> ImageEncoderViT:
    injection = LayerwiseInjection(text_dim=TEXT_DIM, embed_dim=32, depth=2, zero_init=False, dropout=0.0)
    encoder = ImageEncoderViT(
        img_size=64,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        out_chans=16,
        window_size=window_size,
        global_attn_indexes=(1,) if window_size else (),
        injection=injection,
    )
    return _randomised(encoder, seed=0).eval()


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, 64, 64, generator=generator)
    features = torch.randn(3, 7, TEXT_DIM, generator=generator)
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[0, 4:] = False
    keep[1, 2:] = False  # row 2 has no padding
    return images, features, keep


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    if b.numel() == 0:  # e.g. the L-DIT's empty static-token table
        return 0.0
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("window_size", [0, 3], ids=["global", "windowed"])
def test_folded_padding_equals_mask_outputs_and_gradients(window_size: int) -> None:
    encoder = _encoder(window_size)
    images, features, keep = _inputs()
    results = {}
    for mode in ("mask", "folded"):
        set_text_padding(encoder, mode)
        encoder.zero_grad(set_to_none=True)
        out = encoder(images, features, keep)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        grads = {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}
        results[mode] = (out.detach(), grads)
    assert _relative(results["folded"][0], results["mask"][0]) <= TOLERANCE
    assert set(results["folded"][1]) == set(results["mask"][1])
    for name, grad in results["mask"][1].items():
        assert _relative(results["folded"][1][name], grad) <= TOLERANCE, name


@pytest.mark.parametrize("window_size", [0, 3], ids=["global", "windowed"])
def test_folded_padding_ignores_what_the_padding_holds(window_size: int) -> None:
    encoder = _encoder(window_size)
    images, features, keep = _inputs()
    changed = features.clone()
    changed[~keep] = 1e3
    with torch.no_grad():
        assert torch.equal(encoder(images, features, keep), encoder(images, changed, keep))


def test_attention_matches_explicit_softmax_with_materialised_bias() -> None:
    grid, num_text, heads, dim = (4, 5), 3, 2, 16
    attention = _randomised(Attention(dim=dim, num_heads=heads, rel_pos_grid=grid), seed=3).eval()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, num_text + grid[0] * grid[1], dim, generator=generator)
    keep = torch.tensor([[True, True, False], [True, True, True]])
    text_bias = padding_to_additive_mask(keep, torch.float32)

    batch, length = x.shape[:2]
    head_dim = dim // heads
    q, k, v = attention.qkv(x).reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    image_q = q[:, :, num_text:].reshape(batch * heads, -1, head_dim)
    bias = relative_position_bias(image_q, attention.rel_pos_h, attention.rel_pos_w, grid).reshape(
        batch, heads, length - num_text, -1
    )
    logits = q @ k.transpose(-1, -2) * head_dim**-0.5 + F.pad(bias, (num_text, 0, num_text, 0))
    logits = logits + F.pad(text_bias, (0, length - num_text))
    expected = attention.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, dim))

    for mode in ("folded", "mask"):
        attention.text_padding = mode
        got = attention(x, num_text=num_text, grid=grid, text_bias=text_bias)
        assert _relative(got, expected) <= TOLERANCE, mode


def test_fold_last_column_keeps_every_bias() -> None:
    height, width = 3, 4
    terms = torch.randn(5, height * width, height + width)
    folded = fold_last_column(terms, height)
    for ky in range(height):
        for kx in range(width):
            original = terms[..., ky] + terms[..., height + kx]
            reduced = folded[..., ky] + (folded[..., height + kx] if kx < width - 1 else 0)
            torch.testing.assert_close(reduced, original)


def test_bf16_autocast_with_padding_is_finite_and_close() -> None:
    encoder = _encoder(0)
    images, features, keep = _inputs()
    with torch.no_grad():
        reference = encoder(images, features, keep)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            folded = encoder(images, features, keep).float()
    assert torch.isfinite(folded).all()
    assert _relative(folded, reference) < 0.05


def test_unknown_text_padding_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="text_padding must be one of folded, mask, got 'flash'"):
        set_text_padding(_encoder(0), "flash")  # type: ignore[arg-type]
