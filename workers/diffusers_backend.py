"""Image worker (``acore-worker --provider diffusers --model DIR``, listed as ``diffusers/<name>``).

A diffusers pipeline from a local directory (``DiffusionPipeline.from_pretrained``, strictly
offline), loaded once. Generations run the text-to-image pipeline; edits run its twins built from
the same components (no second copy of the weights): an image alone, image-to-image; an image and
a mask, inpainting. The mask is OpenAI's: a PNG of the image's size whose fully transparent pixels
mark what to repaint. Every other pixel of the answer is the input's own (pasted back after
decoding, as inpainting front-ends do: the VAE's round trip alone would alter them slightly).
Images leave as PNG bytes.
"""

from __future__ import annotations

import gc
import io
import os
from pathlib import Path
from typing import Any

from protocol.messages import Capabilities, ErrorCode, GenerateImage
from workers.backend import Backend, BackendInfo, ModelLoadError, WorkerError

DEFAULT_STEPS = 25
MAX_STEPS = 200


class DiffusersBackend(Backend):
    provider = "diffusers"

    def __init__(self, model: str, name: str, options: dict[str, Any]) -> None:
        super().__init__(model, name, options)
        self._pipeline: Any = None
        self._edit: Any = None
        self._inpaint: Any = None
        self._torch: Any = None

    def load(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        directory = Path(self.model).expanduser()
        if not (directory / "model_index.json").is_file():
            raise ModelLoadError(f"{self.model} is not a diffusers pipeline directory (no model_index.json)")
        try:
            import torch
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline
        except ImportError as exc:
            raise ModelLoadError(f"the diffusers worker needs torch and diffusers: {exc}") from None
        threads = self.options.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        try:
            self._pipeline = DiffusionPipeline.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load a diffusers pipeline from {directory}: {exc}") from None
        self._pipeline.set_progress_bar_config(disable=True)
        self._edit = _twin(AutoPipelineForImage2Image, self._pipeline)  # edits of a whole image
        self._inpaint = _twin(AutoPipelineForInpainting, self._pipeline)  # edits with a mask
        self._torch = torch

    def unload(self) -> None:
        self._pipeline = self._edit = self._inpaint = None
        gc.collect()

    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    def info(self) -> BackendInfo:
        return BackendInfo(capabilities=Capabilities(image_generation=True))

    def generate_images(self, request: GenerateImage, inputs: list[bytes]) -> list[bytes]:
        steps = request.steps or DEFAULT_STEPS
        if not 1 <= steps <= MAX_STEPS:
            raise WorkerError(ErrorCode.BAD_REQUEST, f"steps must be between 1 and {MAX_STEPS}", param="steps")
        kwargs: dict[str, Any] = {"prompt": request.prompt, "num_images_per_prompt": request.n,
                                  "num_inference_steps": steps, "output_type": "pil"}
        if request.negative_prompt:
            kwargs["negative_prompt"] = request.negative_prompt
        if request.guidance_scale is not None:
            kwargs["guidance_scale"] = request.guidance_scale
        if request.seed is not None:
            kwargs["generator"] = self._torch.Generator().manual_seed(request.seed)
        pipeline = self._pipeline
        keep: tuple[Any, Any] | None = None  # (the input image, the repaint mask) to paste the rest back
        if request.edit:
            pipeline = self._inpaint if request.has_mask else self._edit
            if pipeline is None:
                raise WorkerError(ErrorCode.NOT_SUPPORTED, f"diffusers model {self.name} cannot edit images"
                                  f"{' with a mask' if request.has_mask else ''}",
                                  param="mask" if request.has_mask else "image")
            from PIL import Image

            original = Image.open(io.BytesIO(inputs[0]), formats=["PNG", "JPEG", "WEBP"]).convert("RGB")
            size = (request.width or original.width, request.height or original.height)
            image = original.resize(size)
            kwargs["image"] = image
            if request.has_mask:
                repaint = _repaint_mask(inputs[1], original.size).resize(size)
                kwargs.update(mask_image=repaint, width=size[0], height=size[1])
                keep = image, repaint
        else:
            if request.width:
                kwargs["width"] = request.width
            if request.height:
                kwargs["height"] = request.height
        try:
            with self._torch.inference_mode():
                images = pipeline(**kwargs).images
        except ValueError as exc:  # a size the model cannot make, and the like
            raise WorkerError(ErrorCode.BAD_REQUEST, f"the pipeline refused the request: {exc}") from None
        out = []
        for image in images:
            if keep is not None:
                from PIL import Image

                image = Image.composite(image.convert("RGB").resize(keep[0].size), keep[0], keep[1])
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            out.append(buffer.getvalue())
        return out


def _twin(kind: Any, pipeline: Any) -> Any:
    """The pipeline's image-to-image or inpainting twin over the same components, or None when its
    family has none."""
    try:
        twin = kind.from_pipe(pipeline)
    except (ValueError, TypeError, AttributeError):
        return None
    twin.set_progress_bar_config(disable=True)
    return twin


def _repaint_mask(data: bytes, size: tuple[int, int]) -> Any:
    """OpenAI's mask (fully transparent = edit here) as diffusers' (white = repaint, black = keep)."""
    from PIL import Image

    try:
        mask = Image.open(io.BytesIO(data), formats=["PNG"])
        mask.load()
    except (OSError, ValueError):
        raise WorkerError(ErrorCode.BAD_REQUEST, "the mask must be a PNG image", param="mask") from None
    if mask.size != size:
        raise WorkerError(ErrorCode.BAD_REQUEST, f"the mask is {mask.size[0]}x{mask.size[1]} and the image "
                                                 f"{size[0]}x{size[1]}: they must be the same size", param="mask")
    if "A" not in mask.getbands() and "transparency" not in mask.info:
        raise WorkerError(ErrorCode.BAD_REQUEST, "the mask has no alpha channel: its fully transparent pixels "
                                                 "mark what to edit", param="mask")
    alpha = mask.convert("RGBA").getchannel("A")
    return alpha.point(lambda value: 255 if value == 0 else 0)
