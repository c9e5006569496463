"""Parity of our SAM modules with transformers' SamModel on a tiny random configuration.

The HF model's weights are randomised (HF initialises several tensors to zero, which would hide
mistakes), renamed with `hf_sam_to_official` and loaded strictly into our modules.
"""

from __future__ import annotations

import pytest
import torch
from transformers import SamConfig, SamModel

from ditsam.model.checkpoints.hf_sam import hf_sam_to_official
from ditsam.model.sam.image_encoder import ImageEncoderViT
from ditsam.model.sam.mask_decoder import MaskDecoder
from ditsam.model.sam.prompt_encoder import PromptEncoder
from ditsam.model.sam.transformer import TwoWayTransformer

IMAGE_SIZE = 128
PATCH = 16
GRID = IMAGE_SIZE // PATCH
WIDTH = 32  # decoder / prompt width = image encoder output channels
VIT_WIDTH = 32
VIT_DEPTH = 2
VIT_HEADS = 2
WINDOW = 3  # does not divide the 8x8 grid: exercises the window padding
GLOBAL_BLOCKS = (1,)
DECODER_HEADS = 2
DECODER_MLP = 64
IOU_HIDDEN = 16
MASK_IN_CHANS = 8
ATOL = 1e-4


def _randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Random values for every tensor, norm scales kept around 1 so activations stay moderate."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif "positional_embedding" in name:
                param.copy_(noise)
            else:
                param.copy_(0.2 * noise)


@pytest.fixture(scope="module")
def hf_model() -> SamModel:
    config = SamConfig(
        vision_config=dict(
            hidden_size=VIT_WIDTH,
            num_hidden_layers=VIT_DEPTH,
            num_attention_heads=VIT_HEADS,
            image_size=IMAGE_SIZE,
            patch_size=PATCH,
            window_size=WINDOW,
            global_attn_indexes=list(GLOBAL_BLOCKS),
            output_channels=WIDTH,
            num_pos_feats=WIDTH // 2,
        ),
        prompt_encoder_config=dict(
            hidden_size=WIDTH, image_size=IMAGE_SIZE, patch_size=PATCH, mask_input_channels=MASK_IN_CHANS
        ),
        mask_decoder_config=dict(
            hidden_size=WIDTH,
            mlp_dim=DECODER_MLP,
            num_hidden_layers=2,
            num_attention_heads=DECODER_HEADS,
            iou_head_hidden_dim=IOU_HIDDEN,
            # HF defaults the decoder block norms to 1e-6; SAM's nn.LayerNorm there uses 1e-5.
            layer_norm_eps=1e-5,
        ),
    )
    model = SamModel(config).eval()
    _randomise(model, torch.Generator().manual_seed(0))
    return model


@pytest.fixture(scope="module")
def official_state(hf_model: SamModel) -> dict[str, torch.Tensor]:
    return hf_sam_to_official(hf_model.state_dict())


def _sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) + 1 :]: value for key, value in state.items() if key.startswith(prefix + ".")}


@pytest.fixture(scope="module")
def prompt_encoder(official_state: dict[str, torch.Tensor]) -> PromptEncoder:
    module = PromptEncoder(
        embed_dim=WIDTH,
        image_embedding_size=(GRID, GRID),
        input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
        mask_in_chans=MASK_IN_CHANS,
    )
    module.load_state_dict(_sub_state(official_state, "prompt_encoder"), strict=True)
    return module.eval()


@pytest.fixture(scope="module")
def mask_decoder(official_state: dict[str, torch.Tensor]) -> MaskDecoder:
    transformer = TwoWayTransformer(depth=2, embedding_dim=WIDTH, num_heads=DECODER_HEADS, mlp_dim=DECODER_MLP)
    module = MaskDecoder(
        transformer_dim=WIDTH, transformer=transformer, num_multimask_outputs=3, iou_head_hidden_dim=IOU_HIDDEN
    )
    module.load_state_dict(_sub_state(official_state, "mask_decoder"), strict=True)
    return module.eval()


@pytest.fixture(scope="module")
def image_encoder(official_state: dict[str, torch.Tensor]) -> ImageEncoderViT:
    module = ImageEncoderViT(
        img_size=IMAGE_SIZE,
        patch_size=PATCH,
        in_chans=3,
        embed_dim=VIT_WIDTH,
        depth=VIT_DEPTH,
        num_heads=VIT_HEADS,
        mlp_ratio=4.0,
        out_chans=WIDTH,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=WINDOW,
        global_attn_indexes=GLOBAL_BLOCKS,
    )
    module.load_state_dict(_sub_state(official_state, "image_encoder"), strict=True)
    return module.eval()


def _points(batch: int, num: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.rand(batch, num, 2, generator=generator) * IMAGE_SIZE
    labels = torch.randint(0, 2, (batch, num), generator=generator)
    labels[0, -1] = -1  # a padding point among the real ones
    return coords, labels


def _boxes(batch: int, generator: torch.Generator) -> torch.Tensor:
    corners = torch.rand(batch, 2, 2, generator=generator) * IMAGE_SIZE
    return torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=-1)


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= ATOL


def test_mapping_names_every_official_key(
    official_state: dict[str, torch.Tensor], prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder
) -> None:
    ours = {f"prompt_encoder.{k}": v.shape for k, v in prompt_encoder.state_dict().items()}
    ours |= {f"mask_decoder.{k}": v.shape for k, v in mask_decoder.state_dict().items()}
    mapped = {k: v.shape for k, v in official_state.items() if not k.startswith("image_encoder.")}
    assert mapped == ours


def test_mapping_rejects_unknown_keys(hf_model: SamModel) -> None:
    state = dict(hf_model.state_dict())
    state["mask_decoder.something_new.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="something_new"):
        hf_sam_to_official(state)


@torch.no_grad()
def test_dense_positional_encoding(hf_model: SamModel, prompt_encoder: PromptEncoder) -> None:
    _assert_close(prompt_encoder.get_dense_pe(), hf_model.get_image_wide_positional_embeddings())


@torch.no_grad()
def test_prompt_encoder_points(hf_model: SamModel, prompt_encoder: PromptEncoder) -> None:
    coords, labels = _points(2, 3, torch.Generator().manual_seed(1))
    sparse, dense = prompt_encoder((coords, labels), None, None)
    hf_sparse, hf_dense = hf_model.prompt_encoder(coords[:, None], labels[:, None], None, None)
    assert sparse.shape == (2, 4, WIDTH)  # three points + SAM's trailing padding point
    _assert_close(sparse, hf_sparse[:, 0])
    _assert_close(dense, hf_dense)


@torch.no_grad()
def test_prompt_encoder_boxes(hf_model: SamModel, prompt_encoder: PromptEncoder) -> None:
    boxes = _boxes(2, torch.Generator().manual_seed(2))
    sparse, dense = prompt_encoder(None, boxes, None)
    hf_sparse, hf_dense = hf_model.prompt_encoder(None, None, boxes[:, None], None)
    assert sparse.shape == (2, 2, WIDTH)
    _assert_close(sparse, hf_sparse[:, 0])
    _assert_close(dense, hf_dense)


@torch.no_grad()
def test_prompt_encoder_points_and_boxes(hf_model: SamModel, prompt_encoder: PromptEncoder) -> None:
    generator = torch.Generator().manual_seed(3)
    coords, labels = _points(2, 2, generator)
    boxes = _boxes(2, generator)
    sparse, _ = prompt_encoder((coords, labels), boxes, None)
    hf_sparse, _ = hf_model.prompt_encoder(coords[:, None], labels[:, None], boxes[:, None], None)
    assert sparse.shape == (2, 4, WIDTH)  # no padding point when a box is given
    _assert_close(sparse, hf_sparse[:, 0])


@torch.no_grad()
def test_prompt_encoder_mask(hf_model: SamModel, prompt_encoder: PromptEncoder) -> None:
    masks = torch.randn(2, 1, 4 * GRID, 4 * GRID, generator=torch.Generator().manual_seed(4))
    _, dense = prompt_encoder(None, None, masks)
    _assert_close(dense, hf_model.prompt_encoder.mask_embed(masks))


@pytest.mark.parametrize("multimask", [True, False])
@torch.no_grad()
def test_mask_decoder(
    hf_model: SamModel, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, multimask: bool
) -> None:
    generator = torch.Generator().manual_seed(5)
    image_embeddings = torch.randn(2, WIDTH, GRID, GRID, generator=generator)
    sparse, dense = prompt_encoder(_points(2, 3, generator), None, None)
    image_pe = prompt_encoder.get_dense_pe()
    masks, iou = mask_decoder(
        image_embeddings=image_embeddings,
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    # transformers 4.x appends the attentions to the returned tuple.
    hf_masks, hf_iou = hf_model.mask_decoder(
        image_embeddings=image_embeddings,
        image_positional_embeddings=image_pe.expand(2, -1, -1, -1),
        sparse_prompt_embeddings=sparse[:, None],
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )[:2]
    num_masks = 3 if multimask else 1
    assert masks.shape == (2, num_masks, 4 * GRID, 4 * GRID)
    _assert_close(masks, hf_masks[:, 0])
    _assert_close(iou, hf_iou[:, 0])


@torch.no_grad()
def test_mask_decoder_several_prompt_sets_per_image(
    hf_model: SamModel, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder
) -> None:
    generator = torch.Generator().manual_seed(6)
    images, per_image = 2, 3
    image_embeddings = torch.randn(images, WIDTH, GRID, GRID, generator=generator)
    coords, labels = _points(images * per_image, 2, generator)
    sparse, dense = prompt_encoder((coords, labels), None, None)
    image_pe = prompt_encoder.get_dense_pe()
    masks, iou = mask_decoder(
        image_embeddings=image_embeddings,
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )
    hf_masks, hf_iou = hf_model.mask_decoder(
        image_embeddings=image_embeddings,
        image_positional_embeddings=image_pe.expand(images, -1, -1, -1),
        sparse_prompt_embeddings=sparse.reshape(images, per_image, *sparse.shape[1:]),
        dense_prompt_embeddings=dense[::per_image],
        multimask_output=True,
    )[:2]
    _assert_close(masks, hf_masks.flatten(0, 1))
    _assert_close(iou, hf_iou.flatten(0, 1))


@torch.no_grad()
def test_image_encoder(hf_model: SamModel, image_encoder: ImageEncoderViT) -> None:
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(7))
    ours = image_encoder(images)
    assert ours.shape == (2, WIDTH, GRID, GRID)
    _assert_close(ours, hf_model.vision_encoder(images).last_hidden_state)


@pytest.mark.parametrize("prompt", ["points", "boxes"])
@torch.no_grad()
def test_end_to_end(
    hf_model: SamModel,
    image_encoder: ImageEncoderViT,
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    prompt: str,
) -> None:
    generator = torch.Generator().manual_seed(8)
    images = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    if prompt == "points":
        coords, labels = _points(2, 3, generator)
        sparse, dense = prompt_encoder((coords, labels), None, None)
        hf_prompts = dict(input_points=coords[:, None], input_labels=labels[:, None])
    else:
        boxes = _boxes(2, generator)
        sparse, dense = prompt_encoder(None, boxes, None)
        hf_prompts = dict(input_boxes=boxes[:, None])
    masks, iou = mask_decoder(
        image_embeddings=image_encoder(images),
        image_pe=prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
    )
    hf_out = hf_model(pixel_values=images, multimask_output=True, **hf_prompts)
    _assert_close(masks, hf_out.pred_masks[:, 0])
    _assert_close(iou, hf_out.iou_scores[:, 0])
