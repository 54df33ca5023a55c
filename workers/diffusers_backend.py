"""Image worker (``acore-worker --provider diffusers --model DIR``, listed as ``diffusers/<name>``).

A diffusers pipeline from a local directory (``DiffusionPipeline.from_pretrained``, strictly
offline), loaded once. Generations run the text-to-image pipeline; edits (an input image, no mask)
run its image-to-image twin built from the same components (no second copy of the weights). A
mask needs an inpainting checkpoint, which this worker does not pick: it answers 400 for one.
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
        self._torch: Any = None

    def load(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        directory = Path(self.model).expanduser()
        if not (directory / "model_index.json").is_file():
            raise ModelLoadError(f"{self.model} is not a diffusers pipeline directory (no model_index.json)")
        try:
            import torch
            from diffusers import AutoPipelineForImage2Image, DiffusionPipeline
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
        try:  # the same components, as image-to-image (edits)
            self._edit = AutoPipelineForImage2Image.from_pipe(self._pipeline)
            self._edit.set_progress_bar_config(disable=True)
        except (ValueError, TypeError, AttributeError):
            self._edit = None
        self._torch = torch

    def unload(self) -> None:
        self._pipeline = self._edit = None
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
        if request.edit:
            if request.has_mask:
                raise WorkerError(ErrorCode.BAD_REQUEST, f"diffusers model {self.name} edits whole images; a mask "
                                                         "needs an inpainting model", param="mask")
            if self._edit is None:
                raise WorkerError(ErrorCode.NOT_SUPPORTED, f"diffusers model {self.name} cannot edit images",
                                  param="image")
            from PIL import Image

            image = Image.open(io.BytesIO(inputs[0]), formats=["PNG", "JPEG", "WEBP"]).convert("RGB")
            kwargs["image"] = image.resize((request.width or image.width, request.height or image.height))
            pipeline = self._edit
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
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            out.append(buffer.getvalue())
        return out
