"""The tiny LLaVA, generation with any VLM, and supervised fine-tuning."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor, CLIPImageProcessorPil

from conftest import CORPUS
from mmedpo.data.messages import prompt_messages
from mmedpo.models.sft import answer_loss, answer_only_batch, length_grouped_batches, rendered, supervised_finetune
from mmedpo.models.tiny import build_tiny_llava, train_tokenizer
from mmedpo.models.vision_pretrain import finding_labels, pretrain_vision_tower
from mmedpo.models.vlm import generate_answers, load_vlm
from mmedpo.records import Sample


def logits_of(model, processor, image, question):
    text = processor.apply_chat_template(prompt_messages(question), add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**inputs).logits


def test_tiny_llava_reloads_with_auto_classes_and_gives_identical_logits(tiny_vlm_dir, tiny_images, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir, local_files_only=True).eval()
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert isinstance(processor.image_processor, CLIPImageProcessorPil)  # no torchvision needed
    before = logits_of(model, processor, tiny_images[2], "Is there a nodule?")
    # 32 px images in 8 px patches: 16 patches + CLIP's class token.
    assert before.shape[1] == 17 + len(processor.tokenizer("USER: \nIs there a nodule? ASSISTANT:")["input_ids"]) + 1
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded, reprocessor = load_vlm(tmp_path, device="cpu")
    assert torch.equal(logits_of(reloaded, reprocessor, tiny_images[2], "Is there a nodule?"), before)


def test_build_is_deterministic_for_a_seed(tmp_path):
    def weights(seed, name):
        path = build_tiny_llava(CORPUS, tmp_path / name, image_size=32, seed=seed, vocab_size=400)
        return AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).state_dict()

    first, again, other = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])


def test_build_refuses_an_image_size_that_is_not_whole_patches(tmp_path):
    with pytest.raises(ValueError, match="multiple of 8"):
        build_tiny_llava(CORPUS, tmp_path, image_size=36)


def test_tokenizer_round_trips_text_and_learns_corpus_words():
    tokenizer = train_tokenizer(CORPUS, vocab_size=500)
    assert len(tokenizer) <= 500
    for text in ["Is there a pleural effusion?", "Héllo WORLD 3.5 cm\n\tnodule, état", "  two  spaces "]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<s>", "</s>", "<unk>", "<image>"]) == [0, 1, 2, 3, 4]
    assert tokenizer("<image>")["input_ids"] == [4]
    assert tokenizer.image_token == "<image>"
    # A frequent corpus word is one token; a word never seen is spelt out in pieces.
    assert len(tokenizer(" effusion")["input_ids"]) == 1
    assert len(tokenizer(" xylophone")["input_ids"]) > 3


def test_chat_template_renders_llava_conversations(tiny_vlm_dir):
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir, local_files_only=True)
    prompt = processor.apply_chat_template(prompt_messages("Is there a nodule?"), add_generation_prompt=True)
    full = processor.apply_chat_template(prompt_messages("Is there a nodule?", "yes"))
    assert prompt == "<s>USER: <image>\nIs there a nodule? ASSISTANT:"
    assert full == "<s>USER: <image>\nIs there a nodule? ASSISTANT: yes</s>"
    # TRL passes plain-string contents for text-only turns.
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "no"}]
    assert processor.apply_chat_template(messages) == "<s>USER: Hi ASSISTANT: no</s>"


def test_prompt_messages_have_the_conversational_form():
    assert prompt_messages("Q?", "A") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
    ]
    assert len(prompt_messages("Q?")) == 1


def test_greedy_generation_is_the_same_batched_and_one_by_one(tiny_vlm_dir, tiny_images):
    model, processor = load_vlm(tiny_vlm_dir, device="cpu")
    questions = [
        "Is there a nodule?",
        "Write the radiology report for this image.",
        "Which side?",
        "Is the heart enlarged?",
    ]
    batched = generate_answers(model, processor, tiny_images, questions, max_new_tokens=6, batch_size=4)
    single = generate_answers(model, processor, tiny_images, questions, max_new_tokens=6, batch_size=1)
    assert batched == single
    assert [len(candidates) for candidates in batched] == [1, 1, 1, 1]
    assert all("<" not in answer[0] and "USER" not in answer[0] for answer in batched)


def test_sampling_returns_reproducible_candidates(tiny_vlm_dir, tiny_images):
    model, processor = load_vlm(tiny_vlm_dir, device="cpu")
    args = (model, processor, tiny_images[:2], ["Is there a nodule?", "Which side?"])
    options = {"max_new_tokens": 5, "do_sample": True, "num_return_sequences": 3, "seeds": [7, 8]}
    first = generate_answers(*args, **options)
    assert [len(candidates) for candidates in first] == [3, 3]
    assert generate_answers(*args, **options) == first
    # Each question draws from its own seed: alone, or in a batch with another, the same candidates.
    assert generate_answers(*args, batch_size=1, **options) == first
    assert generate_answers(model, processor, tiny_images[1:2], ["Which side?"], **{**options, "seeds": [8]}) == [
        first[1]
    ]
    with pytest.raises(ValueError, match="2 seeds for 1 questions"):
        generate_answers(model, processor, tiny_images[:1], ["Q?"], **options)
    with pytest.raises(ValueError, match="do_sample"):
        generate_answers(*args, num_return_sequences=2)
    with pytest.raises(ValueError, match="2 images for 1 questions"):
        generate_answers(model, processor, tiny_images[:2], ["Q?"])


def test_only_answer_tokens_are_labelled_and_the_loss_matches_the_models_own(tiny_vlm_dir, tiny_images):
    model, processor = load_vlm(tiny_vlm_dir, device="cpu")
    samples = [
        Sample(id="a", task="vqa", image="x.png", question="Is there a nodule?", answer="yes"),
        Sample(id="b", task="report", image="x.png", question="Write the report.", answer="The lungs are clear."),
    ]
    batch = answer_only_batch(processor, tiny_images[:2], [rendered(processor, sample) for sample in samples])
    labels, ids = batch["labels"], batch["input_ids"]
    tokenizer = processor.tokenizer
    # Left padding: both answers end the rows; " yes</s>" is 2 tokens, " The lungs are clear.</s>" 6.
    assert tokenizer.decode(labels[0][labels[0] != -100]) == " yes</s>"
    assert tokenizer.decode(labels[1][labels[1] != -100]) == " The lungs are clear.</s>"
    assert (labels[0] != -100).sum() == 2 and (labels[1] != -100).sum() == 6
    assert torch.equal(labels[0, -2:], ids[0, -2:])
    with torch.no_grad():
        reference = model(**batch).loss  # transformers' own loss over the full logits
        ours = answer_loss(model, batch)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_length_grouped_batches_cover_every_sample_once():
    samples = [
        Sample(id=str(i), task="vqa", image="x.png", question="Q" * (i % 7 + 1), answer="yes") for i in range(50)
    ]
    texts = {sample.id: ("p", sample.question) for sample in samples}
    batches = length_grouped_batches(samples, texts, 4, random.Random(3))
    assert sorted(sample.id for batch in batches for sample in batch) == sorted(sample.id for sample in samples)
    assert sorted(len(batch) for batch in batches) == [2] + [4] * 12
    again = length_grouped_batches(samples, texts, 4, random.Random(3))
    assert [[s.id for s in batch] for batch in again] == [[s.id for s in batch] for batch in batches]


def write_brightness_images(folder, count, seed):
    """Noisy grey images, half bright (mean ~200) and half dark (mean ~55): (name, answer) pairs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        bright = i % 2 == 0
        level = rng.uniform(160, 240) if bright else rng.uniform(15, 95)
        pixels = np.clip(rng.normal(level, 25, (40, 40)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
        items.append((f"{i}.png", "yes" if bright else "no"))
    return items


def test_sft_learns_an_answer_that_depends_on_the_image(tiny_vlm_dir, tmp_path):
    train = write_brightness_images(tmp_path / "train", 64, seed=0)
    held_out = write_brightness_images(tmp_path / "test", 20, seed=1)
    samples = [
        Sample(id=str(i), task="vqa", image=name, question="Is the image bright?", answer=answer)
        for i, (name, answer) in enumerate(train)
    ]
    out = supervised_finetune(
        tiny_vlm_dir, samples, [tmp_path / "train"], tmp_path / "sft", epochs=8, batch_size=8, progress=False
    )
    model, processor = load_vlm(out, device="cpu")
    images = [Image.open(tmp_path / "test" / name).convert("RGB") for name, _ in held_out]
    answers = generate_answers(model, processor, images, ["Is the image bright?"] * len(images), max_new_tokens=4)
    accuracy = np.mean([candidates[0] == answer for candidates, (_, answer) in zip(answers, held_out)])
    assert accuracy > 0.9


def blob_report_samples(folder, count, seed):
    """Report samples on dark 32 px images; half carry a bright blob, and their report names a nodule."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    samples = []
    for i in range(count):
        image = Image.new("RGB", (32, 32), (20, 20, 20))
        has_blob = i % 2 == 0
        if has_blob:
            x, y = rng.randint(2, 18), rng.randint(2, 18)
            ImageDraw.Draw(image).ellipse((x, y, x + 12, y + 12), fill=(240, 240, 240))
        image.save(folder / f"{i}.png")
        report = "There is a large nodule in the left lung." if has_blob else "The lungs are clear."
        samples.append(Sample(id=f"r{i}", task="report", image=f"{i}.png", question="Describe.", answer=report))
    return samples


def test_finding_labels_read_present_findings_from_reports_only():
    samples = [
        Sample(
            id="a",
            task="report",
            image="1.png",
            question="Describe.",
            answer="Small right nodule. No pleural effusion. Possible pneumothorax.",
        ),
        Sample(id="b", task="vqa", image="1.png", question="Is there an effusion?", answer="yes"),
        Sample(id="c", task="report", image="2.png", question="Describe.", answer="The lungs are clear."),
    ]
    assert finding_labels(samples) == {"1.png": {"nodule"}, "2.png": set()}


def test_vision_pretraining_teaches_the_tower_and_touches_nothing_else(tiny_vlm_dir, tmp_path):
    samples = blob_report_samples(tmp_path / "img", 32, seed=0)
    model, processor = load_vlm(tiny_vlm_dir, device="cpu")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    summary = pretrain_vision_tower(model, processor, samples, [tmp_path / "img"], epochs=30, progress=False)
    assert summary["images"] == 32 and summary["findings"] == ["nodule"]
    # Chance (predicting 0.5) costs ln 2 = 0.693; the tower must have learnt to see the blob.
    assert summary["final_loss"] < 0.2
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(".vision_tower." in f".{name}" for name in changed)


def test_vision_pretraining_without_findings_says_what_to_set(tiny_vlm_dir, tmp_path):
    samples = [s for s in blob_report_samples(tmp_path / "img", 4, seed=0) if "clear" in s.answer]
    model, processor = load_vlm(tiny_vlm_dir, device="cpu")
    with pytest.raises(ValueError, match="vision_pretrain_epochs=0"):
        pretrain_vision_tower(model, processor, samples, [tmp_path / "img"], epochs=1, progress=False)


def test_sft_with_a_frozen_vision_tower_trains_only_the_rest(tiny_vlm_dir, tmp_path):
    samples = blob_report_samples(tmp_path / "img", 8, seed=0)
    out = supervised_finetune(
        tiny_vlm_dir,
        samples,
        [tmp_path / "img"],
        tmp_path / "sft",
        epochs=1,
        batch_size=4,
        progress=False,
        freeze_vision=True,
    )
    start = dict(load_vlm(tiny_vlm_dir, device="cpu")[0].named_parameters())
    tuned = dict(load_vlm(out, device="cpu")[0].named_parameters())
    same = {name for name in start if torch.equal(start[name], tuned[name])}
    vision = {name for name in start if ".vision_tower." in f".{name}"}
    assert vision and same == vision
