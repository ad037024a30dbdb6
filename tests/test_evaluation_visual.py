"""Visual dependence with two stand-in models: one that ignores the image and one that reads the lesion."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmedpo.evaluation.visual_dependence import measured_line, visual_dependence
from mmedpo.records import Sample

LESION = (slice(12, 20), slice(12, 20))  # rows, columns of the bright square


@pytest.fixture
def lesion_samples(tmp_path):
    pixels = np.zeros((32, 32), dtype=np.uint8)
    pixels[LESION] = 255
    Image.fromarray(pixels).save(tmp_path / "chest.png")
    Image.fromarray(pixels).save(tmp_path / "chest_mask.png")  # the lesion is the bright square
    annotated = {"lesion_mask": "chest_mask.png"}
    return [
        Sample(id="q1", task="vqa", image="chest.png", question="Is there a nodule?", answer="yes",
               answer_type="closed", meta=annotated),
        Sample(id="q2", task="vqa", image="chest.png", question="Any lesion?", answer="yes",
               answer_type="closed", meta=annotated),
        Sample(id="q3", task="vqa", image="chest.png", question="Effusion?", answer="no", answer_type="closed"),
    ]  # fmt: skip


def ignores_the_image(task, images, prompts):
    return ["yes"] * len(images)


def reads_the_lesion(task, images, prompts):
    # "yes" when the lesion square is bright: true on the clean image only.
    return ["yes" if np.asarray(image.convert("L"))[LESION].mean() > 200 else "no" for image in images]


def test_a_model_that_ignores_the_image_scores_zero(tmp_path, lesion_samples):
    result = visual_dependence(ignores_the_image, lesion_samples, [tmp_path], timestep=999)
    # q3 has no lesion annotation: skipped with the localizer's reason, and counted.
    assert (result["n_samples"], result["n_measured"], result["n_skipped"]) == (3, 2, 1)
    assert result["skipped"]["q3"].startswith("sample q3: no lesion_mask")
    assert result["skip_reasons"] == {"no lesion_mask or lesion_boxes annotation": 1}
    assert result["localizer"] == "annotation"
    assert measured_line(result) == (
        "visual dependence measured 2 of 3 samples; skipped: no lesion_mask or lesion_boxes annotation (1)"
    )
    overall = result["overall"]
    assert (overall["clean"], overall["noised"], overall["blank"]) == (1.0, 1.0, 1.0)
    assert (overall["changed_noised"], overall["changed_blank"], overall["drop_noised"], overall["drop_blank"]) == (
        0.0,
        0.0,
        0.0,
        0.0,
    )


def test_a_model_that_reads_the_lesion_depends_on_it(tmp_path, lesion_samples):
    result = visual_dependence(reads_the_lesion, lesion_samples, [tmp_path], timestep=999, seed=3)
    closed = result["by_type"]["closed"]
    assert closed["n"] == 2
    assert (closed["clean"], closed["noised"], closed["blank"]) == (1.0, 0.0, 0.0)
    assert (closed["changed_noised"], closed["changed_blank"], closed["drop_noised"]) == (1.0, 1.0, 1.0)
    answers = {row["id"]: (row["clean"], row["noised"], row["blank"]) for row in result["answers"]}
    assert answers == {"q1": ("yes", "no", "no"), "q2": ("yes", "no", "no")}
    assert result == visual_dependence(reads_the_lesion, lesion_samples, [tmp_path], timestep=999, seed=3)


def test_prompts_reach_the_model(tmp_path, lesion_samples):
    seen = []

    def recorder(task, images, prompts):
        seen.extend(prompts)
        return ["yes"] * len(images)

    visual_dependence(recorder, lesion_samples[:1], [tmp_path], prompts={"vqa": "{question} Answer yes or no."})
    assert seen == ["Is there a nodule? Answer yes or no."] * 3  # clean, noised, blank
