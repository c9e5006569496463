"""DITSam behaviour for every variant: shapes, text sensitivity, gradients, padding, bad inputs."""

from __future__ import annotations

import logging
import typing

import pytest
import torch

from ditsam.model.config import ConfigError, DITSamConfig, Injection, reference_config
from ditsam.model.dit import DITSam
from ditsam.model.inject import INJECTIONS, build_injection
from ditsam.model.sam.text_hooks import TextInjection
from helpers import tiny_config

# Every registered injection, plus the settings that change a variant's shape.
VARIANTS = [dict(injection=name) for name in INJECTIONS] + [
    dict(injection="none", extra_decoder_layers=2),
    dict(injection="e2e", injection_options=dict(static_tokens=3)),
    dict(injection="layerwise", injection_options=dict(static_tokens=2)),
]
LAYOUTS = ["global", "windowed"]


def unzeroed(overrides: dict) -> dict:
    """``overrides`` with ``injection_options.zero_init`` False unless they set it."""
    return {**overrides, "injection_options": {"zero_init": False, **overrides.get("injection_options", {})}}


def make_model(bert_dir, **overrides) -> DITSam:
    # Non-zero initialisation, so that the text path matters from the first step.
    model = DITSam(tiny_config(bert_dir, **unzeroed(overrides)))
    for name, param in model.named_parameters():
        if "injection" in name and param.ndim >= 1 and param.abs().sum() == 0:
            torch.nn.init.normal_(param, std=0.05)
    return model.eval()


def variant_id(variant: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in variant.items())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_shapes_finite_and_text_matters(tiny_bert_dir, variant, layout):
    model = make_model(tiny_bert_dir, attention=layout, **variant)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images, text=["the red circle", "the blue square left of the star"])
        other = model(images, text=["the green triangle", "the blue square left of the star"])
    assert out.logits.shape == (2, 1, 64, 64)
    assert out.low_res_logits.shape == (2, 1, 16, 16)
    assert out.iou_predictions.shape == (2, 1)
    assert torch.isfinite(out.logits).all()
    assert (out.logits[0] - other.logits[0]).abs().max() > 1e-4, "changing the sentence must change the mask"
    torch.testing.assert_close(out.logits[1], other.logits[1])


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_padding_does_not_matter_when_masked(tiny_bert_dir, variant):
    short = make_model(tiny_bert_dir, **variant, text=dict(max_tokens=8))
    long = DITSam(tiny_config(tiny_bert_dir, **unzeroed(variant), text=dict(max_tokens=16))).eval()
    long.load_state_dict(short.state_dict())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = short(images, text=["the red circle"]).logits
        b = long(images, text=["the red circle"]).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_a_sentence_gives_the_same_mask_alone_or_padded_in_a_batch(tiny_bert_dir, variant):
    model = make_model(tiny_bert_dir, **variant, text=dict(max_tokens=16))
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        alone = model(image, text=["a star"]).logits
        batched = model(
            image.expand(2, -1, -1, -1), text=["a star", "the small red circle left of the blue square"]
        ).logits
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-5)


def test_reference_mode_attends_to_padding(tiny_bert_dir):
    short = make_model(tiny_bert_dir, mask_text_padding=False, text=dict(max_tokens=8))
    long = DITSam(
        tiny_config(
            tiny_bert_dir, injection_options=dict(zero_init=False), mask_text_padding=False, text=dict(max_tokens=16)
        )
    ).eval()
    long.load_state_dict(short.state_dict())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        difference = (
            (short(images, text="the red circle").logits - long(images, text="the red circle").logits).abs().max()
        )
    assert difference > 1e-4


def expected_trainable(model: DITSam, config: DITSamConfig) -> set[str]:
    names = set()
    for name, _ in model.named_parameters():
        if name.startswith("text_encoder."):
            if config.text.trainable:
                names.add(name)
        elif name.startswith("image_encoder.") and not name.startswith("image_encoder.injection."):
            if not config.freeze_image_encoder:
                names.add(name)
        else:
            names.add(name)
    return names


@pytest.mark.parametrize("freeze", [False, True], ids=["full", "frozen-vit"])
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_gradients_reach_exactly_the_trainable_parameters(tiny_bert_dir, variant, freeze):
    model = make_model(tiny_bert_dir, freeze_image_encoder=freeze, text=dict(trainable=not freeze), **variant).train()
    expected = expected_trainable(model, model.config)
    assert set(model.trainable_parameter_names()) == expected
    images = torch.randn(2, 3, 64, 64)
    points = (torch.tensor([[[10.0, 12.0]], [[40.0, 50.0]]]), torch.ones(2, 1))
    boxes = torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 5.0, 60.0, 40.0]])
    out = model(images, text=["the red circle", "a star"], points=points, boxes=boxes)
    (out.logits.mean() + out.iou_predictions.mean()).backward()
    received = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    unused_by_design = {
        n
        for n in expected
        # A single-mask forward with positive points and a box never uses mask tokens 1..3 and their
        # hypernetworks, the negative-point and not-a-point embeddings, or the mask-input branch.
        # (mask_tokens is one tensor: token 0 is used, so it does receive a gradient.)
        if any(f"output_hypernetworks_mlps.{i}." in n for i in (1, 2, 3))
        or n.startswith(("prompt_encoder.mask_downscaling.", "prompt_encoder.not_a_point_embed."))
        or n == "prompt_encoder.point_embeddings.0.weight"
    }
    assert received <= expected, f"frozen parameters got gradients: {sorted(received - expected)[:5]}"
    empty = {n for n, p in model.named_parameters() if p.numel() == 0}
    missing = expected - received - unused_by_design - empty
    assert not missing, f"trainable parameters without gradient: {sorted(missing)[:8]}"


def test_zero_initialised_layerwise_encoder_ignores_text_at_start(tiny_bert_dir):
    ldit = DITSam(tiny_config(tiny_bert_dir, injection="layerwise", injection_options=dict(zero_init=True))).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = ldit.text_encoder(*(lambda t: (t.input_ids, t.attention_mask))(ldit.tokenize("the red circle")))
        with_text = ldit.image_encoder(images, feats)
        # Zero projections write zero text tokens whatever the sentence (as in the reference code),
        # so only the decoder route carries text at the first step.
        again = ldit.image_encoder(images, torch.randn_like(feats))
    torch.testing.assert_close(with_text, again)


def test_multimask_output_and_points_only(tiny_bert_dir):
    model = make_model(tiny_bert_dir, multimask_output=True)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(images, points=(torch.tensor([[[20.0, 20.0]]]), torch.ones(1, 1)))
    assert out.logits.shape == (1, 3, 64, 64) and out.iou_predictions.shape == (1, 3)


def test_bf16_autocast_and_gradient_checkpointing(tiny_bert_dir):
    model = make_model(tiny_bert_dir, injection="layerwise")
    images = torch.randn(2, 3, 64, 64)
    text = ["the red circle", "a star"]
    with torch.no_grad():
        reference = model(images, text=text).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images, text=text).logits
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() < 0.1 * reference.abs().max() + 0.05

    checkpointed = make_model(
        tiny_bert_dir, injection="layerwise", gradient_checkpointing=True, injection_options=dict(dropout=0.0)
    )
    plain = make_model(tiny_bert_dir, injection="layerwise", injection_options=dict(dropout=0.0))
    plain.load_state_dict(checkpointed.state_dict())
    for m in (checkpointed, plain):
        m.train()
        m.text_encoder.eval()
        m(images, text=text).logits.sum().backward()
    name = "image_encoder.blocks.0.attn.qkv.weight"
    torch.testing.assert_close(
        dict(checkpointed.named_parameters())[name].grad, dict(plain.named_parameters())[name].grad
    )


def test_reference_preset():
    config = reference_config(injection="layerwise")
    assert config.attention == "global" and config.text.hidden_layer == 1
    assert config.mask_text_padding is False and config.multimask_output is False


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.randn(3, 64, 64), text=["a"]), "(B, 3, 64, 64)"),
        (lambda m: m(torch.randn(1, 1, 64, 64), text=["a"]), "(B, 3, 64, 64)"),
        (lambda m: m(torch.randn(1, 3, 32, 32), text=["a"]), "64x64"),
        (lambda m: m(torch.randn(1, 3, 64, 64), text=[""]), "empty"),
        (lambda m: m(torch.randn(1, 3, 64, 64), text=["   "]), "empty"),
        (lambda m: m(torch.randn(2, 3, 64, 64), text=["a"]), "1 sentences for 2 images"),
        (lambda m: m(torch.randn(1, 3, 64, 64)), "no prompt"),
        (lambda m: m(torch.randn(1, 3, 64, 64), points=(torch.tensor([[[70.0, 5.0]]]), torch.ones(1, 1))), "outside"),
        (lambda m: m(torch.randn(1, 3, 64, 64), boxes=torch.tensor([[30.0, 0.0, 10.0, 20.0]])), "x2 < x1"),
        (lambda m: m(torch.randn(1, 3, 64, 64), boxes=torch.tensor([30.0, 0.0, 40.0, 20.0])), "boxes must be"),
    ],
)
def test_bad_inputs(tiny_bert_dir, call, message):
    model = make_model(tiny_bert_dir)
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        call(model)


def test_long_text_is_truncated_with_one_warning(tiny_bert_dir, caplog):
    model = make_model(tiny_bert_dir, text=dict(max_tokens=6))
    with caplog.at_level(logging.WARNING):
        tokens = model.tokenize(["the small red circle left of the large blue square", "a star"])
    assert tokens.input_ids.shape == (2, 6)
    assert len([r for r in caplog.records if "truncated" in r.getMessage()]) == 1


def test_config_rejects_unknown_and_mistyped_keys(tiny_bert_dir):
    with pytest.raises(ConfigError, match="injektion"):
        DITSamConfig.from_dict({"injektion": "e2e"})
    with pytest.raises(ConfigError, match="text.max_tokenz"):
        DITSamConfig.from_dict({"text": {"max_tokenz": 3}})
    with pytest.raises(ConfigError, match="image_size"):
        DITSamConfig.from_dict({"image_size": "big"})
    with pytest.raises(ConfigError, match="injection"):
        DITSamConfig.from_dict({"injection": "sideways"})
    with pytest.raises(ConfigError, match="static_tokens"):
        DITSamConfig.from_dict({"injection": "crossattn", "injection_options": {"static_tokens": 2}})


def test_registry_names_every_configurable_injection(tiny_bert_dir):
    assert set(INJECTIONS) == set(typing.get_args(Injection))
    for name in INJECTIONS:
        module = build_injection(tiny_config(tiny_bert_dir, injection=name), text_dim=32)
        assert isinstance(module, TextInjection) and isinstance(module, torch.nn.Module)


def test_old_flat_injection_keys_still_load(caplog):
    old = {
        "injection": "e2e",
        "injection_dropout": 0.2,
        "injection_zero_init": False,
        "static_tokens": 2,
        "refine_text_per_layer": True,
    }
    with caplog.at_level(logging.INFO, logger="ditsam.model.config"):
        config = DITSamConfig.from_dict(old, prefix="model.")
    options = config.injection_options
    assert (options.dropout, options.zero_init, options.static_tokens, options.refine_text_per_layer) == (
        0.2,
        False,
        2,
        True,
    )
    assert sum("injection_options" in record.getMessage() for record in caplog.records) == 1
    assert DITSamConfig.from_dict(config.to_dict()) == config
