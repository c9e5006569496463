"""The EfficientSAM family (backbone efficientsam_ti / efficientsam_s): config, official checkpoints loaded strictly
(every key consumed, none missing), the parts EfficientSAM shares with SAM against transformers' SamModel, its
point / box encoding and decoder switches, and every text injection on its ViT.

Parity with the official modules themselves (yformer/EfficientSAM, not installable here) is checked outside the
suite; see CHANGELOG.md for the numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import SamConfig, SamModel

from checkpoint_files import cheap_state_dict, official_sam_shapes
from ditsam.config import ConfigError
from ditsam.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ditsam.engine.config import load_experiment
from ditsam.model.checkpoints import CheckpointError, load_checkpoint, load_pretrained_with_report
from ditsam.model.checkpoints.efficientsam import efficientsam_weights_into
from ditsam.model.checkpoints.formats import Format, detect_format
from ditsam.model.checkpoints.hf_sam import hf_sam_to_official
from ditsam.model.config import BACKBONES, FAMILIES, DITSamConfig
from ditsam.model.dit import DITSam
from ditsam.model.efficientsam.prompt_encoder import MAX_POINTS, EfficientSamPromptEncoder
from ditsam.model.family import FAMILY_PARTS
from ditsam.model.inject import INJECTIONS
from ditsam.model.sam.transformer import TwoWayAttentionBlock
from efficientsam_files import (
    CLASS_TOKEN,
    PRETRAIN_GRID,
    official_efficientsam_shapes,
    random_state_dict,
    save_official,
)

# yformer/EfficientSAM's EfficientSam(pixel_mean=..., pixel_std=...) on [0, 1] images.
EFFICIENTSAM_PIXEL_MEAN = (0.485, 0.456, 0.406)
EFFICIENTSAM_PIXEL_STD = (0.229, 0.224, 0.225)
TINY_WIDTH, TINY_PROMPT, TINY_SIZE = 32, 32, 64
ATOL = 1e-4


def tiny(bert_dir: Path, **overrides: object) -> DITSamConfig:
    data: dict[str, object] = dict(
        backbone="custom",
        family="efficientsam",
        embed_dim=TINY_WIDTH,
        depth=2,
        num_heads=2,
        image_size=TINY_SIZE,
        prompt_embed_dim=TINY_PROMPT,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        injection="none",
        text=dict(name_or_path=str(bert_dir), max_tokens=10),
    )
    data.update(overrides)
    return DITSamConfig.from_dict(data)


def tiny_official(seed: int = 0) -> dict[str, torch.Tensor]:
    return random_state_dict(
        official_efficientsam_shapes(width=TINY_WIDTH, depth=2, prompt=TINY_PROMPT, decoder_mlp=64), seed=seed
    )


# -- config -------------------------------------------------------------------------------------------
def test_families_and_backbones() -> None:
    assert tuple(FAMILY_PARTS) == FAMILIES
    for name, width, heads in (("efficientsam_ti", 192, 3), ("efficientsam_s", 384, 6)):
        config = DITSamConfig(backbone=name)
        assert tuple(config.size) == (width, 12, heads, (), "efficientsam")
        assert config.model_family == "efficientsam" and config.rel_pos is False
    assert DITSamConfig().model_family == "sam" and DITSamConfig().rel_pos is True
    assert BACKBONES["vit_b"].family == "sam"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backbone": "efficientsam_ti", "attention": "windowed"}, "has no windowed blocks"),
        ({"backbone": "efficientsam_s", "use_rel_pos": True}, "has no relative-position tables"),
        ({"backbone": "efficientsam_ti", "family": "sam"}, "contradicts backbone 'efficientsam_ti'"),
        ({"backbone": "vit_b", "family": "efficientsam"}, "contradicts backbone 'vit_b'"),
        ({"family": "mobilesam"}, "family: 'mobilesam' matches none"),
    ],
)
def test_bad_family_settings_are_named(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DITSamConfig.from_dict(overrides)


@pytest.mark.parametrize("backbone", ["efficientsam_ti", "efficientsam_s"])
def test_refcoco_experiments(backbone: str) -> None:
    config = load_experiment(f"refcoco/ldit_{backbone}")
    assert (config.model.backbone, config.model.injection, config.train.init_checkpoint) == (
        backbone,
        "layerwise",
        backbone,
    )
    assert config.model.image_size == 512 and config.model.rel_pos is False


def test_input_normalisation_is_efficientsams() -> None:
    # The project's transforms normalise [0, 1] images with the constants EfficientSAM's preprocess uses.
    assert IMAGENET_MEAN == EFFICIENTSAM_PIXEL_MEAN and IMAGENET_STD == EFFICIENTSAM_PIXEL_STD


# -- official checkpoints ------------------------------------------------------------------------------
@pytest.mark.parametrize(("backbone", "width"), [("efficientsam_ti", 192), ("efficientsam_s", 384)])
def test_full_size_official_state_dict_loads_strictly(tiny_bert_dir: Path, backbone: str, width: int) -> None:
    shapes = official_efficientsam_shapes(width=width, depth=12)
    model = DITSam(DITSamConfig.from_dict({"backbone": backbone, "text": {"name_or_path": str(tiny_bert_dir)}}))
    report = efficientsam_weights_into(model, cheap_state_dict(shapes), source="official")
    assert len(report.loaded) == len(shapes)  # every official key consumed
    assert report.resized == [("image_encoder.pos_embed", (1, PRETRAIN_GRID, PRETRAIN_GRID, width), (1, 32, 32, width))]
    ours = {k for k in model.state_dict() if k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder."))}
    assert ours - set(report.loaded) == {k for k in ours if k.startswith("image_encoder.injection.")}
    assert set(report.fresh) == {
        k
        for k, v in model.state_dict().items()
        if k.startswith(("image_encoder.injection.", "text_proj.")) and v.numel()
    }
    assert report.kept and all(k.startswith("text_encoder.") for k in report.kept)


def test_official_file_loads_with_the_right_values(tiny_bert_dir: Path, tmp_path: Path) -> None:
    official = tiny_official()
    path = save_official(official, tmp_path / "efficient_sam_vitt.pt")
    model = DITSam(tiny(tiny_bert_dir))
    report = load_checkpoint(model, path)
    assert report.kind == "efficientsam" and len(report.loaded) == len(official)
    state = model.state_dict()
    assert torch.equal(state["image_encoder.blocks.1.mlp.lin2.bias"], official["image_encoder.blocks.1.mlp.fc2.bias"])
    for key, value in official.items():
        if key != "image_encoder.pos_embed" and ".mlp.fc" not in key:
            assert torch.equal(state[key], value), key
    # The class-token row dropped, the 14 x 14 grid resized as EfficientSAM's get_abs_pos does at run time.
    grid = official["image_encoder.pos_embed"][:, CLASS_TOKEN:].reshape(1, PRETRAIN_GRID, PRETRAIN_GRID, -1)
    expected = F.interpolate(grid.permute(0, 3, 1, 2), size=(4, 4), mode="bicubic", align_corners=False)
    assert torch.allclose(state["image_encoder.pos_embed"], expected.permute(0, 2, 3, 1), atol=1e-6)
    assert detect_format(official) is Format.EFFICIENTSAM
    assert detect_format(model.state_dict()) is Format.DITSAM


def test_missing_extra_and_misshapen_keys_are_named(tiny_bert_dir: Path) -> None:
    model = DITSam(tiny(tiny_bert_dir))
    missing = tiny_official()
    del missing["prompt_encoder.bbox_top_left_embeddings.weight"]
    with pytest.raises(CheckpointError, match="lacks 1 key.*bbox_top_left_embeddings"):
        efficientsam_weights_into(model, missing)
    extra = {**tiny_official(), "mask_decoder.something_new.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="does not have: mask_decoder.something_new.weight"):
        efficientsam_weights_into(model, extra)
    no_class_token = tiny_official()
    no_class_token["image_encoder.pos_embed"] = no_class_token["image_encoder.pos_embed"][:, 1:]
    with pytest.raises(CheckpointError, match=r"pos_embed has 196 positions.*class token \+ a square grid"):
        efficientsam_weights_into(model, no_class_token)


def test_families_refuse_each_others_checkpoints(tiny_bert_dir: Path, tmp_path: Path) -> None:
    sam_model = DITSam(DITSamConfig.from_dict({"text": {"name_or_path": str(tiny_bert_dir)}}))
    with pytest.raises(CheckpointError, match="EfficientSAM checkpoint, but the model is SAM.*efficientsam_ti"):
        load_checkpoint(sam_model, save_official(tiny_official(), tmp_path / "e.pt"))
    sam_file = tmp_path / "sam_vit_b.pth"
    torch.save({k: v.contiguous() for k, v in cheap_state_dict(official_sam_shapes(
        width=32, depth=2, heads=2, global_blocks=(1,))).items()}, sam_file)  # fmt: skip
    with pytest.raises(CheckpointError, match="SAM checkpoint, but the model is EfficientSAM.*vit_b"):
        load_checkpoint(DITSam(tiny(tiny_bert_dir)), sam_file)


def test_an_official_file_is_a_training_start_not_a_model(tiny_bert_dir: Path, tmp_path: Path) -> None:
    shapes = official_efficientsam_shapes(width=64, depth=2, prompt=TINY_PROMPT, decoder_mlp=64)
    path = save_official(random_state_dict(shapes), tmp_path / "efficient_sam_tiny.pt")
    with pytest.raises(CheckpointError, match="official EfficientSAM checkpoint.*holds no text model"):
        DITSam.from_pretrained(path)
    model, report = load_pretrained_with_report(DITSam, path, sam_start=True, text_name_or_path=str(tiny_bert_dir))
    config = model.config
    # A width EfficientSAM does not name: a custom ViT of its family, heads of 64; the reference's 512 px, L-DIT.
    assert (config.backbone, config.model_family, config.embed_dim, config.depth, config.num_heads) == (
        "custom",
        "efficientsam",
        64,
        2,
        1,
    )
    assert report.kind == "efficientsam" and len(report.loaded) == len(shapes)
    assert (config.injection, config.image_size, config.decoder_mlp_dim) == ("layerwise", 512, 64)


# -- what EfficientSAM shares with SAM: transformers' SamModel --------------------------------------------
@torch.no_grad()
def test_plain_vit_and_dense_pe_match_transformers(tiny_bert_dir: Path) -> None:
    hf = SamModel(
        SamConfig(
            vision_config=dict(
                hidden_size=TINY_WIDTH,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=TINY_SIZE,
                patch_size=16,
                use_rel_pos=False,
                window_size=0,
                global_attn_indexes=[0, 1],
                output_channels=TINY_PROMPT,
                num_pos_feats=TINY_PROMPT // 2,
            ),
            prompt_encoder_config=dict(hidden_size=TINY_PROMPT, image_size=TINY_SIZE, patch_size=16),
            mask_decoder_config=dict(hidden_size=TINY_PROMPT),
        )
    ).eval()
    generator = torch.Generator().manual_seed(0)
    for name, param in hf.named_parameters():
        scale = 1.0 if "positional_embedding" in name or "pos_embed" in name else 0.2
        param.copy_(
            (1.0 if "norm" in name and name.endswith("weight") else 0.0)
            + scale * torch.randn(param.shape, generator=generator)
        )
    official = hf_sam_to_official(hf.state_dict())
    model = DITSam(tiny(tiny_bert_dir)).eval()
    encoder = {k.removeprefix("image_encoder."): v for k, v in official.items() if k.startswith("image_encoder.")}
    model.image_encoder.load_state_dict(encoder, strict=False)  # the injection ("none") has no tensors
    assert set(encoder) == {k for k in model.image_encoder.state_dict() if not k.startswith("injection.")}
    images = torch.randn(2, 3, TINY_SIZE, TINY_SIZE, generator=generator)
    ours = model.image_encoder(images)
    assert ours.shape == (2, TINY_PROMPT, 4, 4)
    assert (ours - hf.vision_encoder(images).last_hidden_state).abs().max() <= ATOL
    gaussian = official["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.copy_(gaussian)
    assert (model.prompt_encoder.get_dense_pe() - hf.get_image_wide_positional_embeddings()).abs().max() <= ATOL


# -- EfficientSAM's own encoding and decoder switches -------------------------------------------------------
def _fourier(encoder: EfficientSamPromptEncoder, xy: torch.Tensor) -> torch.Tensor:
    """The random-Fourier code of pixel coordinates, written out: sin / cos of 2 pi (2 p - 1) G, p = (xy + 0.5) / size."""
    gaussian = encoder.pe_layer.positional_encoding_gaussian_matrix
    normalised = (xy + 0.5) / torch.tensor([encoder.input_image_size[1], encoder.input_image_size[0]])
    phase = 2 * math.pi * (2 * normalised - 1) @ gaussian
    return torch.cat([phase.sin(), phase.cos()], dim=-1)


@torch.no_grad()
def test_points_boxes_and_padding_are_encoded_as_efficientsam_does() -> None:
    torch.manual_seed(0)
    encoder = EfficientSamPromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 48))
    coords = torch.tensor([[[10.0, 20.0], [30.0, 5.0]]])
    labels = torch.tensor([[1, 0]])
    box = torch.tensor([[2.0, 3.0, 40.0, 50.0]])
    sparse, dense = encoder((coords, labels), box)
    assert sparse.shape == (1, MAX_POINTS, 16) and torch.equal(dense, torch.zeros(1, 16, 4, 4))
    expected = torch.cat(
        [
            _fourier(encoder, coords[0, :1]) + encoder.point_embeddings.weight,  # foreground
            _fourier(encoder, coords[0, 1:]),  # background: no kind embedding
            _fourier(encoder, box[0, :2][None]) + encoder.bbox_top_left_embeddings.weight,  # label 2
            _fourier(encoder, box[0, 2:][None]) + encoder.bbox_bottom_right_embeddings.weight,  # label 3
            # Padding: points at (-1, -1) keep their position code, plus invalid_points (SAM replaces it).
            (_fourier(encoder, torch.tensor([[-1.0, -1.0]])) + encoder.invalid_points.weight).expand(2, -1),
        ]
    )
    assert torch.allclose(sparse[0], expected, atol=1e-5)
    # A box is exactly the two labelled points 2 and 3.
    as_points = encoder((box.reshape(1, 2, 2), torch.tensor([[2, 3]])))[0]
    assert torch.equal(encoder(None, box)[0], as_points)
    text_only, _ = encoder(batch_size=3)
    assert text_only.shape == (3, 0, 16)


def test_prompt_encoder_refuses_what_efficientsam_cannot_take() -> None:
    encoder = EfficientSamPromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64))
    seven = (torch.zeros(1, 7, 2), torch.ones(1, 7))
    with pytest.raises(ValueError, match="at most 6 prompt points \\(a box counts 2\\); got 7"):
        encoder(seven)
    with pytest.raises(ValueError, match="at most 6 prompt points.*got 7"):
        encoder((torch.zeros(1, 5, 2), torch.ones(1, 5)), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="point label 5 is not an EfficientSAM label"):
        encoder((torch.zeros(1, 1, 2), torch.full((1, 1), 5)))
    with pytest.raises(ValueError, match="takes no mask prompt"):
        encoder(masks=torch.zeros(1, 1, 16, 16), batch_size=1)


@torch.no_grad()
def test_efficientsam_tokens_carry_their_positional_encoding() -> None:
    queries, pe = torch.randn(1, 3, 8), torch.randn(1, 3, 8)

    def self_attention(*, first: bool, carry: bool) -> torch.Tensor:
        block = TwoWayAttentionBlock(embedding_dim=8, num_heads=2, skip_first_layer_pe=first, tokens_carry_pe=carry)
        torch.nn.init.zeros_(block.self_attn.out_proj.weight)  # the attention itself adds nothing
        torch.nn.init.zeros_(block.self_attn.out_proj.bias)
        return block._token_self_attention(queries, pe, None)

    # EfficientSAM: the PE is added to the tokens after the first block, and every block is residual.
    assert torch.equal(self_attention(first=False, carry=True), queries + pe)
    assert torch.equal(self_attention(first=True, carry=True), queries)
    # SAM: the PE only enters queries and keys; the first block replaces the tokens.
    assert torch.equal(self_attention(first=False, carry=False), queries)
    assert torch.equal(self_attention(first=True, carry=False), torch.zeros_like(queries))


@torch.no_grad()
def test_decoder_heads_are_gelu_and_the_upscaling_groupnorm(tiny_bert_dir: Path) -> None:
    decoder = DITSam(tiny(tiny_bert_dir)).mask_decoder
    assert isinstance(decoder.final_output_upscaling_layers[0][1], torch.nn.GroupNorm)
    assert decoder.final_output_upscaling_layers[0][1].num_groups == 1
    for mlp in (decoder.iou_prediction_head, decoder.output_hypernetworks_mlps[0], decoder.transformer.layers[0].mlp):
        assert all(isinstance(layer[1], torch.nn.GELU) for layer in mlp.layers)
    image = torch.randn(1, TINY_PROMPT, 4, 4)
    assert decoder.upscale(image).shape == (1, 32, 16, 16)


# -- DIT on EfficientSAM ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("injection", "options"),
    [(name, {}) for name in INJECTIONS]
    + [("layerwise", {"static_tokens": 2}), ("e2e", {"refine_text_per_layer": True})],
)
def test_every_injection_runs_on_the_efficientsam_vit(tiny_bert_dir: Path, injection: str, options: dict) -> None:
    config = tiny(tiny_bert_dir, injection=injection, injection_options={"zero_init": False, **options})
    model = DITSam(config)
    model.load_state_dict({**model.state_dict(), **_ours(tiny_official())}, strict=False)
    with torch.no_grad():  # zero-initialised injection outputs (cross-attention) would hide the text
        for param in model.image_encoder.injection.parameters():
            param.normal_(0.0, 0.1)
    seen: list[int] = []
    model.image_encoder.blocks[0].register_forward_hook(lambda module, args, out: seen.append(args[1].shape[1]))
    images = torch.randn(2, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        red, blue = (model(images, [sentence] * 2) for sentence in ("the red circle", "a blue star"))
    assert red.logits.shape == (2, 1, TINY_SIZE, TINY_SIZE) and torch.isfinite(red.logits).all()
    tokens_enter_the_vit = injection in ("e2e", "layerwise")
    assert (seen[0] > 0) == tokens_enter_the_vit
    if injection != "none":  # the sentence reaches the image encoder
        with torch.no_grad():
            encoded = [model.image_encoder(images, *_features(model, text, 2)) for text in ("the red circle", "a star")]
        assert not torch.allclose(*encoded)
    assert not torch.allclose(red.logits, blue.logits)
    model.train()
    model(images, ["the red circle"] * 2, boxes=torch.tensor([[1.0, 2.0, 30.0, 40.0]] * 2)).logits.sum().backward()
    # The loss reaches the text injection and W_o through the EfficientSAM ViT and decoder.
    trainable = [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and param.numel() and name.startswith(("image_encoder.", "text_proj."))
    ]
    assert [name for name in trainable if model.get_parameter(name).grad is None] == []


def _ours(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from ditsam.model.checkpoints.efficientsam import efficientsam_to_ours

    state = efficientsam_to_ours(official)
    grid = state["image_encoder.pos_embed"].permute(0, 3, 1, 2)
    state["image_encoder.pos_embed"] = F.interpolate(grid, size=(4, 4), mode="bicubic").permute(0, 2, 3, 1)
    return state


def _features(model: DITSam, sentence: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = model.tokenize([sentence] * batch)
    return model.text_encoder(tokens.input_ids, tokens.attention_mask.bool()), tokens.attention_mask.bool()


def test_save_and_load_round_trip(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = DITSam(tiny(tiny_bert_dir, injection="layerwise", injection_options={"zero_init": False})).eval()
    model.load_state_dict({**model.state_dict(), **_ours(tiny_official())}, strict=False)
    model.save_pretrained(tmp_path / "saved")
    loaded = DITSam.from_pretrained(tmp_path / "saved")
    assert loaded.config.model_family == "efficientsam"
    images = torch.randn(1, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(images, ["the red circle"], points=(torch.tensor([[[5.0, 6.0]]]), torch.ones(1, 1)))
        got = loaded(images, ["the red circle"], points=(torch.tensor([[[5.0, 6.0]]]), torch.ones(1, 1)))
    assert torch.equal(expected.logits, got.logits)
    assert "EfficientSAM" in (tmp_path / "saved" / "README.md").read_text()
