"""``ditsam convert`` of an official SAM checkpoint plus a BERT: an untrained starting point for training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from checkpoint_files import cheap_state_dict, official_sam_shapes
from ditsam.cli.main import main
from ditsam.model.checkpoints.shapes import sam_start_config
from ditsam.model.config import BACKBONES
from ditsam.model.dit import DITSam
from ditsam.model.sam.position import resize_absolute_position_embedding

TINY = dict(width=32, depth=2, heads=2, global_blocks=(1,))
RANDOM = ("pos_embed", "rel_pos_h", "qkv.weight", "lin1.weight", "iou_token.weight", "neck.0.weight")


def tiny_sam_file(path: Path) -> dict[str, torch.Tensor]:
    """A SAM-shaped checkpoint with a tiny ViT (width 32, 2 blocks, 2 heads) and SAM's 256-wide decoder."""
    state = cheap_state_dict(official_sam_shapes(**TINY), random_keys=RANDOM)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_convert_sam_without_text_model_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sam_tiny.pth"
    tiny_sam_file(path)
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "holds no text model" in error and "--text-model" in error
    assert not (tmp_path / "out").exists()


def test_convert_sam_by_name_without_text_model_fails_before_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("DITSAM_SAM_BASE_URL", "http://127.0.0.1:9/")  # nothing listens there
    assert main(["convert", "sam_vit_b", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "--text-model" in error and "cannot download" not in error
    assert not (tmp_path / "torch_home").exists()


def test_convert_sam_plus_bert_writes_an_untrained_start(
    tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    from transformers import BertModel

    bert = shutil.copytree(tiny_bert_dir, tmp_path / "bert_copy")  # removed before loading DST
    bert_state = BertModel.from_pretrained(str(bert), add_pooling_layer=False).state_dict()
    path = tmp_path / "sam_tiny.pth"
    sam = tiny_sam_file(path)
    destination = tmp_path / "start"

    assert main(["convert", str(path), str(destination), "--text-model", str(bert)]) == 0
    printed = capsys.readouterr().out
    assert f"sam checkpoint {path}" in printed
    assert "resized: image_encoder.pos_embed" in printed
    assert "fresh: " in printed and "image_encoder.injection" in printed and "text_proj" in printed
    assert "UNTRAINED" in printed and f"train.init_checkpoint={destination}" in printed
    card = (destination / "README.md").read_text(encoding="utf-8")
    assert "Untrained starting point" in card and f"train.init_checkpoint={destination}" in card
    assert "sam_tiny.pth" in card

    shutil.rmtree(bert)
    request.getfixturevalue("no_network")
    model = DITSam.from_pretrained(destination)
    config = model.config
    assert (config.backbone, config.embed_dim, config.depth, config.num_heads) == ("custom", 32, 2, 2)
    assert config.injection == "layerwise" and config.image_size == 512 and config.text.hidden_layer == 1
    state = model.state_dict()
    # SAM's tensors, strictly (position embedding resized from SAM's 1024 px grid to 512 px).
    for key in (
        "image_encoder.blocks.1.attn.qkv.weight",
        "image_encoder.neck.0.weight",
        "mask_decoder.iou_token.weight",
        "mask_decoder.transformer.layers.1.mlp.lin2.bias",
        "prompt_encoder.point_embeddings.3.weight",
    ):
        assert torch.equal(state[key], sam[key]), key
    expected_pos = resize_absolute_position_embedding(sam["image_encoder.pos_embed"], (32, 32))
    assert torch.allclose(state["image_encoder.pos_embed"], expected_pos)
    # BERT from the text model, every tensor.
    for key, value in bert_state.items():
        assert torch.equal(state[f"text_encoder.bert.{key}"], value), key
    # L-DIT projections fresh: zero-initialised, so the start computes SAM's image embedding.
    writers = [k for k in state if k.startswith("image_encoder.injection.writers.")]
    assert writers and all(not state[k].any() for k in writers)

    with torch.no_grad():
        output = model(torch.zeros(1, 3, 512, 512), ["a red circle"])
    assert output.logits.shape == (1, 1, 512, 512)

    # train.init_checkpoint=DST: the Trainer builds the model from its config, then loads the folder strictly.
    from ditsam.model.checkpoints import load_checkpoint

    start = DITSam(config, load_text_weights=False)
    report = load_checkpoint(start, destination)
    assert not report.fresh and not report.kept
    assert all(torch.equal(value, state[key]) for key, value in start.state_dict().items())


def test_convert_sam_by_name_from_the_cache_with_e2e(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_sam_file(tmp_path / "torch_home" / "hub" / "checkpoints" / "sam_vit_b_01ec64.pth")  # already cached
    destination = tmp_path / "start"
    assert (
        main(["convert", "sam_vit_b", str(destination), "--text-model", str(tiny_bert_dir), "--injection", "e2e"]) == 0
    )
    config = DITSam.from_pretrained(destination).config
    assert config.injection == "e2e" and config.injection_options.refine_text_per_layer is True
    assert "sam_vit_b" in (destination / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_sam_start_config_detects_the_vit_size(name: str) -> None:
    size = BACKBONES[name]
    shapes = official_sam_shapes(
        width=size.embed_dim, depth=size.depth, heads=size.num_heads, global_blocks=size.global_attn_indexes
    )
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    config = sam_start_config(state, text_name_or_path="bert-base-uncased", source=name)
    assert config.backbone == name and config.injection == "layerwise" and config.image_size == 512
    assert config.extra_decoder_layers == 0 and config.text.name_or_path == "bert-base-uncased"
    assert config.mask_text_padding is False and config.text.hidden_layer == 1
