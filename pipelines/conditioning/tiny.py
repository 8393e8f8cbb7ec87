"""Tiny random ControlNets and depth estimators with the real architectures, for tests and the CPU bench.

A ControlNet starts with zero convolutions (it changes nothing until trained); these get random ones, so a
test can tell a net that was applied from one that was not.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ControlNetModel


def tiny_controlnet(unet: Any, *, seed: int = 0, embedding: tuple[int, ...] = (8, 8, 8, 8)) -> ControlNetModel:
    """A ControlNet matching ``unet`` (an SD 1.5- or SDXL-style UNet2DConditionModel), random weights;
    ``embedding``: the control image encoder's widths ((16, 32, 96, 256) in the released nets)."""
    torch.manual_seed(seed)
    c = unet.config
    kwargs: dict[str, Any] = {}
    if c.addition_embed_type == "text_time":
        kwargs.update(addition_embed_type="text_time", addition_time_embed_dim=c.addition_time_embed_dim,
                      projection_class_embeddings_input_dim=c.projection_class_embeddings_input_dim,
                      transformer_layers_per_block=c.transformer_layers_per_block)
    net = ControlNetModel(
        in_channels=c.in_channels, block_out_channels=c.block_out_channels, down_block_types=c.down_block_types,
        layers_per_block=c.layers_per_block, cross_attention_dim=c.cross_attention_dim,
        attention_head_dim=c.attention_head_dim, norm_num_groups=c.norm_num_groups,
        use_linear_projection=c.use_linear_projection, conditioning_embedding_out_channels=embedding, **kwargs)
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.normal_(0.0, 0.05)
            conv.bias.normal_(0.0, 0.05)
        # The control image's path strong enough that another control image gives another picture.
        for module in net.controlnet_cond_embedding.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0.0, 2.0 / (module.in_channels * 9) ** 0.5)
        net.controlnet_cond_embedding.conv_out.weight.normal_(0.0, 0.02)
    return net.eval()


def tiny_depth_estimator(*, seed: int = 0) -> tuple[Any, Any]:
    """(model, image processor): a Depth Anything architecture a few hundred kB big, random weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    backbone = {"model_type": "dinov2", "image_size": 28, "patch_size": 14, "hidden_size": 16,
                "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 32,
                "out_indices": [1, 2, 3, 4], "reshape_hidden_states": False}
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16,
                                 neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8, head_hidden_size=8)
    model = DepthAnythingForDepthEstimation(config).eval()
    processor = DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return model, processor
