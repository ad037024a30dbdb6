"""Grad-CAM localization over any torch image classifier (captum's LayerGradCam).

The heat map of each finding the classifier believes present (probability >=
`min_confidence`) is Grad-CAM at the classifier's `layer`, upsampled to the
image; each becomes a region through `imaging.regions.map_to_region`, and the region
is their union. An image with no such finding gets the region of its most probable
finding's map, marked as no lesion found. The confidence is the classifier's
probability times the concentration of the map (see `GradCamLocalizer`).

The default classifier is a small CNN trained on SynthMed's SFT split in
seconds (multi-label: one sigmoid per finding) and cached on disk:

    path = train_default_classifier(sft_samples, image_roots, run_dir / "models/localizer-cnn.pt")
    localizer = GradCamLocalizer(path)

Your own classifier plugs in through a factory, `"module:function"`, that
takes a local weights file and returns a `Classifier`. A torchxrayvision
DenseNet (an optional extra: `pip install torchxrayvision`, which needs
torchvision) loaded from local weights, for example:

    # my_xrv.py
    import torch, torchxrayvision as xrv
    from mmedpo.imaging.gradcam import Classifier

    def densenet(weights):
        model = xrv.models.DenseNet(weights=None, op_threshs=None)
        model.load_state_dict(torch.load(weights, map_location="cpu"))
        return Classifier(model.eval(), model.features.denseblock4, list(model.pathologies), input_size=224,
                          normalise=lambda x: x * 2048.0 - 1024.0)  # xrv expects [-1024, 1024]

    localizer = GradCamLocalizer("densenet121-res224-all.pt", factory="my_xrv:densenet")
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from mmedpo.data.images import resolve_image
from mmedpo.imaging.localizers import finding_names
from mmedpo.imaging.noise import read_grayscale
from mmedpo.imaging.regions import NoRegion, Region, RegionOptions, check_area, concentration, map_to_region
from mmedpo.records import Sample

MODEL_VERSION = 2  # of SynthMedCNN's layout: a checkpoint of another version is retrained, never half-loaded


@dataclass
class Classifier:
    """A multi-label image classifier Grad-CAM can explain.

    `model` maps (N, 1, S, S) float images (S = `input_size`, after `normalise`
    of pixels scaled to [0, 1]) to one logit per label; `layer` is the
    convolutional layer whose activations Grad-CAM weighs.
    """

    model: nn.Module
    layer: nn.Module
    labels: list[str]
    input_size: int
    normalise: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda x: x)

    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        """(1, 1, S, S) model input from a grayscale float image in [0, 1] (H, W)."""
        image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
        image = nn.functional.interpolate(image, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        return self.normalise(image)


class SynthMedCNN(nn.Module):
    """A small fully convolutional net whose last layer, `head`, is a 1x1 convolution giving one
    evidence map per label at a quarter of the input size (16x16 for 64 px inputs).

    Each logit pools its map with a log-sum-exp (sharpness `r`): between the mean and the max, so a
    lesion's evidence stays where the lesion is, and a lesion filling several cells adds up. During
    training, `cell_dropout` of the cells are hidden from the pooling at random, so no single
    telling spot (a nodule's rim, a pneumothorax's apex) can carry the label alone and the map covers
    the whole lesion. Grad-CAM at `head` is then that map, positive part, for the explained label.
    """

    def __init__(self, n_labels: int, width: int = 16, r: float = 1.0, cell_dropout: float = 0.5):
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, width // 2), nn.MaxPool2d(2),
            *block(width // 2, width), nn.MaxPool2d(2),
            *block(width, 2 * width),
            *block(2 * width, 2 * width),
            *block(2 * width, 2 * width),
        )  # fmt: skip
        self.head = nn.Conv2d(2 * width, n_labels, 1)
        self.r = r
        self.cell_dropout = cell_dropout

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.head(self.features(images)).flatten(2)  # (N, labels, cells)
        if self.training and self.cell_dropout > 0:
            hidden = torch.rand(maps.shape[0], 1, maps.shape[2], device=maps.device) < self.cell_dropout
            maps = maps.masked_fill(hidden, -1e4)  # exp(-1e4 r) is 0: a hidden cell adds nothing
        return (torch.logsumexp(self.r * maps, dim=2) - math.log(maps.shape[2])) / self.r


def train_default_classifier(
    samples: Sequence[Sample],
    image_roots: Sequence[Path | str],
    out_path: Path | str,
    seed: int = 0,
    epochs: int = 10,
    input_size: int = 64,
) -> Path:
    """Train the SynthMed CNN on the images of `samples` (labels: their findings) and save it to `out_path`.

    A file already there, trained on the same images and settings, is reused.
    Returns `out_path`.
    """
    out_path = Path(out_path)
    images = sorted({sample.image: finding_names(sample) for sample in samples}.items())
    labels = sorted({name for _, names in images for name in names})
    if not labels:
        raise ValueError("no sample lists findings in meta['findings']: nothing to train a lesion classifier on")
    settings = {"images": images, "seed": seed, "epochs": epochs, "input_size": input_size, "model": MODEL_VERSION}
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()
    if out_path.exists() and torch.load(out_path, weights_only=True).get("key") == key:
        return out_path
    torch.manual_seed(seed)
    model = SynthMedCNN(len(labels))
    classifier = Classifier(model, model.head, labels, input_size)
    inputs = torch.cat([classifier.prepare(read_grayscale(resolve_image(image, image_roots))) for image, _ in images])
    targets = torch.tensor([[float(label in names) for label in labels] for _, names in images])
    threads = torch.get_num_threads()
    # One thread: convolutions this small gain little from more, and on a shared machine
    # two threads that wait on each other ran ten times slower (168 s against 18 s, 600 images).
    torch.set_num_threads(1)
    try:
        _fit(model, inputs, targets, epochs, seed)
    finally:
        torch.set_num_threads(threads)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "key": key,
        "model": MODEL_VERSION,
        "labels": labels,
        "input_size": input_size,
        "state_dict": model.state_dict(),
    }
    # A file of this process's own: shard workers may train the same classifier at once, and each
    # must only ever see a whole file at out_path.
    partial = out_path.with_name(f"{out_path.name}.{os.getpid()}.partial")
    torch.save(state, partial)
    partial.replace(out_path)
    return out_path


def _fit(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, epochs: int, seed: int) -> None:
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    batches = math.ceil(len(inputs) / 32)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=epochs * batches)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(32):
            # Random left-right flips: SynthMed's SFT split puts 90% of lung findings on one side,
            # and a classifier that learns "nodule = image left" would look for it there.
            flip = torch.rand(len(batch), 1, 1, 1, generator=generator) < 0.5
            images = torch.where(flip, inputs[batch].flip(3), inputs[batch])
            loss = nn.functional.binary_cross_entropy_with_logits(model(images), targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    model.eval()


def load_classifier(path: Path | str, factory: str | None = None) -> Classifier:
    """The classifier in weights file `path`: the SynthMed CNN, or what `factory` ("module:function") makes of it."""
    if factory is not None:
        module, _, function = factory.partition(":")
        if not function:
            raise ValueError(f"classifier factory {factory!r} must read 'module:function'")
        classifier = getattr(importlib.import_module(module), function)(Path(path))
        if not isinstance(classifier, Classifier):
            raise TypeError(f"classifier factory {factory!r} returned {type(classifier).__name__}, not a Classifier")
        return classifier
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as error:
        raise ValueError(f"cannot read classifier weights {path}: {error}") from None
    if not {"labels", "input_size", "state_dict"} <= set(state):
        raise ValueError(f"{path} is not a SynthMed CNN checkpoint; for another classifier name a factory")
    if state.get("model") != MODEL_VERSION:
        raise ValueError(
            f"{path} holds an older SynthMed CNN (model {state.get('model', 1)}, now {MODEL_VERSION}): "
            "train_default_classifier makes a current one"
        )
    model = SynthMedCNN(len(state["labels"]))
    model.load_state_dict(state["state_dict"])
    return Classifier(model.eval(), model.head, list(state["labels"]), int(state["input_size"]))


@dataclass
class GradCamLocalizer:
    """Grad-CAM of a classifier as the lesion region.

    The region is the union of the regions of the findings the classifier
    believes present (probability >= `min_confidence`). An image where it
    believes none is present gets the region of the most probable finding's
    map, its most salient place, with `found=False`: as MedKLIP in the paper,
    the localizer gives every image a region. The confidence is the classifier's
    probability (the highest of the region's findings) times the concentration
    of the map (`regions.concentration`: how much more of the map's mass the
    region holds than its area would): a sure classifier whose map points at one
    place gives a high one, a hesitant classifier or a diffuse map a low one.

    `classifier` is a `Classifier` or a weights file (see `load_classifier`);
    `region` a `RegionOptions` or a dict of its fields.
    """

    name: ClassVar[str] = "gradcam"

    classifier: Classifier | Path | str
    factory: str | None = None
    min_confidence: float = 0.5
    region: RegionOptions | dict = field(default_factory=RegionOptions)

    def __post_init__(self) -> None:
        from captum.attr import LayerGradCam

        if not isinstance(self.classifier, Classifier):
            self.classifier = load_classifier(self.classifier, self.factory)
        if isinstance(self.region, dict):
            self.region = RegionOptions(**self.region)
        self._gradcam = LayerGradCam(self.classifier.model, self.classifier.layer)

    def probabilities(self, pixels: np.ndarray) -> dict[str, float]:
        """Every label's probability for a grayscale image in [0, 1]."""
        with torch.no_grad():
            return dict(
                zip(
                    self.classifier.labels,
                    torch.sigmoid(self.classifier.model(self.classifier.prepare(pixels)))[0].tolist(),
                )
            )

    def finding_maps(
        self, pixels: np.ndarray, labels: Sequence[str] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Grad-CAM (scaled to peak 1, at the image's size) of each of `labels` (default: each finding with
        probability >= `min_confidence`) whose map is not all zero, and every label's probability."""
        probabilities = self.probabilities(pixels)
        if labels is None:
            labels = [name for name, p in probabilities.items() if p >= self.min_confidence]
        inputs = self.classifier.prepare(pixels)
        maps = {}
        for name in labels:
            target = self.classifier.labels.index(name)
            cam = self._gradcam.attribute(inputs, target=target, relu_attributions=True).detach()
            cam = nn.functional.interpolate(cam, size=pixels.shape, mode="bilinear", align_corners=False)[0, 0]
            if cam.max() > 0:
                maps[name] = (cam / cam.max()).numpy()
        return maps, probabilities

    def heat_map(self, pixels: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """The pixel-wise maximum of `finding_maps` (all zeros when no finding is confident), and every
        label's probability."""
        maps, probabilities = self.finding_maps(pixels)
        heat = np.max(list(maps.values()), axis=0) if maps else np.zeros(pixels.shape, dtype=np.float32)
        return heat, probabilities

    def localize(self, sample: Sample, image_roots: Sequence[Path | str]) -> Region:
        """The union of the regions of each confident finding's map, or the most probable finding's
        region (`found=False`) when none is confident; raises `NoRegion` when no map gives a usable region.

        Each finding gets its own region: thresholded together, a strong nodule map would
        cut a weaker cardiomegaly map away.
        """
        pixels = read_grayscale(resolve_image(sample.image, image_roots))
        maps, probabilities = self.finding_maps(pixels)
        found = bool(maps) or any(p >= self.min_confidence for p in probabilities.values())
        if not found:
            maps, _ = self.finding_maps(pixels, [max(probabilities, key=probabilities.get)])
        regions, failures = {}, []
        for name, heat in maps.items():
            try:
                regions[name] = map_to_region(heat, self.region)
            except NoRegion as error:
                failures.append(f"{name}: {error}")
        if not regions:
            raise NoRegion(f"sample {sample.id}: no usable region ({'; '.join(failures) or 'all maps are zero'})")
        mask = np.logical_or.reduce(list(regions.values()))
        try:
            area = check_area(mask, self.region.min_area, self.region.max_area)
        except NoRegion as error:
            raise NoRegion(f"sample {sample.id}: {error}") from None
        heat = np.max([maps[name] for name in regions], axis=0)
        confidence = max(probabilities[name] for name in regions) * concentration(heat, mask)
        label = ", ".join(regions) if found else f"no finding (most salient: {', '.join(regions)})"
        return Region(mask, confidence, label, area, heat, found=found)
