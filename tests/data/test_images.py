import io

import numpy as np
import pytest
from PIL import Image

from melanoma.data import images
from melanoma.data.images import ImageRejected, decode_rgb, pixel_sha256, square_resize

LIMIT = 50_000_000


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def rejection(data: bytes, max_pixels: int = LIMIT) -> str:
    with pytest.raises(ImageRejected) as caught:
        decode_rgb(data, max_pixels)
    assert str(caught.value)  # the message explains the code
    return caught.value.reason


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


@pytest.fixture
def noisy() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB")


def test_empty_file_is_rejected() -> None:
    assert rejection(b"") == "empty_file"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_rejected(noisy: Image.Image, fmt: str) -> None:
    data = encoded(noisy, fmt)
    assert rejection(data[: len(data) // 2]) == "truncated"


def test_truncated_jpeg_without_end_marker_is_rejected(noisy: Image.Image) -> None:
    assert rejection(encoded(noisy, "JPEG")[:-2]) == "truncated"


def test_png_with_damaged_pixel_data_is_corrupt(noisy: Image.Image) -> None:
    data = bytearray(encoded(noisy, "PNG"))
    data[100] ^= 0xFF  # inside the compressed IDAT stream
    assert rejection(bytes(data)) == "corrupt"


def test_png_with_damaged_header_is_corrupt(noisy: Image.Image) -> None:
    data = bytearray(encoded(noisy, "PNG"))
    data[20] ^= 0xFF  # inside IHDR: its checksum no longer matches
    assert rejection(bytes(data)) == "corrupt"


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x01Bud1" + bytes(2000),  # .DS_Store
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(2000),  # Thumbs.db (OLE)
        b"ISIC archive, CC-BY-NC\n",
        b"%!PS-Adobe-3.0 EPSF-3.0\n",  # EPS would run Ghostscript: not a format we open
    ],
    ids=["DS_Store", "Thumbs.db", "text", "eps"],
)
def test_non_image_files_are_rejected(data: bytes) -> None:
    assert rejection(data) == "not_an_image"


@pytest.mark.parametrize("side", [40, 35], ids=["beyond-twice-the-limit", "beyond-the-limit"])
def test_decompression_bomb_is_refused(side: int) -> None:
    # Pillow raises above twice its limit and only warns between: both must refuse.
    data = encoded(Image.new("RGB", (side, side)), "PNG")
    assert rejection(data, max_pixels=1000) == "decompression_bomb"


def test_pixel_limit_admits_images_within_it_and_is_restored() -> None:
    before = Image.MAX_IMAGE_PIXELS
    image = decode_rgb(encoded(Image.new("RGB", (30, 30)), "PNG"), max_pixels=1000)
    assert image.size == (30, 30)
    assert before == Image.MAX_IMAGE_PIXELS


def test_grayscale_becomes_equal_rgb_channels() -> None:
    gray = Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8), "L")
    rgb = decode_rgb(encoded(gray, "PNG"), LIMIT)
    assert rgb.mode == "RGB"
    assert pixels(rgb).tolist() == [[[0, 0, 0], [100, 100, 100], [255, 255, 255]]]


def test_grayscale_with_alpha_is_composited_on_white() -> None:
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (50, 255))
    la.putpixel((1, 0), (0, 0))  # fully transparent black
    rgb = decode_rgb(encoded(la, "PNG"), LIMIT)
    assert pixels(rgb).tolist() == [[[50, 50, 50], [255, 255, 255]]]


def test_rgba_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    rgba.putpixel((2, 0), (255, 0, 0, 128))
    rgb = decode_rgb(encoded(rgba, "PNG"), LIMIT)
    assert pixels(rgb).tolist() == [[[10, 20, 30], [255, 255, 255], [255, 127, 127]]]


def test_cmyk_is_converted() -> None:
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in ink terms
    opened = images.open_image(encoded(cmyk, "TIFF"), LIMIT)
    assert opened.mode == "CMYK"
    assert pixels(images.to_rgb(opened))[0, 0].tolist() == [255, 0, 0]


def test_palette_without_transparency_takes_palette_colours() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255, 0, 200, 0])
    palette.putpixel((1, 0), 1)
    rgb = decode_rgb(encoded(palette, "PNG"), LIMIT)
    assert pixels(rgb).tolist() == [[[0, 0, 255], [0, 200, 0]]]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt: str) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 200, 0])  # index 0, the transparent one, is black
    palette.putpixel((1, 0), 1)
    data = encoded(palette, fmt, transparency=0)
    assert images.open_image(data, LIMIT).mode == "P"
    assert pixels(decode_rgb(data, LIMIT)).tolist() == [[[255, 255, 255], [0, 200, 0]]]


SIXTEEN_BIT = np.array([[0, 256, 32896, 65535]])
EIGHT_BIT = [0, 1, 128, 255]  # scaled, where a plain convert would clip all but 0 to 255


@pytest.mark.parametrize(
    ("mode", "dtype", "fmt"),
    [("I;16", "<u2", "PNG"), ("I;16B", ">u2", "TIFF"), ("I", "<i4", "TIFF")],
)
def test_sixteen_bit_grayscale_is_scaled_not_clipped(mode: str, dtype: str, fmt: str) -> None:
    image = Image.frombytes(mode, (4, 1), SIXTEEN_BIT.astype(dtype).tobytes())
    data = encoded(image, fmt)
    assert images.open_image(data, LIMIT).mode == mode
    rgb = decode_rgb(data, LIMIT)
    assert pixels(rgb)[0, :, 0].tolist() == EIGHT_BIT
    assert (pixels(rgb)[..., 0] == pixels(rgb)[..., 2]).all()


def test_float_pixels_are_rejected_as_unsupported() -> None:
    image = Image.fromarray(np.array([[0.5, 300.0]], dtype=np.float32), "F")
    assert rejection(encoded(image, "TIFF")) == "unsupported_mode"


def test_source_metadata_is_not_carried_into_the_rgb_image(noisy: Image.Image) -> None:
    rgb = decode_rgb(encoded(noisy, "JPEG", icc_profile=b"not an sRGB profile"), LIMIT)
    written = Image.open(io.BytesIO(images.encode(rgb, "png", 95)))
    assert "icc_profile" not in written.info


def test_pixel_hash_depends_on_pixels_and_size_not_on_file_format(noisy: Image.Image) -> None:
    from_png = decode_rgb(encoded(noisy, "PNG"), LIMIT)
    from_bmp = decode_rgb(encoded(noisy, "BMP"), LIMIT)
    assert pixel_sha256(from_png) == pixel_sha256(from_bmp)

    changed = from_png.copy()
    changed.putpixel((5, 5), (1, 2, 3) if changed.getpixel((5, 5)) != (1, 2, 3) else (4, 5, 6))
    assert pixel_sha256(changed) != pixel_sha256(from_png)

    # Same bytes, other shape: 32x32 and 16x64 hold the same raw pixel buffer.
    reshaped = Image.frombytes("RGB", (16, 64), from_png.tobytes())
    assert pixel_sha256(reshaped) != pixel_sha256(from_png)


def test_square_resize_keeps_the_centre_of_a_wide_image() -> None:
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    wide.paste((0, 255, 0), (10, 0, 30, 20))  # the central 20x20 square is green
    square = square_resize(wide, 8)
    assert square.size == (8, 8)
    assert (pixels(square) == [0, 255, 0]).all()


def test_square_resize_keeps_the_centre_of_a_tall_image() -> None:
    tall = Image.new("RGB", (20, 60), (0, 0, 255))
    tall.paste((255, 255, 0), (0, 20, 20, 40))
    square = square_resize(tall, 50)  # upscaling too
    assert square.size == (50, 50)
    assert (pixels(square) == [255, 255, 0]).all()


def test_square_resize_of_the_target_size_changes_nothing(noisy: Image.Image) -> None:
    assert pixels(square_resize(noisy, 32)).tolist() == pixels(noisy).tolist()


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_encoding_is_byte_identical_across_calls(noisy: Image.Image, image_format: str) -> None:
    first = images.encode(noisy, image_format, 90)
    assert first == images.encode(noisy.copy(), image_format, 90)
    assert Image.open(io.BytesIO(first)).format == image_format.upper()


def test_png_encoding_is_lossless(noisy: Image.Image) -> None:
    decoded = Image.open(io.BytesIO(images.encode(noisy, "png", 95)))
    assert pixels(decoded).tolist() == pixels(noisy).tolist()
