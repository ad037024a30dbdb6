"""Every image kind reaches models as 8-bit RGB; DICOM through its display pipeline."""

import os

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from mmedpo.data.dicom import window
from mmedpo.data.images import ImageError, load_image, open_image, resolve_image


def pixels(image):
    assert image.mode == "RGB"
    return np.asarray(image)[..., 0].astype(int)


def test_16_bit_png_is_stretched_to_its_range(tmp_path):
    data = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")  # really 16-bit on disk
    # (v - 1000) / 4000 * 255: 0, 63.75, 127.5 (rounds to even), 255
    assert pixels(load_image(tmp_path / "a.png")).tolist() == [[0, 64], [128, 255]]


def test_8_bit_gray_rgb_jpeg_keep_their_values(tmp_path):
    Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8)).save(tmp_path / "g.png")
    assert pixels(load_image(tmp_path / "g.png")).tolist() == [[0, 100], [200, 255]]
    Image.new("RGB", (8, 8), (10, 120, 240)).save(tmp_path / "c.png")
    assert np.asarray(load_image(tmp_path / "c.png"))[0, 0].tolist() == [10, 120, 240]
    Image.new("L", (16, 16), 128).save(tmp_path / "j.jpg", quality=95)
    assert abs(pixels(load_image(tmp_path / "j.jpg"))[8, 8] - 128) <= 1


def test_rgba_and_transparent_palette_are_composited_on_black(tmp_path):
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque
    rgba[0, 1] = (200, 100, 50, 64)  # 64/255 opaque: 200*64/255 = 50.2
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    image = np.asarray(load_image(tmp_path / "a.png"))
    assert image[0, 0].tolist() == [200, 100, 50]
    assert image[0, 1].tolist() == [50, 25, 13]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 90, 180, 30] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.putpixel((1, 0), 0)
    palette.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "p.png")).tolist() == [[[90, 180, 30], [0, 0, 0]]]


def test_ct_without_window_is_stretched_over_its_range():
    # CT_small stores 128..2191; pixel [0, 0] stores 175: (175 - 128) / 2063 * 255 = 5.8
    assert pixels(load_image(get_testdata_file("CT_small.dcm")))[0, 0] == 6


def test_mr_window_from_the_file():
    # MR_small: centre 600, width 1600; pixel [0, 0] = 905: ((905 - 599.5) / 1599 + 0.5) * 255 = 176.2
    image = load_image(get_testdata_file("MR_small.dcm"))
    assert image.size == (64, 64) and pixels(image)[0, 0] == 176


def test_rescale_applies_before_the_window(tmp_path):
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.WindowCenter, dataset.WindowWidth = 40, 400  # soft tissue, in Hounsfield units
    dataset.save_as(tmp_path / "ct.dcm")
    image = pixels(load_image(tmp_path / "ct.dcm"))
    # stored 1100 at [6, 72]; slope 1, intercept -1024: 76 HU -> ((76 - 39.5) / 399 + 0.5) * 255 = 150.8
    assert dataset.pixel_array[6, 72] == 1100 and image[6, 72] == 151
    # stored 175 -> -849 HU, below the window: black. Without the rescale it would be white.
    assert image[0, 0] == 0


def test_monochrome1_is_inverted(tmp_path):
    dataset = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(tmp_path / "m1.dcm")
    assert pixels(load_image(tmp_path / "m1.dcm"))[0, 0] == 255 - 176


def test_multi_frame_gives_the_chosen_frame():
    path = get_testdata_file("rtdose.dcm")  # 15 frames of 10x10
    # frame 0: 795000..1254000, [0, 0] = 1249000 -> 252.2; frame 5: 798000..1254000, 1250000 -> 252.8
    assert pixels(load_image(path))[0, 0] == 252
    assert pixels(load_image(path, frame=5))[0, 0] == 253
    with pytest.raises(ImageError, match="frame 15 asked for, the file has 15"):
        load_image(path, frame=15)


def test_colour_dicom_and_palette_dicom_are_rgb():
    assert np.asarray(load_image(get_testdata_file("SC_rgb_rle_2frame.dcm")))[0, 0].tolist() == [255, 0, 0]
    palette = np.asarray(load_image(get_testdata_file("examples_palette.dcm")))
    assert (palette[..., 0] != palette[..., 1]).any()  # the colour table was applied: not gray


def test_window_formula_at_its_edges():
    values = np.array([-1000.0, 39.5, 40.0, 239.0, 1000.0])
    # centre 40, width 400: 0 below -160, 255 from 239.5 up; 39.5 -> 0.5 -> 127.5 -> 128
    assert window(values, 40, 400).tolist() == [0, 128, 128, 255, 255]


@pytest.mark.parametrize(
    "name, message",
    [("MR_truncated.dcm", "less than expected"), ("rtplan.dcm", "no pixel data")],
)
def test_broken_dicom_is_an_image_error_saying_why(name, message):
    with pytest.raises(ImageError, match=message):
        load_image(get_testdata_file(name))


def test_corrupt_truncated_and_empty_files_are_image_errors(tmp_path):
    Image.new("L", (64, 64), 7).save(tmp_path / "ok.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("truncated.jpg", "garbage.png", "empty.png"):
        with pytest.raises(ImageError, match=name):
            load_image(tmp_path / name)


def test_paths_escaping_the_root_are_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    Image.new("L", (4, 4)).save(outside / "x.png")
    os.symlink(outside / "x.png", root / "link.png")
    for relative in ("../outside/x.png", str(outside / "x.png"), "link.png"):
        with pytest.raises(ImageError, match="escapes|relative"):
            resolve_image(relative, [root])
    Image.new("L", (4, 4), 9).save(root / "in.png")
    assert pixels(open_image("in.png", [root]))[0, 0] == 9


def test_the_guard_limits_are_inclusive_and_read_from_the_header(tmp_path):
    from mmedpo.data.images import MAX_ASPECT_RATIO, MAX_PIXELS, check_size

    check_size("a.png", MAX_ASPECT_RATIO * 3, 3)  # exactly 20 : 1 passes
    with pytest.raises(ImageError, match=r"a.png is 63 x 3 pixels: more elongated than 20 : 1 \(the limit\)"):
        check_size("a.png", MAX_ASPECT_RATIO * 3 + 3, 3)
    check_size("a.png", 10_000, MAX_PIXELS // 10_000)  # exactly 50 MP passes
    with pytest.raises(ImageError, match=r"a.png is 10000 x 5001 = 50010000 pixels \(limit 50000000\)"):
        check_size("a.png", 10_000, MAX_PIXELS // 10_000 + 1)
    Image.new("L", (20, 1)).save(tmp_path / "ok.png")
    assert load_image(tmp_path / "ok.png").size == (20, 1)


def test_file_system_errors_are_not_image_errors(tmp_path, monkeypatch):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(PermissionError):  # the system's problem: it must not become a reject
        load_image(tmp_path / "a.png")


def test_portable_images_are_the_file_or_the_picture_the_model_sees(tmp_path):
    from mmedpo.data.images import portable_image

    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "rgb.jpg", quality=95)
    data, converted = portable_image(tmp_path / "rgb.jpg")
    assert data == (tmp_path / "rgb.jpg").read_bytes() and not converted  # 8-bit: passed on untouched
    rgba = np.zeros((1, 1, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 64)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    dicom = get_testdata_file("MR_small.dcm")
    for path in (tmp_path / "a.png", dicom):
        data, converted = portable_image(path)
        (tmp_path / "out.png").write_bytes(data)
        assert converted and np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(load_image(path)))
