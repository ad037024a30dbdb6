"""Supervised fine-tuning of a vision-language model on `Sample`s: the loss is on the answer only.

A plain torch loop: on the tiny model it is faster than `transformers.Trainer`
and has nothing to configure. It is what turns the randomly initialised tiny
LLaVA into the "base Med-LVLM" of the demo.

Two things keep it fast on a CPU, where the demo has to fine-tune ~4,000 samples
in about a minute and a half: batches group samples of similar length (less
padding), and sequences are padded on the left so every answer sits at the end,
where `logits_to_keep` limits the vocabulary projection to the answer positions.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from mmedpo.data.images import open_image
from mmedpo.data.messages import prompt_messages
from mmedpo.models.vlm import encode, freeze_vision_tower, load_vlm
from mmedpo.progress import progress_bar
from mmedpo.records import Sample

IGNORE = -100
# Batches are formed inside windows of this many batches, sorted by length.
GROUP_WINDOW = 8


def supervised_finetune(
    model_dir: Path,
    samples: list[Sample],
    image_roots: list[Path],
    out_dir: Path,
    epochs: int = 3,
    learning_rate: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    freeze_vision: bool = False,
) -> Path:
    """Fine-tune the model in `model_dir` to answer each sample's question with its answer.

    Prompt and image tokens are masked out of the loss. Batches are shuffled per epoch
    from `seed`. `freeze_vision` keeps the image encoder (not the projector) as it is.
    Model and processor are saved to `out_dir`, loadable with `load_vlm`.
    """
    if not samples:
        raise ValueError("supervised_finetune needs at least one sample")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, processor = load_vlm(model_dir)
    model.train()
    if freeze_vision:
        freeze_vision_tower(model)
    texts = {sample.id: rendered(processor, sample) for sample in samples}
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0, foreach=True)
    steps = epochs * -(-len(samples) // batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=steps // 20, num_training_steps=steps)
    with progress_bar("sft", steps, progress) as advance:
        for _ in range(epochs):
            for batch_samples in length_grouped_batches(samples, texts, batch_size, rng):
                images = [open_image(sample.image, image_roots) for sample in batch_samples]
                batch = answer_only_batch(processor, images, [texts[sample.id] for sample in batch_samples])
                loss = answer_loss(model, batch.to(model.device, dtype=model.dtype))
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                advance(1)
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def rendered(processor, sample: Sample) -> tuple[str, str]:
    """The chat-rendered prompt and prompt + answer of a sample."""
    prompt = processor.apply_chat_template(prompt_messages(sample.question), add_generation_prompt=True)
    full = processor.apply_chat_template(prompt_messages(sample.question, sample.answer))
    if not full.startswith(prompt):
        raise ValueError(f"sample {sample.id}: the chat template renders the prompt differently with an answer")
    return prompt, full


def length_grouped_batches(
    samples: list[Sample], texts: dict[str, tuple[str, str]], batch_size: int, rng: random.Random
) -> list[list[Sample]]:
    """Shuffled batches whose samples have similar lengths (as `group_by_length` in transformers)."""
    shuffled = rng.sample(samples, len(samples))
    window = batch_size * GROUP_WINDOW
    batches = []
    for start in range(0, len(shuffled), window):
        group = sorted(shuffled[start : start + window], key=lambda sample: len(texts[sample.id][1]))
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def answer_only_batch(processor, images: list, texts: list[tuple[str, str]]):
    """Model inputs for (prompt, prompt + answer) texts, left-padded, with `labels` on the answer tokens only."""
    batch = encode(processor, images, [full for _, full in texts], padding_side="left")
    # With left padding the answer is the last tokens of each row. Counting them on the
    # text alone is independent of how many tokens the processor expands the image into.
    tokenizer = processor.tokenizer
    labels = torch.full_like(batch["input_ids"], IGNORE)
    for row, (prompt, full) in enumerate(texts):
        answer = len(tokenizer(full, add_special_tokens=False)["input_ids"]) - len(
            tokenizer(prompt, add_special_tokens=False)["input_ids"]
        )
        labels[row, -answer:] = batch["input_ids"][row, -answer:]
    batch["labels"] = labels
    return batch


def answer_loss(model, batch) -> torch.Tensor:
    """Mean cross-entropy of the labelled tokens, projecting only the positions that predict them.

    Expects left-padded `batch` with `labels` (as `answer_only_batch` makes), so the
    labelled tokens are the last columns.
    """
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    labels = batch["labels"]
    first = int((labels != IGNORE).any(dim=0).nonzero()[0])
    # The logit at position t predicts token t + 1, so one more position than there are answer columns.
    keep = labels.shape[1] - first + 1
    logits = model(**inputs, logits_to_keep=keep).logits[:, :-1]
    return F.cross_entropy(logits.flatten(0, 1).float(), labels[:, first:].flatten(), ignore_index=IGNORE)
