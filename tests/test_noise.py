"""Regional DDPM noise and the annotation localizer, checked against hand-computed numbers.

DDPM linear schedule (betas 1e-4..0.02 over 1000 steps), computed by hand:
  abar_0 = 1 - 1e-4 = 0.9999;  abar_1 = 0.9999 * (1 - (1e-4 + 0.0199/999)) = 0.99978009207
  t=50:  sqrt(abar) = 0.984861, sqrt(1 - abar) = 0.173345
  t=500: sqrt(abar) = 0.278921, sqrt(1 - abar) = 0.960314
  t=999: sqrt(abar) = 0.006353, sqrt(1 - abar) = 0.999980
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmedpo.data.images import load_image
from mmedpo.imaging.localizers import AnnotationLocalizer, mask_iou
from mmedpo.imaging.noise import add_regional_noise, alphas_cumprod, noise_batch, noise_image_file, noise_weight
from mmedpo.imaging.regions import NoRegion
from mmedpo.records import Sample
from mmedpo.registry import LOCALIZERS


def square_mask(size: int, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def random_image(shape: tuple[int, ...], dtype, seed: int = 7) -> np.ndarray:
    high = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, high + 1, size=shape, dtype=dtype)


# ---------------------------------------------------------------- schedule


def test_alphas_cumprod_matches_the_linear_schedule_by_hand():
    table = alphas_cumprod()
    assert table.shape == (1000,)
    assert table[0] == pytest.approx(0.9999, abs=1e-12)
    assert table[1] == pytest.approx(0.99978009207, abs=1e-10)
    assert np.sqrt(table[500]) == pytest.approx(0.278921, abs=1e-6)
    assert np.sqrt(table[999]) == pytest.approx(0.006353, abs=1e-6)
    with pytest.raises(ValueError):
        table[0] = 0.5  # the cached table is read-only


@pytest.mark.slow
def test_alphas_cumprod_agrees_with_diffusers():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    np.testing.assert_allclose(alphas_cumprod(), scheduler.alphas_cumprod.numpy(), rtol=1e-5)


# ---------------------------------------------------------------- outside the region


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [None, 3])
def test_pixels_outside_the_region_are_bit_for_bit_unchanged(dtype, channels):
    shape = (40, 40) if channels is None else (40, 40, channels)
    image = random_image(shape, dtype)
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:20, 8:30] = True
    mask[25:35, 2:6] = True  # a second, separate blob
    noised = add_regional_noise(image, mask, timestep=999, seed=3, edge_sigma=0)
    assert noised.dtype == image.dtype and noised.shape == image.shape
    assert np.array_equal(noised[~mask], image[~mask])
    faded = add_regional_noise(image, mask, timestep=999, seed=3)  # sigma 2: beyond the fade, bit for bit
    beyond = noise_weight(mask, 2.0) == 0
    assert np.array_equal(faded[beyond], image[beyond]) and beyond.sum() > 500
    changed = noised[mask] != image[mask]
    assert changed.mean() > 0.9  # and inside, almost every value moved


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_every_value_outside_the_region_survives_inside_the_lesion_box(dtype):
    # Outside the region but inside its bounding box pixels go through the float
    # blend with weight 0: every possible value must come back exactly.
    values = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    image = np.resize(values, (256, 256)) if dtype == np.uint16 else np.resize(values, (16, 16))
    size = image.shape[0]
    ring = np.zeros((size, size), dtype=bool)
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = True  # box = whole image, inside mostly outside
    noised = add_regional_noise(image, ring, timestep=999, seed=1, edge_sigma=0)
    assert np.array_equal(noised[~ring], image[~ring])
    beyond = noise_weight(ring, 2.0) == 0  # with the fade: every value beyond it comes back
    assert np.array_equal(add_regional_noise(image, ring, 999, seed=1)[beyond], image[beyond])


def test_a_uint8_soft_mask_leaves_its_zero_pixels_alone_and_scales_the_noise():
    image = np.full((64, 64), 32768, dtype=np.uint16)
    hard = np.zeros((64, 64), dtype=np.uint8)
    hard[:, 32:] = 255
    half = np.where(hard > 0, 128, 0).astype(np.uint8)
    full_change = add_regional_noise(image, hard, 500, seed=1, edge_sigma=0).astype(float) - 32768
    half_change = add_regional_noise(image, half, 500, seed=1, edge_sigma=0).astype(float) - 32768
    assert np.all(half_change[:, :32] == 0)
    # Same seed, same noise: a 128/255 mask moves each pixel 128/255 of the way.
    np.testing.assert_allclose(half_change[:, 32:], full_change[:, 32:] * 128 / 255, atol=1.0)


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_different_bytes():
    image = random_image((32, 32, 3), np.uint8)
    mask = square_mask(32, 4, 28, 4, 28)
    first = add_regional_noise(image, mask, 300, seed=11)
    again = add_regional_noise(image.copy(), mask.copy(), 300, seed=11)
    other = add_regional_noise(image, mask, 300, seed=12)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_noise_batch_gives_each_image_the_bytes_it_gets_alone():
    images = np.stack([random_image((24, 24, 3), np.uint8, seed=s) for s in range(3)])
    masks = np.stack([square_mask(24, 2 + s, 12 + s, 3, 20) for s in range(3)])
    seeds = [5, 6, 7]
    batch = noise_batch(images, masks, 400, seeds)
    for image, mask, seed, result in zip(images, masks, seeds, batch):
        assert np.array_equal(result, add_regional_noise(image, mask, 400, seed))
    shared = noise_batch(images, masks[0], 400, seeds)  # one (H, W) mask for all
    assert np.array_equal(shared[0], batch[0])
    assert np.array_equal(shared[1], add_regional_noise(images[1], masks[0], 400, 6))


# ---------------------------------------------------------------- the noise itself


def test_white_region_is_clipped_not_wrapped():
    # Clean value +1 at t=500 becomes 0.278921 + 0.960314 * eps, clipped to [-1, 1]:
    #   P(255) = P(eps > (1 - 0.278921) / 0.960314 = 0.7509) = 0.2264
    #   P(0)   = P(eps < (-1 - 0.278921) / 0.960314 = -1.3318) = 0.0915
    #   median = (0.278921 + 1) / 2 * 255 = 163.1
    # uint8 wrap-around would instead scatter values over the whole range with
    # most of the mass near 0 (255 + small noise wraps to small numbers).
    image = np.full((128, 128), 255, dtype=np.uint8)
    noised = add_regional_noise(image, np.ones((128, 128), dtype=bool), 500, seed=2).astype(float)
    assert (noised == 255).mean() == pytest.approx(0.2264, abs=0.015)
    assert (noised == 0).mean() == pytest.approx(0.0915, abs=0.01)
    assert np.median(noised) == pytest.approx(163.1, abs=3)
    assert (noised < 20).mean() < 0.12


def test_mean_and_spread_follow_sqrt_abar():
    # uint16 49151 is x0 = 49151 * 2 / 65535 - 1 = 0.499992. At t=50 the mean is
    # 0.984861 * 0.499992 = 0.492423 -> (0.492423 + 1) / 2 * 65535 = 48903.4, and
    # the spread 0.173345 * 32767.5 = 5680.1 (clipping at +1 is 2.9 sigma away: negligible).
    # Using abar instead of sqrt(abar) would put the mean at 48659.
    image = np.full((256, 256), 49151, dtype=np.uint16)
    noised = add_regional_noise(image, np.ones((256, 256), dtype=bool), 50, seed=4).astype(float)
    assert noised.mean() == pytest.approx(48903.4, abs=100)
    assert noised.std() == pytest.approx(5680.1, rel=0.02)


def test_t0_changes_almost_nothing_inside():
    # At t=0 the noise std is 0.01 in [-1, 1], i.e. 1.275 grey levels; rounding to
    # integers adds 1/12 variance: std of the change = sqrt(1.275^2 + 1/12) = 1.307.
    image = np.full((64, 64), 128, dtype=np.uint8)
    change = add_regional_noise(image, np.ones((64, 64), dtype=bool), 0, seed=5).astype(float) - 128
    assert change.std() == pytest.approx(1.307, abs=0.08)
    assert np.abs(change).max() <= 7


def test_t999_is_nearly_pure_noise_inside():
    # At t=999 the image keeps 0.0064 of its signal: the result is clip(N(0, 1), -1, 1),
    # whose std is sqrt(P(|Z|<1) - 2 phi(1) + P(|Z|>1)) = sqrt(0.1988 + 0.3173) = 0.7184,
    # i.e. 91.6 grey levels, with P(0) = P(255) = 0.1587 and no trace of the image.
    image = random_image((128, 128), np.uint8)
    noised = add_regional_noise(image, np.ones((128, 128), dtype=bool), 999, seed=6).astype(float)
    assert noised.std() == pytest.approx(91.6, abs=2.5)
    assert (noised == 0).mean() == pytest.approx(0.1587, abs=0.015)
    assert (noised == 255).mean() == pytest.approx(0.1587, abs=0.015)
    assert abs(np.corrcoef(noised.ravel(), image.ravel().astype(float))[0, 1]) < 0.05


def test_every_lesion_pixel_gets_the_full_step_and_the_fade_lies_outside():
    # The weight map: 1 on every region pixel; outside, exp(-d^2 / 8) (sigma 2) at distance d
    # from the region: d=1 -> 0.882497, d=3 -> 0.324652, d=6 -> 0.011109; 0 beyond 6 (3 sigma).
    mask = square_mask(40, 10, 30, 10, 30)
    weight = noise_weight(mask, edge_sigma=2.0)
    assert np.all(weight[mask] == 1.0)
    assert weight[9, 20] == pytest.approx(0.882497, abs=1e-6) and weight[7, 20] == pytest.approx(0.324652, abs=1e-6)
    assert weight[4, 20] == pytest.approx(0.011109, abs=1e-6) and weight[3, 20] == 0.0
    assert np.array_equal(noise_weight(mask, edge_sigma=0), mask.astype(float))
    # Measured on the noised images: per pixel, the spread over 400 seeds of a uniform uint16 image
    # noised at t=500, against the spread with no fade at all, is the weight that pixel's noise got.
    image = np.full((40, 40), 32768, dtype=np.uint16)
    seeds = range(400)
    soft = np.stack([add_regional_noise(image, mask, 500, seed=s, edge_sigma=2.0) for s in seeds]).astype(float)
    hard = np.stack([add_regional_noise(image, mask, 500, seed=s, edge_sigma=0.0) for s in seeds]).astype(float)
    measured = soft.std(axis=0) / hard.std(axis=0)[mask].mean()
    assert measured[mask].mean() == pytest.approx(1.0, abs=0.01)
    assert measured[mask].min() > 0.85  # sampling error of a std over 400 draws: ~4%; the old ramp gave 0.12
    assert measured[9, 12:28].mean() == pytest.approx(0.882497, abs=0.03)  # the fade, one pixel outside
    beyond = noise_weight(mask, 2.0) == 0
    assert np.all(soft[:, beyond] == 32768)  # bit for bit beyond the fade


def test_whole_image_mask_noises_the_border_too():
    image = np.full((32, 32), 32768, dtype=np.uint16)
    hard = add_regional_noise(image, np.ones((32, 32), dtype=bool), 200, seed=9, edge_sigma=0)
    soft = add_regional_noise(image, np.ones((32, 32), dtype=bool), 200, seed=9, edge_sigma=2.0)
    assert np.array_equal(hard, soft)  # the image border is no edge


def test_rgb_channels_keep_their_order():
    red = np.zeros((32, 32, 3), dtype=np.uint8)
    red[..., 0] = 255
    assert np.array_equal(add_regional_noise(red, np.zeros((32, 32), dtype=bool), 999, seed=1), red)
    noised = add_regional_noise(red, np.ones((32, 32), dtype=bool), 50, seed=1).astype(float)
    means = noised.reshape(-1, 3).mean(axis=0)
    # Red +1 -> ~0.985 before clipping (mean ~ 247); green and blue -1 -> ~ 7.
    assert means[0] > 235 and means[1] < 20 and means[2] < 20


def test_bad_input_is_refused_with_a_clear_message():
    image = np.zeros((8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        add_regional_noise(image.astype(np.float32), np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="do not fit"):
        add_regional_noise(image, np.ones((8, 9), bool))
    with pytest.raises(ValueError, match="timestep"):
        add_regional_noise(image, np.ones((8, 8), bool), timestep=1000)
    with pytest.raises(ValueError, match="0..255"):
        add_regional_noise(image, np.full((8, 8), 300, dtype=np.int32))


# ---------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("mode", "pixels", "suffix"),
    [
        ("RGB", random_image((30, 30, 3), np.uint8), ".png"),
        ("L", random_image((30, 30), np.uint8), ".png"),
        ("I;16", random_image((30, 30), np.uint16) // 4 + 1000, ".png"),
    ],
)
def test_noise_image_file_keeps_8_bit_files_and_noises_what_the_model_sees_of_16_bit(tmp_path, mode, pixels, suffix):
    src = tmp_path / f"in{suffix}"
    Image.fromarray(pixels).save(src)
    mask = square_mask(30, 5, 15, 5, 15)
    out = noise_image_file(src, mask, tmp_path / "out" / "noised.png", timestep=500, seed=1)
    with Image.open(out) as written:
        assert written.format == "PNG"
        back = np.asarray(written)
    # A 16-bit file becomes its 8-bit rendering (stretched over its own range), as load_image shows it.
    source = pixels if mode != "I;16" else np.asarray(load_image(src))[..., 0]
    assert back.dtype == np.uint8 and back.shape == source.shape
    assert np.array_equal(back, add_regional_noise(source, mask, 500, seed=1))
    beyond = noise_weight(mask, 2.0) == 0
    assert np.array_equal(back[beyond], source[beyond])
    assert not list((tmp_path / "out").glob("*.partial"))


def test_noise_image_file_reads_jpeg_and_keeps_colour(tmp_path):
    red = np.zeros((24, 24, 3), dtype=np.uint8)
    red[..., 0] = 250
    Image.fromarray(red).save(tmp_path / "red.jpg", quality=100)
    with Image.open(tmp_path / "red.jpg") as decoded:
        clean = np.asarray(decoded)
    out = noise_image_file(tmp_path / "red.jpg", square_mask(24, 0, 12, 0, 24), tmp_path / "red.png", 30, 0)
    back = np.asarray(Image.open(out))
    assert np.array_equal(back[12 + 6 :], clean[12 + 6 :])  # beyond the region and its fade (3 sigma = 6 px)
    assert back[:12, :, 0].mean() > 200 > back[:12, :, 1].mean()


# ---------------------------------------------------------------- localizer


def write_case(tmp_path, mask_pixels: np.ndarray, findings=None, image_size=(100, 100)) -> Sample:
    Image.new("L", image_size, 90).save(tmp_path / "cxr.png")
    Image.fromarray(mask_pixels).save(tmp_path / "cxr_mask.png")
    meta = {"lesion_mask": "cxr_mask.png"}
    if findings is not None:
        meta["findings"] = findings
    return Sample(id="s1", task="vqa", image="cxr.png", question="Is there a nodule?", answer="yes", meta=meta)


def test_annotation_localizer_resizes_then_dilates_with_a_disk(tmp_path):
    # A 10x10 square in a 50x50 mask is a 20x20 square in the 100x100 image. Grown by a
    # radius-2 disk it is 24x24 less 3 pixels at each corner ((2,1), (1,2), (2,2) are
    # outside the disk): 576 - 12 = 564 pixels, 5.64% of the image.
    small = np.zeros((50, 50), dtype=np.uint8)
    small[10:20, 20:30] = 255
    sample = write_case(tmp_path, small, findings=["nodule", "effusion"])
    region = LOCALIZERS.load("annotation")().localize(sample, [tmp_path])
    assert region.mask.dtype == bool and region.mask.shape == (100, 100)
    assert region.mask.sum() == 564
    assert region.area_fraction == pytest.approx(0.0564)
    assert region.confidence == 0.0  # drawn on a flat grey image: the annotation shows nothing
    assert region.label == "nodule, effusion"
    assert region.mask[18:42, 38:62].sum() == 564  # centred on the lesion


def test_annotation_localizer_refuses_a_mask_covering_most_of_the_image(tmp_path):
    big = np.zeros((100, 100), dtype=np.uint8)
    big[:70, :] = 1
    sample = write_case(tmp_path, big)
    with pytest.raises(NoRegion, match=r"s1: lesion mask covers 7[0-9]\.\d% of the image \(max 60\.0%\)"):
        AnnotationLocalizer().localize(sample, [tmp_path])


def test_annotation_localizer_refuses_tiny_and_missing_masks(tmp_path):
    dot = np.zeros((100, 100), dtype=np.uint8)
    dot[50, 50] = 255
    sample = write_case(tmp_path, dot)
    with pytest.raises(NoRegion, match="min"):
        AnnotationLocalizer(dilation=0).localize(sample, [tmp_path])  # 1 px = 0.01% < 0.05%
    assert AnnotationLocalizer(dilation=1).localize(sample, [tmp_path]).mask.sum() == 5  # a plus sign
    unannotated = sample.model_copy(update={"meta": {}})
    with pytest.raises(NoRegion, match="no lesion_mask"):
        AnnotationLocalizer().localize(unannotated, [tmp_path])


def test_annotation_localizer_unites_several_mask_files(tmp_path):
    first = np.zeros((100, 100), dtype=np.uint8)
    first[10:20, 10:20] = 255  # 100 px
    second = np.zeros((100, 100, 3), dtype=np.uint8)
    second[50:60, 50:55, 1] = 255  # 50 px, an RGB mask file: any channel counts
    sample = write_case(tmp_path, first, findings=[{"name": "nodule"}, {"name": "effusion"}])
    Image.fromarray(second).save(tmp_path / "second.png")
    sample.meta["lesion_mask"] = ["cxr_mask.png", "second.png"]
    region = AnnotationLocalizer(dilation=0).localize(sample, [tmp_path])
    assert region.mask.sum() == 150 and region.area_fraction == pytest.approx(0.015)
    assert region.label == "nodule, effusion"


def test_mask_iou_hand_cases():
    a = np.array([[1, 1, 0, 0]], dtype=bool)
    b = np.array([[0, 1, 1, 0]], dtype=bool)
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, ~a) == 0.0
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert mask_iou(np.array([[0, 255, 255, 255]], dtype=np.uint8), b) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="shapes"):
        mask_iou(a, np.zeros((2, 2), bool))
