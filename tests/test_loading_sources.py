"""One entry point for every model source: save_pretrained folders, Hub ids, the authors' .pth without config.

Offline and tiny: the authors' files are written from a small random model in their trainer's layout
(``module.`` keys, the epoch / optimizer / scheduler wrapper, tensors tagged ``cuda:0``); the Hub is a
local cache laid out as huggingface_hub lays it out, with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoint_files import SENTENCES, authors_file, cheap_state_dict, logits, official_sam_shapes
from ditsam.api import Segmenter
from ditsam.cli.main import main
from ditsam.model.checkpoints import CheckpointError
from ditsam.model.checkpoints.shapes import reference_config_from_state_dict
from ditsam.model.config import BACKBONES, reference_config
from ditsam.model.dit import DITSam
from ditsam.model.text import TextConfig
from helpers import COMMIT_MAIN, COMMIT_V1, REPO, publish


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def rgb(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------
# The authors' checkpoint with no config
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("injection", "extra_decoder_layers"), [("layerwise", 2), ("e2e", 0)], ids=["ldit-dec4", "edit"]
)
def test_authors_checkpoint_loads_without_config(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, injection: str, extra_decoder_layers: int
) -> None:
    path = tmp_path / "seg_best.pth"
    source = authors_file(
        tiny_bert_dir, path, monkeypatch, injection=injection, extra_decoder_layers=extra_decoder_layers
    )
    if not torch.cuda.is_available():  # the file really is GPU-tagged: a plain torch.load would fail here
        with pytest.raises(RuntimeError, match="(?i)cuda"):
            torch.load(path, weights_only=True)

    loaded = DITSam.from_pretrained(
        path, injection=None if injection == "layerwise" else injection, text_name_or_path=str(tiny_bert_dir)
    )

    assert not loaded.training
    config = loaded.config
    assert (config.injection, config.extra_decoder_layers) == (injection, extra_decoder_layers)
    assert config.size[:3] == source.config.size[:3] and config.mlp_ratio == 4.0
    assert (config.text.hidden_layer, config.mask_text_padding, config.attention) == (1, False, "global")
    assert config.injection_options.refine_text_per_layer == source.config.injection_options.refine_text_per_layer
    assert torch.equal(logits(loaded), logits(source))
    if injection == "e2e":  # same key names: without injection="e2e" it loads as L-DIT and computes something else
        as_ldit = DITSam.from_pretrained(path, text_name_or_path=str(tiny_bert_dir))
        assert as_ldit.config.injection == "layerwise"
        assert not torch.allclose(logits(as_ldit), logits(source))
    else:
        segmenter = Segmenter.from_pretrained(path, text_name_or_path=str(tiny_bert_dir), device="cpu")
        image = rgb(40, 30)
        np.testing.assert_allclose(
            segmenter.predict(image, SENTENCES[0]).logits,
            Segmenter(source, device="cpu").predict(image, SENTENCES[0]).logits,
            atol=1e-6,
        )


def authors_shapes_on_meta(name: str, *, decoder_layers: int = 2) -> dict[str, torch.Tensor]:
    """Every key of a released L-DIT file of size ``name`` (authors' names, module. prefix) as meta tensors."""
    size = BACKBONES[name]
    shapes = official_sam_shapes(
        width=size.embed_dim, depth=size.depth, heads=size.num_heads, global_blocks=size.global_attn_indexes
    )
    for layer in range(2, decoder_layers):
        shapes.update(
            {
                key.replace("layers.0.", f"layers.{layer}."): shape
                for key, shape in shapes.items()
                if key.startswith("mask_decoder.transformer.layers.0.")
            }
        )
    shapes = {key.replace("image_encoder.", "visual_encoder.", 1): shape for key, shape in shapes.items()}
    width, bert = size.embed_dim, 768
    if name == "vit_h":  # image_encoder_layer_wise_vith.py: one shared 768 -> width, then width -> width
        shapes["visual_encoder.prob_text.weight"], shapes["visual_encoder.prob_text.bias"] = (width, bert), (width,)
    for i in range(size.depth):
        shapes[f"visual_encoder.probs.{i}.weight"] = (width, width if name == "vit_h" else bert)
        shapes[f"visual_encoder.probs.{i}.bias"] = (width,)
    shapes.update(
        {
            "text_proj.weight": (256, bert),
            "text_proj.bias": (256,),
            "lang_encoder.bert.embeddings.word_embeddings.weight": (30522, bert),
            "lang_encoder.bert.encoder.layer.0.attention.self.query.weight": (bert, bert),
        }
    )
    return {f"module.{key}": torch.empty(shape, device="meta") for key, shape in shapes.items()}


@pytest.mark.parametrize(("name", "decoder_layers"), [("vit_b", 2), ("vit_l", 4), ("vit_h", 2)])
def test_size_detection_from_official_shapes(name: str, decoder_layers: int) -> None:
    state = authors_shapes_on_meta(name, decoder_layers=decoder_layers)
    config = reference_config_from_state_dict(state, source=f"{name}.pth")
    assert config.backbone == name and config.size == BACKBONES[name]
    assert config.extra_decoder_layers == decoder_layers - 2
    assert (config.injection, config.image_size, config.patch_size, config.mlp_ratio) == ("layerwise", 512, 16, 4.0)
    assert (config.prompt_embed_dim, config.decoder_mlp_dim, config.decoder_num_heads) == (256, 2048, 8)
    assert (config.text.name_or_path, config.text.hidden_layer, config.text.max_tokens) == ("bert-base-uncased", 1, 20)
    assert not config.mask_text_padding and config.attention == "global"
    if name == "vit_b":
        edit = reference_config_from_state_dict(state, injection="e2e")
        assert edit.injection == "e2e" and edit.injection_options.refine_text_per_layer is True
        with pytest.raises(CheckpointError, match=r"vit_b\.pth has text projections.*injection='none'"):
            reference_config_from_state_dict(state, injection="none", source="vit_b.pth")
        del state["module.visual_encoder.patch_embed.proj.weight"]
        with pytest.raises(CheckpointError, match=r"visual_encoder\.patch_embed\.proj\.weight is missing"):
            reference_config_from_state_dict(state)


def test_official_sam_checkpoint_is_refused(tmp_path: Path) -> None:
    size = BACKBONES["vit_b"]
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(
        cheap_state_dict(
            official_sam_shapes(
                width=size.embed_dim, depth=size.depth, heads=size.num_heads, global_blocks=size.global_attn_indexes
            )
        ),
        path,
    )
    for load in (DITSam.from_pretrained, Segmenter.from_pretrained):
        with pytest.raises(CheckpointError, match="holds no text model") as error:
            load(path)
        assert f"train.init_checkpoint={path}" in str(error.value)


# ---------------------------------------------------------------------------------------------------
# Hub ids
# ---------------------------------------------------------------------------------------------------
def test_hub_id_resolves_from_the_cache(
    hub_cache: Path, checkpoint: Path, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(hub_cache, REPO, {".": checkpoint}, commit=COMMIT_MAIN, ref="main")
    pth = tmp_path / "ldit_refcoco.pth"
    source = authors_file(tiny_bert_dir, pth, monkeypatch)
    publish(
        hub_cache,
        REPO,
        {"weights/ldit_refcoco.pth": pth, "README.md": checkpoint / "config.json"},
        commit=COMMIT_V1,
        ref="v1",
    )

    from_hub = DITSam.from_pretrained(REPO)
    expected = DITSam.from_pretrained(checkpoint).state_dict()
    assert from_hub.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in from_hub.state_dict().items())
    assert f"models--{REPO.replace('/', '--')}" in from_hub.config.text.name_or_path  # BERT config from the snapshot
    assert Segmenter.from_pretrained(REPO, revision=COMMIT_MAIN, device="cpu").image_size == 64

    # A revision whose snapshot holds one authors' file, and that file named inside the repo.
    for name in (REPO, f"{REPO}/weights/ldit_refcoco.pth"):
        loaded = DITSam.from_pretrained(name, revision="v1", text_name_or_path=str(tiny_bert_dir))
        assert torch.equal(logits(loaded), logits(source))


def test_missing_hub_id_gives_a_clear_error(hub_cache: Path, checkpoint: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'ditsam-test/missing'.*not in the Hub cache.*HF_HUB_OFFLINE=1"):
        DITSam.from_pretrained("ditsam-test/missing")
    publish(hub_cache, REPO, {".": checkpoint}, commit=COMMIT_MAIN, ref="main")
    with pytest.raises(FileNotFoundError, match=rf"'{REPO}' at revision 'v9'"):
        Segmenter.from_pretrained(REPO, revision="v9")
    with pytest.raises(FileNotFoundError, match="no ditsam checkpoint folder or file"):
        DITSam.from_pretrained("./ditsam-test/missing")
    with pytest.raises(ValueError, match="only applies to a Hugging Face Hub id"):
        DITSam.from_pretrained(checkpoint, revision="v1")
    with pytest.raises(ValueError, match="injection= only apply to a checkpoint file"):
        DITSam.from_pretrained(checkpoint, injection="e2e")


# ---------------------------------------------------------------------------------------------------
# Commands, config merging, download default
# ---------------------------------------------------------------------------------------------------
def test_predict_and_eval_commands_take_an_authors_file(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    path = tmp_path / "seg_best.pth"
    authors_file(tiny_bert_dir, path, monkeypatch)
    image = tmp_path / "photo.png"
    Image.fromarray(rgb(24, 32)).save(image)
    out = tmp_path / "predict"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(path),
            "--text-model",
            str(tiny_bert_dir),
            "--image",
            str(image),
            "--text",
            SENTENCES[1],
            "--out",
            str(out),
            "--no-overlays",
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and (out / "predictions.json").is_file()
    assert main(["eval", str(path), "--text-model", str(tiny_bert_dir), "--device", "cpu"]) == 2
    assert "pass --data EXPERIMENT" in capsys.readouterr().err


def test_reference_config_merges_nested_overrides() -> None:
    merged = reference_config(text={"name_or_path": "my-bert"}, injection="e2e")
    assert (merged.text.name_or_path, merged.text.hidden_layer, merged.text.max_tokens) == ("my-bert", 1, 20)
    assert merged.injection_options.refine_text_per_layer is True and not merged.mask_text_padding
    replaced = reference_config(text=TextConfig(name_or_path="other", hidden_layer=-1))
    assert (replaced.text.name_or_path, replaced.text.hidden_layer) == ("other", -1)


def test_text_models_may_download_by_default() -> None:
    assert TextConfig().local_files_only is False
