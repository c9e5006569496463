"""Checkpoint loading: official SAM files, the reference DIT layout, our save_pretrained folders.

Nothing is downloaded: SAM-shaped state dicts are written from an independent table of the official
key names and shapes (constant tensors are zero-stride views, so a ViT-B file takes a few MB), BERT is
the tiny random one of :func:`build_tiny_bert`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from checkpoint_files import (
    cheap_state_dict,
    official_sam_shapes,
    randomise,
    reference_checkpoint,
    reference_pos_embed,
    reference_rel_pos,
)
from ditsam.config import ConfigError
from ditsam.model.checkpoints import CheckpointError, LoadReport, load_checkpoint
from ditsam.model.checkpoints.formats import detect_format
from ditsam.model.checkpoints.keys import SAM_PREFIXES
from ditsam.model.checkpoints.reference import (
    convert_reference_state_dict,
    load_reference_checkpoint,
    to_reference_state_dict,
)
from ditsam.model.checkpoints.sam import load_sam_checkpoint, load_sam_state_dict
from ditsam.model.config import DITSamConfig, reference_config
from ditsam.model.dit import DITSam
from ditsam.model.text import build_tiny_bert

WORDS = ["red", "cat", "the", "big", "dog", "on", "left", "man", "in", "blue"]
SENTENCES = ["the red cat", "big dog on the left"]
TINY_SIZE = 64  # 4x4 patch grid


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert"), words=WORDS)


def tiny_config(bert_dir: Path, **overrides: object) -> DITSamConfig:
    """reference_config-like settings on a tiny custom ViT whose width equals the tiny BERT's (64)."""
    settings: dict[str, object] = dict(
        backbone="custom",
        embed_dim=64,
        depth=3,
        num_heads=2,
        global_attn_indexes=[1],
        image_size=TINY_SIZE,
        window_size=2,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        text={"name_or_path": str(bert_dir), "hidden_layer": 1, "max_tokens": 8},
    )
    settings.update(overrides)
    return reference_config(**settings)


def inputs(model: DITSam, seed: int = 0) -> tuple[torch.Tensor, object]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(len(SENTENCES), 3, TINY_SIZE, TINY_SIZE, generator=generator)
    return images, model.tokenize(SENTENCES)


@torch.no_grad()
def text_logits(model: DITSam) -> torch.Tensor:
    images, text = inputs(model)
    return model(images, text).logits


@torch.no_grad()
def prompt_logits(model: DITSam) -> torch.Tensor:
    """Points + box prompts, no text: only SAM's own weights matter."""
    images, _ = inputs(model)
    coords = torch.tensor([[[10.0, 20.0], [40.0, 30.0]], [[5.0, 5.0], [60.0, 50.0]]])
    labels = torch.tensor([[1, 0], [1, 1]])
    boxes = torch.tensor([[4.0, 4.0, 50.0, 40.0], [10.0, 12.0, 30.0, 60.0]])
    return model(images, points=(coords, labels), boxes=boxes).logits


# ---------------------------------------------------------------------------------------------------
# Official SAM
# ---------------------------------------------------------------------------------------------------
VIT_B_GLOBAL = (2, 5, 8, 11)


@pytest.fixture(scope="module")
def vit_b_model(bert_dir: Path) -> DITSam:
    return DITSam(
        reference_config(backbone="vit_b", image_size=512, text={"name_or_path": str(bert_dir), "hidden_layer": 1})
    )


def test_official_vit_b_checkpoint_loads_into_global_512_model(vit_b_model: DITSam, tmp_path: Path) -> None:
    shapes = official_sam_shapes(width=768, depth=12, heads=12, global_blocks=VIT_B_GLOBAL)
    assert len(shapes) == 314  # keys of sam_vit_b_01ec64.pth
    state = cheap_state_dict(shapes, random_keys=("pos_embed", "rel_pos_h", "rel_pos_w"))
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    assert path.stat().st_size < 40e6  # zero-stride tensors stay small on disk

    report = load_sam_checkpoint(vit_b_model, path)

    model_keys = vit_b_model.state_dict()
    assert set(report.loaded) == set(shapes)
    expected_resized = {("image_encoder.pos_embed", (1, 64, 64, 768), (1, 32, 32, 768))}
    for i in range(12):
        rows = 127 if i in VIT_B_GLOBAL else 27
        for axis in "hw":
            expected_resized.add((f"image_encoder.blocks.{i}.attn.rel_pos_{axis}", (rows, 64), (63, 64)))
    assert set(report.resized) == expected_resized
    dit_keys = {k for k in model_keys if k.startswith(("image_encoder.injection.writers.", "text_proj."))}
    assert set(report.fresh) == dit_keys and len(dit_keys) == 2 * 12 + 2
    assert set(report.kept) == {k for k in model_keys if k.startswith("text_encoder.")}
    assert report.ignored == []

    encoder = vit_b_model.image_encoder
    assert torch.equal(encoder.pos_embed.detach(), reference_pos_embed(state["image_encoder.pos_embed"], 32))
    for i in (0, 2):
        table = state[f"image_encoder.blocks.{i}.attn.rel_pos_h"]
        assert torch.equal(encoder.blocks[i].attn.rel_pos_h.detach(), reference_rel_pos(table, 63))
    assert torch.equal(vit_b_model.mask_decoder.iou_token.weight.detach(), state["mask_decoder.iou_token.weight"])
    assert torch.equal(encoder.blocks[7].mlp.lin2.weight.detach(), state["image_encoder.blocks.7.mlp.lin2.weight"])
    summary = str(report)
    assert "image_encoder.pos_embed (1, 64, 64, 768) -> (1, 32, 32, 768)" in summary
    assert "fresh: text_proj.* (2 tensors)" in summary
    assert "fresh: image_encoder.injection.writers.{0-11}.* (24 tensors)" in summary


def test_vit_l_checkpoint_into_vit_b_model_names_key_shapes_and_backbone(vit_b_model: DITSam, tmp_path: Path) -> None:
    shapes = official_sam_shapes(width=1024, depth=24, heads=16, global_blocks=(5, 11, 17, 23))
    path = tmp_path / "sam_vit_l_0b3195.pth"
    torch.save(cheap_state_dict(shapes), path)
    before = vit_b_model.image_encoder.blocks[0].norm1.weight.detach().clone()
    with pytest.raises(CheckpointError) as error:
        load_sam_checkpoint(vit_b_model, path)
    message = str(error.value)
    assert "image_encoder.patch_embed.proj.weight" in message or "image_encoder.blocks.0.norm1.weight" in message
    assert "(1024," in message and "(768," in message
    assert "vit_l" in message and "vit_b" in message
    assert str(path) in message
    assert torch.equal(vit_b_model.image_encoder.blocks[0].norm1.weight.detach(), before)  # nothing written


def sam_part(model: DITSam) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.startswith(SAM_PREFIXES) and not k.startswith("image_encoder.injection.")
    }


@pytest.mark.parametrize("attention", ["global", "windowed"])
def test_sam_pth_round_trip_gives_identical_outputs(bert_dir: Path, tmp_path: Path, attention: str) -> None:
    config = tiny_config(bert_dir, attention=attention)
    source = randomise(DITSam(config), seed=1)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam_part(source), path)
    target = randomise(DITSam(config), seed=2)
    assert not torch.equal(prompt_logits(source), prompt_logits(target))

    report = load_sam_checkpoint(target, path)

    assert report.resized == [] and report.kind == "sam"
    assert torch.equal(prompt_logits(source), prompt_logits(target))
    # The same file through the dispatcher.
    assert load_checkpoint(randomise(DITSam(config), seed=3), path).kind == "sam"


def test_sam_checkpoint_extra_decoder_layers_are_fresh(bert_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam_part(randomise(DITSam(tiny_config(bert_dir)), seed=1)), path)
    target = DITSam(tiny_config(bert_dir, extra_decoder_layers=2))
    report = load_sam_checkpoint(target, path)
    fresh_layers = {k.split(".")[3] for k in report.fresh if k.startswith("mask_decoder.transformer.layers.")}
    assert fresh_layers == {"2", "3"}
    assert "mask_decoder.transformer.layers.{2-3}.* (72 tensors)" in str(report)


def test_sam_checkpoint_missing_and_unexpected_keys(bert_dir: Path) -> None:
    config = tiny_config(bert_dir)
    state = sam_part(DITSam(config))
    missing = dict(state)
    del missing["mask_decoder.iou_token.weight"]
    with pytest.raises(CheckpointError, match=r"lacks 1 key.*mask_decoder\.iou_token\.weight"):
        load_sam_state_dict(DITSam(config), missing)
    extra = dict(state, **{"image_encoder.bogus.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"image_encoder\.bogus\.weight"):
        load_sam_state_dict(DITSam(config), extra)
    deeper = dict(state, **{"mask_decoder.transformer.layers.2.norm1.weight": torch.zeros(32)})
    with pytest.raises(CheckpointError, match="extra_decoder_layers: 1"):
        load_sam_state_dict(DITSam(config), deeper)


def test_sam_state_dict_missing_rel_pos_tables_are_zeroed(bert_dir: Path) -> None:
    config = tiny_config(bert_dir)
    state = {k: v for k, v in sam_part(randomise(DITSam(config), seed=1)).items() if "rel_pos" not in k}
    target = randomise(DITSam(config), seed=2)
    report = load_sam_state_dict(target, state)
    assert all(torch.count_nonzero(block.attn.rel_pos_h) == 0 for block in target.image_encoder.blocks)
    assert sum("rel_pos" in key for key in report.fresh) == 2 * config.size.depth
    assert any("zeroed" in note for note in report.notes)


# ---------------------------------------------------------------------------------------------------
# Unreadable and hostile files
# ---------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this would create a file: weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused(vit_b_model: DITSam, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "x": _Payload(marker)}, zipped)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    for path in (zipped, raw):
        with pytest.raises(CheckpointError, match=str(path)) as error:
            load_sam_checkpoint(vit_b_model, path)
        assert "refused" in str(error.value) or "not a readable torch checkpoint" in str(error.value)
    assert "refused" in str(pytest.raises(CheckpointError, load_checkpoint, vit_b_model, zipped).value)
    assert not marker.exists()


def test_broken_files_give_clear_errors(vit_b_model: DITSam, tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save({"mask_decoder.iou_token.weight": torch.randn(1000)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    random_bytes = tmp_path / "random.pth"
    random_bytes.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).to(torch.uint8).numpy().tobytes()
    )
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path in (truncated, random_bytes, empty):
        with pytest.raises(CheckpointError, match="not a readable torch checkpoint") as error:
            load_sam_checkpoint(vit_b_model, path)
        assert str(path) in str(error.value)

    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], a_list)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_sam_checkpoint(vit_b_model, a_list)
    mixed = tmp_path / "mixed.pth"
    torch.save({"mask_decoder.iou_token.weight": torch.zeros(1, 256), "epoch": 3}, mixed)
    with pytest.raises(CheckpointError, match="not a dict of tensors: entry 'epoch' is a int"):
        load_sam_checkpoint(vit_b_model, mixed)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, wrapped)
    with pytest.raises(CheckpointError, match="without a state dict"):
        load_sam_checkpoint(vit_b_model, wrapped)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sam_checkpoint(vit_b_model, tmp_path / "missing.pth")
    with pytest.raises(IsADirectoryError):
        load_sam_checkpoint(vit_b_model, tmp_path)


def test_wrapped_state_dicts_are_unwrapped_preferring_ema(bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(bert_dir)
    ema, raw = randomise(DITSam(config), seed=1), randomise(DITSam(config), seed=2)
    path = tmp_path / "wrapped.pth"
    torch.save(
        {"model": {f"module.{k}": v for k, v in sam_part(raw).items()}, "ema_state_dict": sam_part(ema), "step": 7},
        path,
    )
    target = DITSam(config)
    load_sam_checkpoint(target, path)
    assert torch.equal(prompt_logits(target), prompt_logits(ema))


# ---------------------------------------------------------------------------------------------------
# Reference DIT checkpoints
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{"injection": "layerwise"}, {"injection": "e2e", "injection_options": {"refine_text_per_layer": True}}],
    ids=["layerwise", "e2e"],
)
def test_reference_checkpoint_reproduces_logits(bert_dir: Path, tmp_path: Path, overrides: dict[str, object]) -> None:
    config = tiny_config(bert_dir, **overrides)
    source = randomise(DITSam(config), seed=1)
    checkpoint, equivalent = reference_checkpoint(source)
    assert any(k.endswith("LayerNorm.gamma") for k in checkpoint["state_dict"])  # old BERT names exercised
    path = tmp_path / "seg_best.pth"
    torch.save(checkpoint, path)
    source.load_state_dict(equivalent, strict=False)  # what the reference interpolates at run time
    target = randomise(DITSam(config), seed=2)

    report = load_reference_checkpoint(target, path)

    assert torch.equal(text_logits(target), text_logits(source))
    assert report.fresh == [] and report.kept == []
    assert {key for key, _, _ in report.resized} == set(equivalent)
    assert set(report.ignored) == {
        "query_embeddings",
        "self_attention.in_proj_weight",
        "self_attention.in_proj_bias",
        "self_attention.out_proj.weight",
        "self_attention.out_proj.bias",
        "lang_encoder.bert.pooler.dense.weight",
        "lang_encoder.bert.pooler.dense.bias",
    }
    assert not any("attention" in note or "PAD" in note or "hidden_layer" in note for note in report.notes)
    # The dispatcher recognises the layout; convert_reference_state_dict alone loads strictly.
    assert load_checkpoint(randomise(DITSam(config), seed=3), path).kind == "reference DIT"
    strict = randomise(DITSam(config), seed=4)
    strict.load_state_dict(convert_reference_state_dict(checkpoint["state_dict"], config), strict=True)
    assert torch.equal(text_logits(strict), text_logits(source))


def test_reference_e2e_checkpoint_needs_per_layer_refresh(bert_dir: Path) -> None:
    source = randomise(
        DITSam(tiny_config(bert_dir, injection="e2e", injection_options=dict(refine_text_per_layer=True))), seed=1
    )
    state = to_reference_state_dict(source.state_dict(), source.config)
    plain = DITSam(tiny_config(bert_dir, injection="e2e", injection_options=dict(refine_text_per_layer=False)))
    with pytest.raises(CheckpointError, match="refine_text_per_layer: true"):
        load_checkpoint_state(plain, state)


def load_checkpoint_state(model: DITSam, state: dict[str, torch.Tensor]) -> LoadReport:
    from ditsam.model.checkpoints.reference import load_reference_state_dict

    return load_reference_state_dict(model, state)


def test_reference_vit_h_prob_text_is_folded(bert_dir: Path) -> None:
    """ViT-H layout: prob_text (768 -> width) then probs.i (width -> width); here 64 -> 32 -> 32."""
    config = tiny_config(bert_dir, embed_dim=32)
    source = randomise(DITSam(config), seed=1)
    generator = torch.Generator().manual_seed(3)
    state = {}
    for key, value in source.state_dict().items():
        if key.startswith("image_encoder.injection.writers."):
            continue
        state[key] = value
    state = to_reference_state_dict(state, config)
    prob_text = (torch.randn(32, 64, generator=generator) * 0.1, torch.randn(32, generator=generator))
    probs = [(torch.randn(32, 32, generator=generator) * 0.1, torch.randn(32, generator=generator)) for _ in range(3)]
    state["module.visual_encoder.prob_text.weight"], state["module.visual_encoder.prob_text.bias"] = prob_text
    for i, (weight, bias) in enumerate(probs):
        state[f"module.visual_encoder.probs.{i}.weight"], state[f"module.visual_encoder.probs.{i}.bias"] = weight, bias
    target = DITSam(config).eval()
    report = load_checkpoint_state(target, state)
    assert any("prob_text" in note for note in report.notes)
    features = torch.randn(2, 5, 64, generator=generator)
    for i, (weight, bias) in enumerate(probs):
        expected = F.linear(F.linear(features, *prob_text), weight, bias)
        got = target.image_encoder.injection.writers[i].proj(features)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_reference_unsupported_variants_and_unknown_keys(bert_dir: Path) -> None:
    config = tiny_config(bert_dir)
    state = to_reference_state_dict(randomise(DITSam(config), seed=1).state_dict(), config)
    with pytest.raises(CheckpointError, match=r"visual_encoder\.tokens.*not implement"):
        load_checkpoint_state(DITSam(config), dict(state, **{"module.visual_encoder.tokens": torch.zeros(3, 20, 64)}))
    with pytest.raises(CheckpointError, match=r"visual_encoder\.cross\.0\.linear_q\.weight.*cross-attention"):
        load_checkpoint_state(
            DITSam(config), dict(state, **{"module.visual_encoder.cross.0.linear_q.weight": torch.zeros(2)})
        )
    with pytest.raises(CheckpointError, match=r"unknown key 'mystery'"):
        load_checkpoint_state(DITSam(config), dict(state, mystery=torch.zeros(1)))
    with pytest.raises(CheckpointError, match="injection: none"):
        load_checkpoint_state(DITSam(tiny_config(bert_dir, injection="none")), state)


def test_reference_checkpoint_notes_settings_that_differ(bert_dir: Path) -> None:
    config = tiny_config(bert_dir)
    state = to_reference_state_dict(randomise(DITSam(config), seed=1).state_dict(), config)
    other = DITSam(tiny_config(bert_dir, mask_text_padding=True, attention="windowed"))
    report = load_checkpoint_state(other, state)
    assert any("global attention" in note for note in report.notes)
    assert any("[PAD]" in note for note in report.notes)


def test_detect_format() -> None:
    zero = torch.zeros(1)
    assert detect_format({"module.visual_encoder.pos_embed": zero}) == "reference"
    assert detect_format({"image_encoder.pos_embed": zero}) == "sam"
    assert detect_format({"vision_encoder.pos_embed": zero}) == "sam"
    assert detect_format({"text_encoder.bert.x": zero, "image_encoder.pos_embed": zero}) == "ditsam"
    assert detect_format({"backbone.conv1.weight": zero}) is None


# ---------------------------------------------------------------------------------------------------
# Our folders
# ---------------------------------------------------------------------------------------------------
def test_save_pretrained_round_trip(bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(bert_dir, extra_decoder_layers=1, injection_options=dict(static_tokens=2))
    source = randomise(DITSam(config), seed=1)
    folder = source.save_pretrained(tmp_path / "ckpt")
    loaded = DITSam.from_pretrained(folder)

    assert not loaded.training
    assert torch.equal(text_logits(loaded), text_logits(source))
    assert loaded.config.text.name_or_path == str(folder / "text_encoder")
    saved, original = loaded.config.to_dict(), source.config.to_dict()
    saved["text"].pop("name_or_path"), original["text"].pop("name_or_path")
    assert saved == original

    # The dispatcher loads the folder into an existing model, strictly.
    target = randomise(DITSam(config), seed=2)
    report = load_checkpoint(target, folder)
    assert report.kind == "ditsam" and report.notes == []
    assert torch.equal(text_logits(target), text_logits(source))
    # A flat state dict of ours, with a DDP prefix.
    flat = tmp_path / "flat.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, flat)
    target = randomise(DITSam(config), seed=3)
    assert load_checkpoint(target, flat).kind == "ditsam"
    assert torch.equal(text_logits(target), text_logits(source))


def test_folder_errors(bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(bert_dir)
    folder = randomise(DITSam(config), seed=1).save_pretrained(tmp_path / "ckpt")

    with pytest.raises(FileNotFoundError, match="no ditsam checkpoint folder"):
        DITSam.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError):
        DITSam.from_pretrained(folder / "model.safetensors")

    payload = json.loads((folder / "config.json").read_text())
    payload["model"]["bogus_key"] = 1
    (folder / "config.json").write_text(json.dumps(payload))
    with pytest.raises(ConfigError, match=r"model\.bogus_key") as error:
        DITSam.from_pretrained(folder)
    assert "config.json" in str(error.value)
    del payload["model"]["bogus_key"]
    payload["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="format_version 99"):
        DITSam.from_pretrained(folder)
    payload["format_version"] = 1
    (folder / "config.json").write_text(json.dumps(payload))

    weights = folder / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupted"):
        DITSam.from_pretrained(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        DITSam.from_pretrained(folder)
    weights.write_bytes(intact)

    # Another variant of the same SAM is a training start (Table 1's extra decoder layers stay fresh) ...
    bigger = randomise(DITSam(tiny_config(bert_dir, extra_decoder_layers=1)), seed=1)
    report = load_checkpoint(bigger, folder)
    assert report.fresh and all(key.startswith("mask_decoder.transformer.layers.2.") for key in report.fresh)
    # ... another architecture is not.
    deeper = randomise(DITSam(tiny_config(bert_dir, depth=4)), seed=1)
    with pytest.raises(CheckpointError, match=r"lacks .*image_encoder\.blocks\.3"):
        load_checkpoint(deeper, folder)

    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="checkpoint folder without config") as error:
        DITSam.from_pretrained(folder)
    assert str(folder / "config.json") in str(error.value)


def test_transformers_sam_state_dict_is_renamed_and_loaded(bert_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from transformers import SamConfig, SamModel

    hf = SamModel(
        SamConfig(
            vision_config=dict(
                hidden_size=64,
                num_hidden_layers=3,
                num_attention_heads=2,
                image_size=TINY_SIZE,
                patch_size=16,
                window_size=2,
                global_attn_indexes=[1],
                output_channels=32,
                num_pos_feats=16,
            ),
            prompt_encoder_config=dict(hidden_size=32, image_size=TINY_SIZE, patch_size=16, mask_input_channels=16),
            mask_decoder_config=dict(
                hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=256
            ),
        )
    )
    path = tmp_path / "sam_hf.safetensors"
    save_file({k: v.clone().contiguous() for k, v in hf.state_dict().items()}, str(path))
    target = DITSam(tiny_config(bert_dir, attention="windowed"))
    report = load_checkpoint(target, path)
    assert report.kind == "sam" and report.resized == []
    assert set(report.loaded) == set(sam_part(target))
    assert torch.equal(target.image_encoder.pos_embed.detach(), hf.state_dict()["vision_encoder.pos_embed"])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, value: float
) -> None:
    """Loaded silently, such weights predicted empty masks for every input."""
    import shutil

    from safetensors.torch import load_file, save_file

    from ditsam.cli.main import main

    damaged = tmp_path / "damaged"
    shutil.copytree(checkpoint, damaged)
    weights = load_file(str(damaged / "model.safetensors"))
    key = next(k for k in sorted(weights) if k.startswith("mask_decoder.") and weights[k].is_floating_point())
    weights[key].view(-1)[:3] = value
    save_file(weights, str(damaged / "model.safetensors"))
    kind = "NaN" if value != value else "inf"  # the message counts "3 NaN" or "3 inf"
    with pytest.raises(CheckpointError, match=rf"tensor {re.escape(key)} .* 3 non-finite value\(s\).*refusing"):
        DITSam.from_pretrained(damaged)
    with pytest.raises(CheckpointError, match=re.escape(key)):
        load_checkpoint(DITSam.from_pretrained(checkpoint), damaged)  # train.init_checkpoint goes this way
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(damaged),
                "--image",
                str(tmp_path / "a.png"),
                "--text",
                "a",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"tensor {key}" in err and f"3 {kind}" in err, err
