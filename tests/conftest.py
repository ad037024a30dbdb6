"""Fixtures shared by every test file: a tiny LLaVA and a few small images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw


def pytest_configure(config):
    # Tiny models run faster on one thread; the suite uses the cores through
    # pytest-xdist workers instead (see the Makefile).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _undo_command_line_environment(monkeypatch):
    """A command run in-process (CliRunner) switches progress bars off in os.environ; undo it after the test."""
    from mmedpo.progress import BARS_OFF

    for name in BARS_OFF:
        monkeypatch.delenv(name, raising=False)


CORPUS = [
    "Is there a pleural effusion?",
    "Is there a nodule in the left lung?",
    "Is there a nodule in the right lung?",
    "Is the heart enlarged?",
    "Is there a pneumothorax?",
    "Is there consolidation in the right lower lobe?",
    "Where is the nodule located?",
    "What abnormality is seen in the left lung?",
    "Which side is the effusion on?",
    "What is the size of the heart?",
    "Describe the findings of this chest radiograph.",
    "Write the radiology report for this image.",
    "Yes",
    "No",
    "yes",
    "no",
    "left",
    "right",
    "left lung",
    "right lung",
    "nodule",
    "effusion",
    "pneumothorax",
    "consolidation",
    "cardiomegaly",
    "normal",
    "The lungs are clear.",
    "No pleural effusion or pneumothorax is seen.",
    "There is a small nodule in the left upper lobe.",
    "There is a large right pleural effusion.",
    "The heart is enlarged, consistent with cardiomegaly.",
    "Consolidation is present in the right lower lobe.",
    "A moderate left pneumothorax is present.",
    "The cardiomediastinal silhouette is within normal limits.",
    "No acute cardiopulmonary abnormality.",
    "Mild cardiomegaly without pulmonary edema.",
    "There is no evidence of consolidation.",
    "Findings are consistent with a small left effusion.",
]


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory):
    """Directory of a randomly initialised tiny LLaVA (32 px images, 17 image tokens) and its processor."""
    from mmedpo.models.tiny import build_tiny_llava

    return build_tiny_llava(CORPUS, tmp_path_factory.mktemp("tiny_vlm"), image_size=32, seed=0)


@pytest.fixture
def tiny_images():
    """Four 48x48 RGB images: dark, bright, and two with a bright blob on the left or right."""
    dark = Image.new("RGB", (48, 48), (20, 20, 20))
    bright = Image.new("RGB", (48, 48), (230, 230, 230))
    left = dark.copy()
    ImageDraw.Draw(left).ellipse((4, 16, 20, 32), fill=(240, 240, 240))
    right = dark.copy()
    ImageDraw.Draw(right).ellipse((28, 16, 44, 32), fill=(240, 240, 240))
    return [dark, bright, left, right]
