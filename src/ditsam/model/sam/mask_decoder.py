"""SAM's mask decoder: image embedding + prompt tokens -> mask logits and predicted IoUs.

Parameter names follow the official checkpoints (`mask_decoder.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ditsam.model.sam.common import LayerNorm2d


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU in between: (..., input_dim) -> (..., output_dim)."""

    def __init__(
        self,
        *,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in zip(widths[:-1], widths[1:], strict=True))
        self.output_act = nn.Sigmoid() if sigmoid_output else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.output_act(self.layers[-1](x))


def _output_upscaling(*, transformer_dim: int, activation: type[nn.Module]) -> nn.Sequential:
    """(B, C, h, w) -> (B, C/8, 4h, 4w); the layer order fixes SAM's key indices."""
    return nn.Sequential(
        nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
        LayerNorm2d(transformer_dim // 4),
        activation(),
        nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
        activation(),
    )


class OutputTokenDecoder(nn.Module):
    """What SAM's and EfficientSAM's mask decoders share: learned output tokens (one IoU token, then
    ``num_mask_tokens`` mask tokens) in front of the prompt tokens, a two-way transformer, and each mask
    token mapped by its own MLP to the weights of a dot product with the upscaled image embedding.

    This class holds ``transformer``, ``iou_token`` and ``mask_tokens``; subclasses build
    ``output_hypernetworks_mlps``, ``iou_prediction_head`` and the upscaling (under their checkpoints' names)
    and :meth:`upscale`. Mask token 0 is the single-mask output, tokens 1.. the multimask ones.
    """

    output_hypernetworks_mlps: nn.ModuleList
    iou_prediction_head: nn.Module

    def __init__(self, *, transformer_dim: int, transformer: nn.Module, num_multimask_outputs: int) -> None:
        """
        Args:
            transformer_dim: channel width C of image embedding and tokens.
            transformer: maps (image (B, C, h, w), image_pe, tokens (B, N, C), token_key_mask=...)
                to (tokens (B, N, C), image (B, h*w, C)); normally a TwoWayTransformer.
            num_multimask_outputs: masks returned when multimask_output is True.
        """
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        # Built before the subclass's heads, in this order: the random initialisation draws from the
        # generator in construction order, so a seeded model stays the same.
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

    def upscale(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) transformer output -> (B, C', 4h, 4w), C' the hypernetworks' output width."""
        raise NotImplementedError

    @property
    def num_output_tokens(self) -> int:
        """Learned tokens placed before the prompt tokens (IoU token + mask tokens)."""
        return 1 + self.num_mask_tokens

    def _tokens_and_mask(
        self, sparse_prompt_embeddings: torch.Tensor, token_key_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prepend the output tokens: (B, K, C) -> (B, 1 + M + K, C), and the key mask to match."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat([output_tokens.to(sparse_prompt_embeddings.dtype), sparse_prompt_embeddings], dim=1)
        if token_key_mask is None:
            return tokens, None
        if token_key_mask.shape != sparse_prompt_embeddings.shape[:2]:
            raise ValueError(
                f"token_key_mask {tuple(token_key_mask.shape)} must match the prompt tokens "
                f"{tuple(sparse_prompt_embeddings.shape[:2])}"
            )
        always = token_key_mask.new_ones(batch, self.num_output_tokens)
        return tokens, torch.cat([always, token_key_mask.bool()], dim=1)

    @staticmethod
    def _per_prompt_images(image_embeddings: torch.Tensor, prompt_batch: int) -> torch.Tensor:
        """Repeat each image's embedding for its prompt sets: (B_img, C, h, w) -> (prompt_batch, C, h, w).

        Prompt sets of image i occupy rows i * P ... (i + 1) * P - 1, P = prompt_batch / B_img.
        """
        image_batch = image_embeddings.shape[0]
        if image_batch == prompt_batch:
            return image_embeddings
        if prompt_batch % image_batch != 0:
            raise ValueError(f"{prompt_batch} prompt sets cannot be shared among {image_batch} images")
        return image_embeddings.repeat_interleave(prompt_batch // image_batch, dim=0)

    def forward(
        self,
        *,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        token_key_mask: torch.Tensor | None = None,
        with_iou_token: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """
        Args:
            image_embeddings: (B_img, C, h, w); B_img = B, or B_img divides B (each image shared
                by B / B_img consecutive prompt sets, as SAM does for one image and many prompts).
            image_pe: (1, C, h, w) positional encoding of the grid (PromptEncoder.get_dense_pe).
            sparse_prompt_embeddings: (B, K, C) prompt tokens (points, boxes or projected words).
            dense_prompt_embeddings: (B, C, h, w), added to the image embedding.
            multimask_output: return the 3 ambiguity-aware masks instead of the single one.
            token_key_mask: (B, K) bool, True = real prompt token, False = padding that no
                attention may read. None treats all tokens as real (SAM).
            with_iou_token: also return the IoU token's output, (B, C): it has read the prompts and
                the image, so heads that judge the whole prompt (e.g. "is anything referred?") use it.

        Returns:
            masks: (B, M, 4h, 4w) low-resolution mask logits, M = num_multimask_outputs or 1.
            iou_pred: (B, M) predicted IoU of each mask.
            iou_token: (B, C), only with ``with_iou_token``.
        """
        tokens, key_mask = self._tokens_and_mask(sparse_prompt_embeddings, token_key_mask)
        src = self._per_prompt_images(image_embeddings, tokens.shape[0]) + dense_prompt_embeddings
        b, c, h, w = src.shape

        tokens_out, src = self.transformer(src, image_pe, tokens, token_key_mask=key_mask)
        iou_token_out = tokens_out[:, 0]
        mask_tokens_out = tokens_out[:, 1 : self.num_output_tokens]

        upscaled = self.upscale(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c_up, h_up, w_up = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c_up, h_up * w_up)).reshape(b, -1, h_up, w_up)
        iou_pred = self.iou_prediction_head(iou_token_out)

        selected = slice(1, None) if multimask_output else slice(0, 1)
        if with_iou_token:
            return masks[:, selected], iou_pred[:, selected], iou_token_out
        return masks[:, selected], iou_pred[:, selected]


class MaskDecoder(OutputTokenDecoder):
    """SAM's mask decoder: masks from an image embedding and prompt tokens with a two-way transformer.

    Learned output tokens (one IoU token, 1 + num_multimask_outputs mask tokens) are prepended to
    the prompt tokens. After the transformer each mask token is mapped by its own MLP to the
    weights of a dot product with the 4x upscaled image embedding; the IoU token predicts the
    quality of every mask. Mask token 0 is the single-mask output, tokens 1.. the multimask ones.
    The forward pass is :class:`OutputTokenDecoder`'s.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        """
        Args:
            transformer_dim, transformer, num_multimask_outputs: as :class:`OutputTokenDecoder`.
            activation: activation of the upscaling network.
            iou_head_depth, iou_head_hidden_dim: size of the IoU prediction MLP.
        """
        super().__init__(
            transformer_dim=transformer_dim, transformer=transformer, num_multimask_outputs=num_multimask_outputs
        )
        self.output_upscaling = _output_upscaling(transformer_dim=transformer_dim, activation=activation)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(input_dim=transformer_dim, hidden_dim=transformer_dim, output_dim=transformer_dim // 8, num_layers=3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            input_dim=transformer_dim,
            hidden_dim=iou_head_hidden_dim,
            output_dim=self.num_mask_tokens,
            num_layers=iou_head_depth,
        )

    def upscale(self, image: torch.Tensor) -> torch.Tensor:
        return self.output_upscaling(image)
