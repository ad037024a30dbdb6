"""The attribution localizer on real HF VLMs (the tiny LLaVA, LLaVA-Med's and Qwen2-VL's layouts), the auto
choice of the run's localizer, and what a run checks of its samples before any expensive stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmedpo.config import CurateVisualConfig, load_config
from mmedpo.imaging.attribution import AttributionLocalizer, _processor_view, _qwen_grid
from mmedpo.imaging.regions import concentration
from mmedpo.imaging.run_localizer import FixedRegions, evaluation_localizer, localizer_problem, resolve_localizer
from mmedpo.layout import RunLayout
from mmedpo.models.vlm import generate_answers, load_vlm
from mmedpo.pipeline import run_pipeline
from mmedpo.records import Sample, write_jsonl
from test_other_vlms import llava_med_dir, qwen2_vl_dir, qwen_processor_class  # noqa: F401 (fixtures)


def test_concentration_is_zero_for_a_flat_map_and_one_for_a_map_inside_the_region():
    region = np.zeros((10, 10), dtype=bool)
    region[:2, :5] = True  # 10% of the image
    assert concentration(np.ones((10, 10)), region) == 0.0
    assert concentration(region.astype(float), region) == 1.0
    half = region.astype(float) + np.where(region, 0.0, 10 / 90)  # half the mass inside: (0.5 - 0.1) / 0.9
    assert concentration(half, region) == pytest.approx(0.4 / 0.9)
    assert concentration(np.zeros((10, 10)), region) == 0.0


def test_the_processor_view_is_the_centre_crop_a_clip_processor_shows(tiny_vlm_dir):
    _, processor = load_vlm(tiny_vlm_dir)
    # Shortest edge 48 -> 32 (scale 2/3): 64 rows become 42.7, of which the centre 32 are shown, i.e. rows 8-56.
    assert _processor_view(processor.image_processor, (48, 64)) == (0, 8, 48, 56)
    assert _processor_view(processor.image_processor, (64, 48)) == (8, 0, 56, 48)
    assert _processor_view(object(), (64, 48)) == (0, 0, 64, 48)  # no crop: the whole image


def test_qwen_patches_map_back_onto_the_image_grid(qwen2_vl_dir):  # noqa: F811
    _, processor = load_vlm(qwen2_vl_dir)
    image = Image.new("RGB", (56, 56), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 0, 27, 13), fill=(255, 255, 255))  # the top-left 28 x 14 px: 2 x 1 patches
    inputs = processor.image_processor([image], return_tensors="pt")
    per_patch = inputs["pixel_values"].sum(1)  # bright patches have high values
    grid = _qwen_grid(per_patch, inputs["image_grid_thw"][0], processor.image_processor.merge_size)
    assert grid.shape == (4, 4)
    bright = (grid > grid.mean()).nonzero().tolist()
    assert bright == [[0, 0], [0, 1]]  # row 0, columns 0 and 1, as drawn


@pytest.fixture
def blob_image(tmp_path):
    image = Image.new("RGB", (48, 64), (30, 30, 30))  # not square: the CLIP processor crops rows
    ImageDraw.Draw(image).ellipse((6, 20, 22, 36), fill=(240, 240, 240))
    image.save(tmp_path / "blob.png")
    return Sample(id="s1", task="vqa", image="blob.png", question="Is there a nodule?", answer="yes")


def test_the_tiny_llava_explains_its_own_answer(tiny_vlm_dir, tmp_path, blob_image):
    localizer = AttributionLocalizer(tiny_vlm_dir)
    region = localizer.localize(blob_image, [tmp_path])
    assert region.mask.shape == (64, 48) and region.heat.shape == (64, 48)
    # Rows the processor crops away can carry no attribution.
    assert region.heat[:8].max() == 0 and region.heat[56:].max() == 0 and region.heat[8:56].max() == 1.0
    assert 0 < region.area_fraction <= 0.6 and region.confidence == pytest.approx(
        concentration(region.heat, region.mask)
    )
    # The answer explained is the model's own greedy answer.
    model, processor = load_vlm(tiny_vlm_dir)
    (greedy,) = generate_answers(model, processor, [Image.open(tmp_path / "blob.png").convert("RGB")],
                                 [blob_image.question], max_new_tokens=12)  # fmt: skip
    assert region.label == f"attribution of {greedy[0]!r}"
    again = AttributionLocalizer(tiny_vlm_dir).localize(blob_image, [tmp_path])
    assert np.array_equal(again.mask, region.mask) and again.confidence == region.confidence
    gradients = AttributionLocalizer(tiny_vlm_dir, method="integrated-gradients", steps=4).localize(
        blob_image, [tmp_path]
    )
    assert gradients.mask.shape == (64, 48) and 0 <= gradients.confidence <= 1


@pytest.mark.parametrize("method", ["occlusion", "integrated-gradients"])
def test_other_vlm_layouts(method, tmp_path, blob_image, llava_med_dir, qwen2_vl_dir):  # noqa: F811
    for model_dir in (llava_med_dir, qwen2_vl_dir):
        region = AttributionLocalizer(model_dir, method=method, steps=4).localize(blob_image, [tmp_path])
        assert region.mask.shape == (64, 48) and 0 <= region.confidence <= 1 and region.mask.any()


def test_auto_is_the_annotation_where_samples_have_one_else_the_attribution():
    plain = Sample(id="a", task="vqa", image="a.png", question="q?", answer="x")
    masked = plain.model_copy(update={"id": "b", "meta": {"lesion_mask": "m.png"}})
    assert resolve_localizer("auto", [plain, masked]) == (
        "annotation",
        "localizer: annotation (auto: 1 of 2 samples carry lesion masks)",
    )
    assert resolve_localizer("auto", [plain])[0] == "attribution"
    assert resolve_localizer("gradcam", [masked]) == ("gradcam", "localizer: gradcam")
    settings = CurateVisualConfig(localizer="annotation")
    assert "no curated sample has one: set curate_visual.localizer: auto" in localizer_problem(settings, [plain], [])
    assert localizer_problem(settings, [masked], []) is None
    gradcam = localizer_problem(CurateVisualConfig(localizer="gradcam"), [masked], [plain])
    assert "no sft sample lists one: set curate_visual.classifier" in gradcam
    assert localizer_problem(CurateVisualConfig(localizer="gradcam", classifier="my.pt"), [], []) is None


def test_visual_dependence_measures_on_the_test_masks_else_the_run_localizer(tiny_vlm_dir, tmp_path, blob_image):
    masked = blob_image.model_copy(update={"id": "m", "meta": {"lesion_mask": "blob.png"}})
    settings = CurateVisualConfig()
    localizer, note = evaluation_localizer(settings, [masked], [], [tmp_path], None, tiny_vlm_dir)
    assert (localizer.name, note) == ("annotation", "localizer: annotation (the evaluated split's lesion masks)")
    localizer, note = evaluation_localizer(settings, [blob_image], [], [tmp_path], None, tiny_vlm_dir)
    assert (localizer.name, note) == ("attribution", "localizer: attribution (the evaluated split has no lesion masks)")
    other = blob_image.model_copy(update={"id": "s2", "question": "Where is it?"})  # same image: one region
    regions = FixedRegions(localizer, [blob_image, other], [tmp_path])
    assert localizer._loaded is None  # released once every region is found
    assert np.array_equal(regions.localize(other, [tmp_path]).mask, regions.localize(blob_image, [tmp_path]).mask)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.dataset=vqa-rad", "curate_visual.localizer=annotation"],
            "curate_visual.localizer 'annotation' needs lesion masks or boxes, which the vqa-rad reader does not "
            "give: set curate_visual.localizer: auto (the target model's attribution), or "
            "curate_visual.localizer_options.boxes_file (COCO boxes)",
        ),
        (
            ["data.dataset=llava", "curate_visual.localizer=gradcam"],
            "curate_visual.localizer 'gradcam' needs meta['findings'] to train its default classifier, which the "
            "llava reader does not give: set curate_visual.localizer: auto (the target model's attribution), or "
            "curate_visual.classifier (and classifier_factory)",
        ),
        (["data.dataset=vqa-rad", "curate_visual.localizer=atribution"], "did you mean 'attribution'? valid: auto,"),
    ],
)
def test_what_the_reader_never_gives_is_refused_on_load(overrides, message):
    with pytest.raises(ValueError) as error:
        load_config(None, ["data.source=dataset", "data.image_root=x", *overrides])
    assert message in str(error.value) and "\n" not in str(error.value)
    load_config(
        None, ["data.source=dataset", "data.image_root=x", "data.dataset=slake", "curate_visual.localizer=annotation"]
    )


def test_a_run_refuses_after_reading_its_samples_before_any_model_stage(tmp_path):
    samples = [
        Sample(id=f"s{i}", task="vqa", image=f"{i}.png", question="What organ?", answer="liver", split=split)
        for i, split in enumerate(["train", "train", "test"])
    ]
    write_jsonl(tmp_path / "samples.jsonl", samples)
    config = load_config(
        None,
        [
            "data.source=samples",
            f"data.samples={tmp_path / 'samples.jsonl'}",
            "curate_visual.localizer=annotation",
            f"runs_dir={tmp_path / 'runs'}",
        ],
    )
    with pytest.raises(ValueError) as error:
        run_pipeline(config, show_progress=False)
    assert str(error.value).splitlines() == [
        "the samples cannot feed this run:",
        "  model.sft_epochs is 3 but the 'sft' split has no samples (samples per split: {'pref': 2, 'test': 1}): "
        "set model.sft_epochs=0, or map a dataset split to sft, "
        "e.g. data.split_map={train: {sft: 0.5, pref: 0.5}, test: test}",
        "  curate_visual.localizer 'annotation' reads meta['lesion_mask'] or meta['lesion_boxes'], and no curated "
        "sample has one: set curate_visual.localizer: auto (the target model's attribution)",
    ]
    layout = RunLayout.of(config)
    assert json.loads(layout.stage_state("samples").read_text())["status"] == "done"
    assert not layout.stage_state("base").exists()  # nothing expensive ran


def test_a_failed_samples_stage_is_recorded_as_failed(tmp_path):
    (tmp_path / "data").mkdir()
    config = load_config(
        None,
        ["data.source=dataset", "data.dataset=llava", f"data.image_root={tmp_path / 'data'}", f"runs_dir={tmp_path}"],
    )
    with pytest.raises(FileNotFoundError):
        run_pipeline(config, show_progress=False)
    state = json.loads(RunLayout.of(config).stage_state("samples").read_text())
    assert state["status"] == "failed" and "none of train.json" in state["error"]


def test_vision_pretraining_is_skipped_with_a_note_where_no_report_names_a_finding(tmp_path):
    from mmedpo.config import BaseModelConfig
    from mmedpo.models.base import make_base_model

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    vqa = [Sample(id="q", task="vqa", image="a.png", question="What color?", answer="red", split="sft")]
    settings = BaseModelConfig(image_size=32, text_hidden=32, vision_hidden=32, layers=1, sft_epochs=0)
    summary = make_base_model(settings, vqa, [tmp_path], tmp_path / "init", tmp_path / "base", seed=0)
    assert summary["notes"] == [
        "vision pretraining skipped: its labels are the findings the sft split's reports name, and 0 report "
        "image(s) name none; the tower learns only through SFT"
    ]
    assert "vision_pretrain" not in summary and (tmp_path / "base" / "config.json").exists()
