"""EfficientSAM's prompt encoder and mask decoder (Xiong et al., arXiv 2312.00863; GitHub yformer/EfficientSAM).

EfficientSAM pairs a plain ViT (SAM's :class:`~ditsam.model.sam.image_encoder.ImageEncoderViT` with every block
global and no relative-position bias) with a prompt encoder and a mask decoder that differ from SAM's in
details a checkpoint depends on: box corners are points with labels 2 and 3, prompts are padded to six
points, no mask prompt; GELU heads, a GroupNorm upscaling and a two-way transformer whose tokens carry their
positional encoding. Parameter names are the official ones (``prompt_encoder.*``, ``mask_decoder.*``), so
the released ``efficient_sam_vit{t,s}.pt`` load with the key mapping of
:mod:`ditsam.model.checkpoints.efficientsam` touching only the image encoder.
"""
