"""The ControlNet half of the frame step, mixed into ``StreamPipeline`` (pipelines/lcm_img2img.py).

Per batch: each frame's control image for every net (its stream's type: canny, depth, previous, input) and
its scale (0 where its stream has the nets off), as tensors; one call of each net for the whole batch, the
residuals scaled per frame and summed over the nets (as diffusers' MultiControlNetModel sums them), then
handed to the UNet. Frames of streams with other settings, or with the nets off, share the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from pipelines.conditioning.control_images import canny, to_unit

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig
    from pipelines.loading import ModelComponents
    from pipelines.stream_state import StreamState


@dataclass
class Control:
    """The ControlNet inputs of a batch: ``images`` (B, nets, 3, H, W) in [0, 1], ``scales`` (B, nets)."""

    images: torch.Tensor
    scales: torch.Tensor

    def select(self, rows: list[int]) -> Control:
        return Control(self.images[rows], self.scales[rows])

    def doubled(self) -> Control:
        """For classifier-free guidance: the unconditional half gets the same images and scales."""
        return Control(torch.cat([self.images, self.images]), torch.cat([self.scales, self.scales]))


class ControlNetSteps:
    """Control images, the ControlNet calls and the previous output, for the pipeline that mixes this in."""

    components: ModelComponents
    config: PipelineConfig
    device: torch.device
    dtype: torch.dtype
    # Compiled: every step runs the nets (scale 0 where off), so the UNet's compiled code always sees the
    # same arguments and nothing recompiles when a stream switches its nets on or off.
    control_always: bool = False

    def prepare_control(self, images: torch.Tensor, states: list[StreamState]) -> Control | None:
        """The control inputs of frames ``images`` ((B, 3, H, W) in [-1, 1]); None when no frame uses a net."""
        nets = self.components.controlnets
        if not nets:
            return None
        settings = [s.control for s in states]
        if not self.control_always and not any(c.enabled for c in settings):
            return None
        scales = torch.tensor([[float(v) if c.enabled else 0.0 for v in c.scale] for c in settings],
                              dtype=self.dtype).to(self.device, non_blocking=True)
        # An off stream's frames get the input as control image: any image does at scale 0, this one is free.
        kinds = [[k if c.enabled else "input" for k in c.type] for c in settings]
        made: dict[str, torch.Tensor] = {}
        if any("canny" in row for row in kinds):
            low = torch.tensor([c.canny_low for c in settings])
            high = torch.tensor([c.canny_high for c in settings])
            made["canny"] = canny(images, low, high)
        if any("input" in row for row in kinds):
            made["input"] = to_unit(images)
        if any("previous" in row for row in kinds):
            made["previous"] = torch.stack([
                s.last_output if s.last_output is not None else to_unit(images[i]) for i, s in enumerate(states)])
        depth_rows = [i for i, row in enumerate(kinds) if "depth" in row]
        if depth_rows:
            depth = self.components.depth(images if len(depth_rows) == len(states) else images[depth_rows])
            made["depth"] = depth if len(depth_rows) == len(states) else torch.zeros_like(images).index_copy(
                0, torch.tensor(depth_rows, device=images.device), depth.to(images.dtype))
        per_net = []
        for j in range(len(nets)):
            column = [row[j] for row in kinds]
            if len(set(column)) == 1:
                per_net.append(made[column[0]])
            else:
                per_net.append(torch.stack([made[kind][i] for i, kind in enumerate(column)]))
        return Control(torch.stack(per_net, dim=1).to(self.dtype), scales)

    def control_residuals(self, control: Control | None, sample: torch.Tensor, timestep: torch.Tensor,
                          encoder_hidden_states: torch.Tensor, text_embeds: torch.Tensor | None,
                          time_ids: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The residuals the UNet adds (down blocks..., mid block), or () without control. A batch of twice
        the frames (classifier-free guidance) gets the frames' control twice."""
        if control is None:
            return ()
        if sample.shape[0] == 2 * control.scales.shape[0]:
            control = control.doubled()
        return self.controlnet_forward(sample, timestep, encoder_hidden_states, control.images, control.scales,
                                       text_embeds, time_ids)

    def controlnet_forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                           encoder_hidden_states: torch.Tensor, images: torch.Tensor, scales: torch.Tensor,
                           text_embeds: torch.Tensor | None = None,
                           time_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Every net on the batch, tensors in and out: the seam pipelines/compiled.py compiles."""
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        total: tuple[torch.Tensor, ...] | None = None
        for j, net in enumerate(self.components.controlnets):
            down, mid = net(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                            controlnet_cond=images[:, j], conditioning_scale=scales[:, j].view(-1, 1, 1, 1),
                            added_cond_kwargs=added, return_dict=False)
            out = (*down, mid)
            total = out if total is None else tuple(a + b for a, b in zip(total, out, strict=True))
        assert total is not None
        return total

    def remember_outputs(self, decoded: torch.Tensor, states: list[StreamState]) -> None:
        """Keep each stream's output (in [0, 1], as the frame step gives it) for ``previous`` control images."""
        if not self.components.controlnets:
            return
        pixels = to_unit(decoded)
        for i, state in enumerate(states):
            state.last_output = pixels[i]


def unet_residual_kwargs(residuals: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """The UNet's keyword arguments for ControlNet residuals (none without them)."""
    if not residuals:
        return {}
    return {"down_block_additional_residuals": list(residuals[:-1]),
            "mid_block_additional_residual": residuals[-1]}
