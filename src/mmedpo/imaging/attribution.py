"""The target model's own attribution as the lesion region: where in the image its answer comes from.

No annotation and no outside model: the VLM answers the sample's question
greedily, and captum attributes the log-probability of that answer (its tokens'
log-probs, summed) to the image's pixel values, the input every HF VLM takes.
The positive part of the attribution (evidence for the answer), summed over
channels, is the heat map; the processor's view of the image (a resize and
centre crop for CLIP processors, the patch grid for Qwen2-VL) is mapped back
onto the image, and the region is the heat map's strongest part
(`imaging.regions.map_to_region`).

The confidence is how concentrated the attribution is: the share of the map's
mass inside the region, above what a flat map would put there,

    confidence = (mass inside / total mass - area fraction) / (1 - area fraction), clipped to [0, 1]

so a map spread evenly over the image scores 0 and one wholly inside a small
region scores near 1.

    localizer = AttributionLocalizer("runs/demo/models/base")
    region = localizer.localize(sample, image_roots)

`method`:
- "occlusion" (default): captum's Occlusion. A window of the processed image
  (1/`grid` of each side, moved by half a window: 49 forwards for grid 4) is
  replaced by seeded Gaussian noise, as the visual pairs hide a lesion, and the
  drop in the answer's log-prob is the window's evidence. Qwen2-VL's patch
  sequence is occluded one merged block of patches at a time.
- "integrated-gradients": captum's IntegratedGradients from the all-zero pixel
  values (the normaliser's mean image) in `steps` steps: fewer forwards for
  large images, but on the tiny LLaVA its maps sat on a few fixed patches.

Pixel values of another layout than 4-D images (llava-hf, LLaVA-Med) or
Qwen2-VL's patches with `image_grid_thw` are refused with a clear error. The
model is loaded on first use, with every weight frozen (gradients, where a
method takes them, reach the pixels only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from mmedpo.data.images import open_image
from mmedpo.data.messages import prompt_messages
from mmedpo.imaging.regions import NoRegion, Region, RegionOptions, concentration, map_to_region
from mmedpo.records import Sample

METHODS = ("occlusion", "integrated-gradients")
MAX_NEW_TOKENS = {"vqa": 12, "report": 64}


@dataclass
class AttributionLocalizer:
    """The region of the image the target model's own answer is attributed to (see the module docstring)."""

    name: ClassVar[str] = "attribution"

    model_dir: Path | str
    method: str = "occlusion"
    grid: int = 4
    steps: int = 16
    seed: int = 0
    region: RegionOptions | dict = field(default_factory=RegionOptions)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"attribution method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if isinstance(self.region, dict):
            self.region = RegionOptions(**self.region)
        self._loaded = None

    def localize(self, sample: Sample, image_roots: Sequence[Path | str]) -> Region:
        """The region of `sample`'s image its answer comes from; raises `NoRegion` when the map gives none."""
        image = open_image(sample.image, image_roots)
        answer, heat = self.heat_map(image, sample.question, sample.task)
        try:
            mask = map_to_region(heat, self.region)
        except NoRegion as error:
            raise NoRegion(f"sample {sample.id}: attribution of {answer!r}: {error}") from None
        area = float(mask.mean())
        return Region(mask, concentration(heat, mask), f"attribution of {answer!r}", area, heat / heat.max())

    def heat_map(self, image: Image.Image, question: str, task: str = "vqa") -> tuple[str, np.ndarray]:
        """The model's greedy answer to `question` on `image`, and its attribution map (H, W) over the image."""
        model, processor = self._model()
        inputs, prompt_length = self._encode(image, question)
        answer_ids = self._answer(inputs, prompt_length, MAX_NEW_TOKENS.get(task, 12))
        sequence = torch.cat([inputs["input_ids"], answer_ids[None]], dim=1)
        extra = _image_inputs(inputs, len(answer_ids))
        pixels = inputs["pixel_values"]

        def answer_log_prob(alternatives: torch.Tensor) -> torch.Tensor:
            # (k, *pixels.shape) -> (k,): the answer's summed log-prob given each alternative image.
            return torch.cat([_log_prob(model, sequence, prompt_length, alt, extra) for alt in alternatives])

        attribution = (
            self._attribute(answer_log_prob, pixels[None], processor.image_processor)[0].detach().float().cpu()
        )
        heat = _to_image(attribution.clamp(min=0), processor.image_processor, extra, image.size)
        answer = processor.tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
        return answer, heat

    def _attribute(self, forward, inputs: torch.Tensor, image_processor) -> torch.Tensor:
        from captum.attr import IntegratedGradients, Occlusion

        if self.method == "integrated-gradients":
            return IntegratedGradients(forward).attribute(inputs, n_steps=self.steps, internal_batch_size=self.steps)
        noise = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(self.seed))
        noise = noise.to(inputs.device, inputs.dtype)
        if inputs.ndim == 5:  # (1, 1, C, H, W): windows of the image
            channels, height, width = inputs.shape[2:]
            tall, wide = max(1, height // self.grid), max(1, width // self.grid)
            window, strides = (1, channels, tall, wide), (1, channels, max(1, tall // 2), max(1, wide // 2))
        else:  # (1, patches, features): a merged block of patches at a time
            block = getattr(image_processor, "merge_size", 1) ** 2
            window = strides = (block, inputs.shape[-1])
        return Occlusion(forward).attribute(inputs, sliding_window_shapes=window, strides=strides, baselines=noise)

    def release(self) -> None:
        """Drop the loaded model (it loads again on the next `localize`)."""
        self._loaded = None

    def _model(self):
        if self._loaded is None:
            from mmedpo.models.vlm import load_vlm

            model, processor = load_vlm(self.model_dir)
            model.requires_grad_(False)
            self._loaded = model, processor
        return self._loaded

    def _encode(self, image: Image.Image, question: str):
        from mmedpo.models.vlm import encode

        model, processor = self._model()
        prompt = processor.apply_chat_template(prompt_messages(question), add_generation_prompt=True)
        inputs = encode(processor, [image], [prompt], padding_side="left").to(model.device, dtype=model.dtype)
        return inputs, inputs["input_ids"].shape[1]

    def _answer(self, inputs, prompt_length: int, max_new_tokens: int) -> torch.Tensor:
        """The greedy answer's token ids, up to its end token (the end token itself if it says nothing)."""
        model, processor = self._model()
        tokenizer = processor.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        answer = output[0, prompt_length:]
        ends = (answer == tokenizer.eos_token_id).nonzero()
        cut = int(ends[0]) if len(ends) else len(answer)
        return answer[: max(cut, 1)].clone()


def _image_inputs(inputs, answer_length: int) -> dict:
    """The processor's other inputs (image sizes, grids...); per-token ones (Qwen2-VL's mm_token_type_ids) are
    extended over the answer's tokens with zeros, the value of a text token."""
    extra = {}
    for key, value in inputs.items():
        if key in ("input_ids", "attention_mask", "pixel_values"):
            continue
        if torch.is_tensor(value) and value.shape == inputs["input_ids"].shape:
            value = torch.nn.functional.pad(value, (0, answer_length))
        extra[key] = value
    return extra


def _log_prob(model, sequence: torch.Tensor, prompt_length: int, pixels: torch.Tensor, extra: dict) -> torch.Tensor:
    """log p(answer | prompt, image) of the one sequence, summed over the answer's tokens: shape (1,)."""
    logits = model(input_ids=sequence, pixel_values=pixels, **extra).logits[:, prompt_length - 1 : -1]
    answer = sequence[:, prompt_length:]
    return logits.float().log_softmax(-1).gather(-1, answer[..., None]).sum(dim=(1, 2))


def _to_image(attribution: torch.Tensor, image_processor, extra: dict, size: tuple[int, int]) -> np.ndarray:
    """The attribution of one image's pixel values as a heat map (H, W) over the original image of `size` (W, H)."""
    if attribution.ndim == 4:  # (1, C, h, w): an image as the processor resized and cropped it
        grid = attribution[0].sum(0)
    elif attribution.ndim == 2 and "image_grid_thw" in extra:  # Qwen2-VL: patches in merge-window order
        grid = _qwen_grid(attribution.sum(1), extra["image_grid_thw"][0], image_processor.merge_size)
    else:
        raise ValueError(
            f"attribution: pixel values of shape {tuple(attribution.shape)} are neither images (1, C, H, W) "
            "nor Qwen2-VL patches with image_grid_thw"
        )
    left, top, right, bottom = _processor_view(image_processor, size)
    view = torch.nn.functional.interpolate(
        grid[None, None].float(), size=(bottom - top, right - left), mode="bilinear", align_corners=False
    )[0, 0].clamp(min=0)
    heat = np.zeros(size[::-1], dtype=np.float64)
    heat[top:bottom, left:right] = view.numpy()
    return heat


def _qwen_grid(per_patch: torch.Tensor, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """Qwen2-VL's patch scores (t * h * w,) in its (t, h/m, w/m, m, m) order as an (h, w) grid, frames summed."""
    t, h, w = (int(x) for x in grid_thw)
    blocks = per_patch.reshape(t, h // merge, w // merge, merge, merge)
    return blocks.permute(0, 1, 3, 2, 4).reshape(t, h, w).sum(0)


def _processor_view(image_processor, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of the original image that the processor's output shows.

    A CLIP-style processor resizes the shortest edge and crops the centre; every
    other resize shows the whole image.
    """
    width, height = size
    shortest = (getattr(image_processor, "size", None) or {}).get("shortest_edge")
    crop = getattr(image_processor, "crop_size", None) or {}
    if not (getattr(image_processor, "do_center_crop", False) and shortest and crop):
        return 0, 0, width, height
    scale = shortest / min(width, height)
    seen_w, seen_h = min(width, crop["width"] / scale), min(height, crop["height"] / scale)
    left, top = round((width - seen_w) / 2), round((height - seen_h) / 2)
    return left, top, left + round(seen_w), top + round(seen_h)
