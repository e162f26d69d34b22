"""Hostile training data: odd image modes, animations, corrupt files, captions not in UTF-8; and the
direction of the report's "ribbon seen" metric for characters with and without a ribbon."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sabun.data.dataset import read_caption, scan_images
from sabun.data.images import inspect_image, open_rgb
from sabun.errors import SabunError
from sabun.train.config import DataConfig, DatasetConfig

DATA = DataConfig(resolution=8, min_image_size=1)


def scan(folder, data=DATA, **dataset):
    return scan_images([DatasetConfig(path=str(folder), **dataset)], data)


def rgb(path):
    return np.asarray(open_rgb(path)).astype(int)


def grey(values):
    """Expected RGB pixels for 8-bit grey values."""
    return np.repeat(np.asarray(values)[..., None], 3, axis=-1)


# -- image modes -------------------------------------------------------------------------------


def test_a_16_bit_greyscale_png_is_scaled_to_8_bit_not_white(tmp_path):
    v16 = np.array([[0, 257, 1000, 257 * 128, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(v16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    expected = [0, 1, 4, 128, 156, 255]  # round(v / 257)
    assert rgb(tmp_path / "g16.png").tolist() == grey([expected]).tolist()
    # a full gradient, as the scan sees it
    ramp = (np.arange(64 * 4, dtype=np.uint16) * 257).reshape(4, 64)  # 8-bit values 0..255
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert (rgb(tmp_path / "ramp.png")[..., 0] == np.arange(64 * 4).reshape(4, 64)).all()
    assert [im.size for im in scan(tmp_path).images] == [(6, 1), (64, 4)]


def test_a_16_bit_png_with_a_transparent_grey_level_is_white_there(tmp_path):
    Image.fromarray(np.array([[0, 500, 65535]], dtype=np.uint16)).save(tmp_path / "t.png", transparency=500)
    assert rgb(tmp_path / "t.png").tolist() == grey([[0, 255, 255]]).tolist()
    Image.fromarray(np.array([[0, 500, 65535]], dtype=np.uint16)).save(tmp_path / "t.png", transparency=65535)
    assert rgb(tmp_path / "t.png").tolist() == grey([[0, 2, 255]]).tolist()


def test_32_bit_integer_and_float_tiffs(tmp_path):
    ints = np.array([[0, 257, 32896, 65535]], dtype=np.int32)
    Image.fromarray(ints).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert rgb(tmp_path / "i.tif").tolist() == grey([[0, 1, 128, 255]]).tolist()

    unit = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)  # float images hold 0..1
    Image.fromarray(unit).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert rgb(tmp_path / "f.tif").tolist() == grey([[0, 64, 128, 255]]).tolist()

    Image.fromarray(np.array([[0.0, 10.0, 200.0]], dtype=np.float32)).save(tmp_path / "f255.tif")  # PIL's own 0..255
    assert rgb(tmp_path / "f255.tif").tolist() == grey([[0, 10, 200]]).tolist()

    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "wide.tif")
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(SabunError) as info:
        scan(tmp_path)
    message = str(info.value)
    assert "2 bad training image(s)" in message
    assert f"{tmp_path / 'wide.tif'}: 32-bit integer pixels outside 0..65535" in message
    assert f"{tmp_path / 'nan.tif'}: floating-point pixels that are NaN" in message
    with pytest.raises(SabunError, match="wide.tif: 32-bit"):
        open_rgb(tmp_path / "wide.tif")


def test_rgba_transparent_pixels_become_white(tmp_path):
    pixels = np.array([[[200, 10, 10, 0], [10, 200, 10, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    out = rgb(tmp_path / "a.png")
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent: white, not its hidden red
    assert out[0, 1].tolist() == [10, 200, 10]
    assert all(abs(c - 127) <= 1 for c in out[0, 2])  # half-transparent black over white: mid grey


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("la.png", lambda: Image.fromarray(np.array([[[30, 0], [30, 255]]], np.uint8), "LA"), [[255] * 3, [30] * 3]),
        (
            "l_trns.png",
            lambda: (Image.fromarray(np.array([[30, 90]], np.uint8), "L"), {"transparency": 90}),
            [[30] * 3, [255] * 3],
        ),
        (
            "rgb_trns.png",
            lambda: (Image.fromarray(np.array([[[1, 2, 3], [0, 0, 0]]], np.uint8), "RGB"), {"transparency": (0, 0, 0)}),
            [[1, 2, 3], [255] * 3],
        ),
        ("p_trns.png", lambda: (_palette(), {"transparency": 1}), [[255, 0, 0], [255] * 3]),
        ("p_trns.gif", lambda: (_palette(), {"transparency": 1}), [[255, 0, 0], [255] * 3]),  # one frame: read
        ("p.bmp", lambda: _palette(), [[255, 0, 0], [0, 255, 0]]),
        (
            "cmyk.jpg",
            lambda: (Image.new("CMYK", (2, 1), (255, 0, 0, 0)), {"quality": 100}),
            [[0, 255, 255], [0, 255, 255]],
        ),
        ("cmyk.tif", lambda: Image.new("CMYK", (2, 1), (0, 0, 0, 255)), [[0, 0, 0], [0, 0, 0]]),
        ("bilevel.png", lambda: Image.fromarray(np.array([[False, True]])), [[0, 0, 0], [255, 255, 255]]),
    ],
)
def test_each_image_mode_gives_the_right_rgb(tmp_path, name, make, expected):
    made = make()
    image, options = made if isinstance(made, tuple) else (made, {})
    image.save(tmp_path / name, **options)
    out = rgb(tmp_path / name)
    assert out.shape == (1, 2, 3)
    assert np.abs(out[0] - np.array(expected)).max() <= 2, out.tolist()  # JPEG may be off by a little


def _palette():
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.putpixel((1, 0), 1)
    return image


# -- files that cannot be trained on -----------------------------------------------------------


def test_an_animated_gif_is_an_error_naming_the_file(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "walk.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "ok.png")
    with pytest.raises(SabunError) as info:
        scan(tmp_path)
    message = str(info.value)
    assert "1 bad training image(s)" in message
    assert f"{tmp_path / 'walk.gif'}: animated or multi-page (2 frames)" in message
    assert "extract the frames as PNG" in message and "ok.png" not in message
    with pytest.raises(SabunError, match="walk.gif: animated"):
        open_rgb(tmp_path / "walk.gif")
    # the same for an animated PNG
    frames[0].save(tmp_path / "ok.png", save_all=True, append_images=frames[1:])
    with pytest.raises(SabunError, match="2 bad training image"):
        scan(tmp_path)


def test_truncated_corrupt_empty_and_tiny_images_are_errors_naming_each_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (64, 64)).save(tmp_path / "cut.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:300])
    (tmp_path / "noise.webp").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "empty.bmp").write_bytes(b"")
    Image.new("RGB", (3, 40)).save(tmp_path / "thin.png")
    with pytest.raises(SabunError) as info:
        scan(tmp_path, replace(DATA, min_image_size=8))
    message = str(info.value)
    assert "5 bad training image(s)" in message
    for name in ("cut.png", "cut.jpg", "noise.webp"):
        assert f"{tmp_path / name}: unreadable (" in message
    assert f"{tmp_path / 'empty.bmp'}: empty (0 bytes)" in message
    assert f"{tmp_path / 'thin.png'}: too small (3x40, shorter side < 8 px)" in message
    assert "whole.png" not in message and "Traceback" not in message and "\n" not in message
    for name in ("cut.png", "cut.jpg", "noise.webp", "empty.bmp"):
        with pytest.raises(SabunError, match=name):
            open_rgb(tmp_path / name)
    size, problem = inspect_image(tmp_path / "whole.png", 8)
    assert size == (64, 64) and problem is None

    with pytest.warns(UserWarning, match="skipping 5 bad training image"):
        found = scan(tmp_path, replace(DATA, min_image_size=8, skip_bad_images=True))
    assert [im.path.name for im in found.images] == ["whole.png"]


def test_image_types_that_are_not_read_are_named_not_skipped_silently(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.heic").write_bytes(b"\0" * 10)
    (tmp_path / "source.psd").write_bytes(b"\0" * 10)
    (tmp_path / "a.txt").write_text("1girl")
    with pytest.warns(UserWarning) as caught:
        found = scan(tmp_path)
    assert [im.path.name for im in found.images] == ["a.png"]
    message = " ".join(str(w.message) for w in caught)
    assert (
        str(tmp_path / "b.heic") in message
        and str(tmp_path / "source.psd") in message
        and "convert them to PNG" in message
    )

    only = tmp_path / "only"
    only.mkdir()
    (only / "x.heic").write_bytes(b"\0")
    with pytest.raises(
        SabunError, match=r"holds no images .* sabun does not read \(\S+/x\.heic\): convert them to PNG"
    ):
        scan(only)


# -- captions ----------------------------------------------------------------------------------


def test_a_caption_that_is_not_utf8_is_an_error_naming_it(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    (tmp_path / "a.txt").write_bytes("1girl, café, naïve".encode("cp1252"))
    (tmp_path / "b.txt").write_text("1girl", encoding="utf-8")
    with pytest.raises(SabunError) as info:
        scan(tmp_path)
    message = str(info.value)
    assert message.startswith("1 bad caption file(s): ")
    assert f"{tmp_path / 'a.txt'}: caption file is not valid UTF-8 (byte 0xe9 at offset 10" in message
    assert "save it as UTF-8" in message and "b.txt" not in message
    with pytest.raises(SabunError, match=r"a\.txt: caption file is not valid UTF-8.*save it as UTF-8"):
        read_caption(tmp_path / "a.png", ".txt")

    (tmp_path / "a.txt").write_text("1girl", encoding="utf-16")
    with pytest.raises(SabunError, match=r"a\.txt: caption file is UTF-16, not UTF-8; save it as UTF-8"):
        scan(tmp_path)

    with pytest.warns(UserWarning, match=r"skipping 1 bad caption file\(s\): .*a\.txt"):
        found = scan(tmp_path, replace(DATA, skip_bad_images=True))
    assert [(im.path.name, im.caption) for im in found.images] == [("b.png", "1girl")]


def test_a_caption_with_a_byte_order_mark_is_read_without_it(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "a.caption").write_bytes(b"\xef\xbb\xbf" + "1girl,  café\r\nsolo".encode())
    assert read_caption(tmp_path / "a.png", ".caption") == "1girl, café solo"
    (found,) = scan(tmp_path, caption_extension=".caption").images
    assert found.caption == "1girl, café solo" and not found.caption.startswith("\ufeff")


def test_a_caption_extension_without_a_dot_is_an_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(SabunError, match=r"datasets\[0\]\.caption_extension: 'txt' .* e\.g\. '\.txt'"):
        scan(tmp_path, caption_extension="txt")


# -- report ------------------------------------------------------------------------------------


def test_ribbon_seen_is_better_higher_only_for_a_character_with_a_ribbon(tmp_path):
    from sabun.evaluate.metrics import Protocol
    from sabun.evaluate.report import METRICS, metrics_for, write_report
    from sabun.toyworld.character import load_character

    with_ribbon = load_character("target")
    without = replace(with_ribbon, ribbon=False)
    assert with_ribbon.ribbon
    directions = {spec.ribbon: {key: better for key, _, better in metrics_for(spec)} for spec in (with_ribbon, without)}
    assert directions[True]["ribbon"] == "higher" and directions[False]["ribbon"] == "lower"
    assert {k: v for k, v in directions[True].items() if k != "ribbon"} == {
        k: v for k, v in directions[False].items() if k != "ribbon"
    }
    assert [m[0] for m in metrics_for(without)] == [m[0] for m in METRICS]  # the keys are unchanged
    assert metrics_for(without.to_dict()) == metrics_for(without) and metrics_for(with_ribbon.to_dict()) == METRICS

    protocol = Protocol(seeds=1)
    grids = {"plain model": np.zeros((len(protocol.prompts()), 1, 8, 8, 3), np.uint8)}
    for spec in (with_ribbon, without):
        report = {"character": spec.to_dict(), "conditions": {"plain model": {key: 0.5 for key, _, _ in METRICS}}}
        write_report(tmp_path / f"{spec.ribbon}.html", report, grids, protocol)
    page = {flag: (tmp_path / f"{flag}.html").read_text() for flag in (True, False)}
    assert "ribbon seen (1girl) <small>(higher is better)</small>" in page[True]
    assert "ribbon seen (1girl; the character has none) <small>(lower is better)</small>" in page[False]
    assert "ribbon seen (1girl; the character has none) (lower is better)</text>" in page[False]  # its bar chart
    assert "(higher is better)" not in page[False].split("ribbon seen")[1].split("</tr>")[0]
