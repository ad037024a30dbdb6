"""Pretraining the tiny LLaVA's vision tower on findings read from the SFT reports.

A real Med-LVLM starts from a pretrained image encoder (CLIP, BiomedCLIP) and
LLaVA-Med keeps it frozen while the language side learns. The tiny LLaVA is
built from scratch, and a random tower trained only through the language loss
learns next to nothing in a CPU budget: the base model then answers every
question from its language prior and never looks (a constant "yes"), and no
preference ablation on it can show anything about looking. So, before SFT, the
tower is trained for a few seconds to recognise the findings that the SFT
split's reports name (multi-label, read by `clinical.findings`), the stand-in
for a pretrained encoder. Only SFT images are used; pref and test are never seen.

    >>> from mmedpo.models.vision_pretrain import finding_labels
    >>> finding_labels([Sample(id="a", task="report", image="1.png", question="Describe.",
    ...                        answer="Small right nodule. No pleural effusion.")])
    {'1.png': {'nodule'}}
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from mmedpo.clinical.findings import extract_findings
from mmedpo.data.images import open_image
from mmedpo.progress import progress_bar
from mmedpo.records import Sample


def finding_labels(samples: Sequence[Sample]) -> dict[str, set[str]]:
    """Image -> the findings its report-task answers say are present (absent and uncertain ones left out)."""
    labels: dict[str, set[str]] = {}
    for sample in samples:
        if sample.task == "report":
            present = {f.name for f in extract_findings(sample.answer) if f.present and not f.uncertain}
            labels.setdefault(sample.image, set()).update(present)
    return labels


def pretrain_vision_tower(
    model,
    processor,
    samples: Sequence[Sample],
    image_roots: Sequence[Path],
    epochs: int,
    learning_rate: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train `model`'s vision tower in place to tell which findings each report image shows.

    A linear head on the mean of the tower's last hidden states is trained with it
    (binary cross-entropy per finding) and then thrown away. Returns a summary:
    images, findings, final loss. Images without a report are not used; with
    no report at all there is nothing to learn from, and a ValueError says so.
    """
    labels = finding_labels(samples)
    names = sorted(set().union(*labels.values()))
    if not names:
        raise ValueError(
            f"vision pretraining needs SFT reports that name findings; {len(labels)} report image(s) name none. "
            "Set model.vision_pretrain_epochs=0"
        )
    images = sorted(labels)
    torch.manual_seed(seed)
    pixels = processor.image_processor([open_image(image, image_roots) for image in images], return_tensors="pt")
    pixels = pixels["pixel_values"].to(model.device, model.dtype)
    targets = torch.tensor([[name in labels[image] for name in names] for image in images], dtype=torch.float32)
    tower = model.model.vision_tower
    head = torch.nn.Linear(tower.config.hidden_size, len(names)).to(model.device)
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=learning_rate)
    order = list(range(len(images)))
    rng = random.Random(seed)
    tower.train()
    last_loss = float("nan")
    with progress_bar("vision pretrain", epochs, progress) as advance:
        for _ in range(epochs):
            rng.shuffle(order)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                features = tower(pixel_values=pixels[batch]).last_hidden_state.mean(dim=1)
                loss = F.binary_cross_entropy_with_logits(head(features.float()), targets[batch])
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                last_loss = loss.item()
            advance(1)
    tower.eval()
    return {"images": len(images), "findings": names, "final_loss": round(last_loss, 4)}
