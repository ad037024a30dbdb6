"""The weighted DPO trainer on the two other architectures docs/training.md promises.

Both are built here, tiny and randomly initialised, saved with `save_pretrained` and
loaded back through `AutoModelForImageTextToText` / `AutoProcessor` (`load_vlm`), as a
real checkpoint would be:

- LLaVA-Med v1.5 as converted to the llava-hf format: `LlavaForConditionalGeneration`
  with a Mistral text model, a CLIP tower read at layer -2 without its class token
  ("default" feature selection, as llava-hf's conversion sets it), Mistral's
  "[INST] ... [/INST]" prompt;
- Qwen2-VL: `Qwen2VLForConditionalGeneration` (dynamic resolution: the pixel values are
  flattened patches of every image, with `image_grid_thw`), Qwen's special tokens and
  ChatML template, the PIL image processor with small min/max pixels.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoProcessor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    MistralConfig,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
from transformers.utils import is_torchvision_available

from mmedpo.models.tiny import train_tokenizer
from mmedpo.models.vlm import generate_answers, load_vlm
from mmedpo.training.dpo import WeightedDPOTrainer, train_weighted_dpo
from mmedpo.training.dpo_config import WeightedDPOConfig
from mmedpo.training.pairs import PAIR_BATCH_KEYS, pairs_to_dataset
from mmedpo.training.settings import DEFAULT_LORA_TARGETS, DPOSettings
from test_training import ANSWERS, QUESTIONS, make_pair

CORPUS = [*QUESTIONS, *(answer for pair in ANSWERS for answer in pair), "The lungs are clear."]

# --- LLaVA-Med v1.5, llava-hf format -------------------------------------------------------------------------------

# LLaVA-Med v1.5's conversation format (mistral_instruct): "<s>[INST] <image>\nQ [/INST] A</s>".
MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}[INST] "
    "{% for part in parts if part['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for part in parts if part['type'] == 'text' %}{{ part['text'] }}{% endfor %} [/INST]"
    "{% elif message['role'] == 'assistant' %}"
    "{% for part in parts if part['type'] == 'text' %} {{ part['text'] }}{% endfor %}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)


def build_tiny_llava_med(out_dir, image_size=32, patch_size=8, hidden=64):
    tokenizer = train_tokenizer([*CORPUS, "[INST] [/INST]"], vocab_size=500)
    tokenizer.chat_template = MISTRAL_TEMPLATE
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",  # the class token is dropped
        chat_template=MISTRAL_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
        ),
        text_config=MistralConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,  # grouped-query attention, as Mistral 7B (32 heads, 8 KV heads)
            max_position_embeddings=512,
            sliding_window=None,  # Mistral-7B-Instruct-v0.2, LLaVA-Med v1.5's base
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(image_size // patch_size) ** 2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# --- Qwen2-VL ------------------------------------------------------------------------------------------------------

QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL-Instruct's template, videos left out.
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor, for machines without torchvision.

    In transformers 5.23 `Qwen2VLProcessor` always takes a video processor, and the only one
    (`Qwen2VLVideoProcessor`) needs torchvision: without it neither `Qwen2VLProcessor(...)` nor
    `AutoProcessor.from_pretrained` on a Qwen2-VL folder can build the processor (the class check
    of `video_processor` fails, even for None). Images go through the same code either way.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


@pytest.fixture(scope="module")
def qwen_processor_class():
    """The real Qwen2VLProcessor where torchvision is installed, else the image-only one, known to AutoProcessor."""
    if is_torchvision_available():
        yield Qwen2VLProcessor
        return
    AutoProcessor.register(Qwen2VLConfig, ImageOnlyQwen2VLProcessor, exist_ok=True)
    yield ImageOnlyQwen2VLProcessor
    PROCESSOR_MAPPING._extra_content.pop(Qwen2VLConfig, None)


def qwen_tokenizer():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=QWEN_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(["system\nYou are a helpful assistant.", "user\n", "assistant\n", *CORPUS], trainer)
    # As Qwen2-VL-Instruct: pad <|endoftext|>, EOS <|im_end|>, no BOS.
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<|endoftext|>", eos_token="<|im_end|>", chat_template=QWEN_TEMPLATE
    )


def build_tiny_qwen2_vl(out_dir, processor_class, hidden=64):
    tokenizer = qwen_tokenizer()
    # 14-px patches merged 2x2, as the real model; at most 56x56 px = 16 patches = 4 image tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    processor_kwargs = {}
    if processor_class is Qwen2VLProcessor:  # torchvision is there: the real video processor
        from transformers import Qwen2VLVideoProcessor

        processor_kwargs = {"video_processor": Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=56 * 56)}
    processor = processor_class(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_TEMPLATE, **processor_kwargs
    )
    token = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            # M-RoPE: head_dim 16 -> 8 frequencies split over (time, height, width)
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": None,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": hidden,  # the merger's output: the language model's width
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def llava_med_dir(tmp_path_factory):
    return build_tiny_llava_med(tmp_path_factory.mktemp("llava_med"))


@pytest.fixture(scope="module")
def qwen2_vl_dir(tmp_path_factory, qwen_processor_class):
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2_vl"), qwen_processor_class)


@pytest.fixture(params=["llava_med", "qwen2_vl"])
def model_dir(request):
    return request.getfixturevalue(f"{request.param}_dir")


# --- data ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """48x48 images (Qwen2-VL: resized to 56x56, 4 image tokens): dark, bright, a blob left or right."""
    root = tmp_path_factory.mktemp("images")
    dark = Image.new("RGB", (48, 48), (20, 20, 20))
    dark.save(root / "dark.png")
    Image.new("RGB", (48, 48), (230, 230, 230)).save(root / "bright.png")
    for name, box in (("left", (4, 16, 20, 32)), ("right", (28, 16, 44, 32))):
        image = dark.copy()
        ImageDraw.Draw(image).ellipse(box, fill=(240, 240, 240))
        image.save(root / f"{name}.png")
    # Other sizes, other Qwen2-VL grids: 96x40 -> 84x28 px (2x6 patches), 48x24 -> 56x28 px (2x4 patches).
    Image.new("RGB", (96, 40), (20, 20, 20)).save(root / "wide.png")
    Image.new("RGB", (48, 24), (20, 20, 20)).save(root / "half.png")
    return root


def training_pairs():
    """2 batches of 2: each a visual pair (its own rejected image) beside a text pair; weights differ."""
    return [
        make_pair(0, weight=0.5, rejected_image="right.png"),
        make_pair(1, weight=1.0),
        make_pair(2, weight=0.25, rejected_image="bright.png", image="dark.png"),
        make_pair(3, weight=0.75, image="right.png"),
    ]


def check_trained(out, base_dir, model_type):
    """The saved model differs from the base, reloads with load_vlm, and answers a question on an image."""
    before, after = load_file(base_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[key], after[key]) for key in before)
    model, processor = load_vlm(out, device="cpu")
    assert model.config.model_type == model_type
    # Two images of different sizes (Qwen2-VL: 4 and 3 image tokens), left-padded in one batch: greedy answers do
    # not depend on the batching.
    images = [Image.open(out.parent / "q.png"), Image.open(out.parent / "wide.png")]
    questions = ["Is the heart enlarged?", "Which side is the effusion on?"]
    answers = generate_answers(model, processor, images, questions, max_new_tokens=4, batch_size=2)
    assert len(answers) == 2 and all(len(answer) == 1 and isinstance(answer[0], str) for answer in answers)
    assert answers == generate_answers(model, processor, images, questions, max_new_tokens=4, batch_size=1)
    steps = [
        entry for entry in json.loads((out / "train_log.json").read_text())["log_history"] if "loss/weighted" in entry
    ]
    assert len(steps) == 2  # 4 pairs / batch 2
    assert any("rewards/margins/visual" in step for step in steps) and any(
        "rewards/margins/text" in step for step in steps
    )
    # Step 1: policy = reference (LoRA: B = 0), every pair's loss is log 2, and mean(w * l) = mean(w) * log 2.
    assert steps[0]["loss/unweighted"] == pytest.approx(math.log(2), abs=1e-5)
    assert steps[0]["loss/weighted"] == pytest.approx(steps[0]["weight/mean"] * math.log(2), abs=1e-5)
    assert steps[0]["weight/mean"] != 1.0
    assert (
        all(math.isfinite(step["loss/weighted"]) for step in steps)
        and steps[1]["loss/unweighted"] != steps[0]["loss/unweighted"]
    )
    return model, steps


def run_dir(tmp_path, image_root):
    Image.open(image_root / "left.png").save(tmp_path / "q.png")
    Image.open(image_root / "wide.png").save(tmp_path / "wide.png")
    return tmp_path / "model"


# --- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llava_med", "qwen2_vl"])
def test_full_fine_tuning(request, arch, image_root, tmp_path):
    base = request.getfixturevalue(f"{arch}_dir")
    settings = DPOSettings(per_device_train_batch_size=2, logging_steps=1)
    out = train_weighted_dpo(base, training_pairs(), [image_root], run_dir(tmp_path, image_root), settings)

    model, _ = check_trained(out, base, {"llava_med": "llava", "qwen2_vl": "qwen2_vl"}[arch])
    # The image encoder is frozen (freeze_vision_tower), the projector is not.
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    tower = [key for key in before if ("vision_tower" in key or "visual" in key) and "merger" not in key]
    projector = [key for key in before if "multi_modal_projector" in key or "merger" in key]
    assert tower and projector
    assert all(torch.equal(before[key], after[key]) for key in tower)
    assert any(not torch.equal(before[key], after[key]) for key in projector)
    if arch == "llava_med":
        assert model.config.text_config.model_type == "mistral"


@pytest.mark.parametrize("arch, train_projector", [("llava_med", True), ("qwen2_vl", False), ("qwen2_vl", True)])
def test_lora_with_the_documented_configuration(request, arch, train_projector, image_root, tmp_path):
    # docs/training.md's configuration for each (batch size, accumulation and learning rate cut to the test's size);
    # for Qwen2-VL also with its merger trained fully.
    base = request.getfixturevalue(f"{arch}_dir")
    documented = {
        "llava_med": {"lora_r": 64, "lora_alpha": 128},
        "qwen2_vl": {"lora_r": 32, "lora_alpha": 64, "lora_target_modules": list(DEFAULT_LORA_TARGETS)},
    }[arch]
    settings = DPOSettings(
        use_peft=True,
        precompute_ref_log_probs=True,
        activation_checkpointing=True,
        per_device_train_batch_size=2,
        logging_steps=1,
        max_length=None,
        train_projector=train_projector,
        **documented,
    )
    out = train_weighted_dpo(base, training_pairs(), [image_root], run_dir(tmp_path, image_root), settings)

    check_trained(out, base, {"llava_med": "llava", "qwen2_vl": "qwen2_vl"}[arch])
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_keys = [key for key in adapter if "lora_" in key]
    assert lora_keys and not any("vision_tower" in key or "visual." in key for key in lora_keys)
    # Every one of the 7 projection names got adapters, in each of the 2 layers (A and B each).
    assert len(lora_keys) == 2 * 7 * 2
    # The projector (LLaVA's multi_modal_projector, Qwen2-VL's visual.merger) is saved whole when trained.
    projector = [key for key in adapter if "multi_modal_projector" in key or "merger" in key]
    assert bool(projector) == train_projector and not any("lora_" in key for key in projector)
    if train_projector:
        before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
        merged = [key for key in before if "multi_modal_projector" in key or "merger" in key]
        assert any(not torch.equal(before[key], after[key]) for key in merged)
    assert list((out / "ref_logps").glob("ref_logps-*.safetensors"))


def ref_logps(trainer, rows):
    batch = trainer.data_collator(rows)
    batch = {key: value for key, value in batch.items() if key not in PAIR_BATCH_KEYS}
    return trainer.compute_ref_log_probs(trainer.ref_model, batch)


def test_rejected_image_reaches_the_rejected_sequence(model_dir, image_root, tmp_path):
    # Same prompt, answers and chosen image; only the rejected image differs.
    pairs = [make_pair(0, rejected_image="dark.png"), make_pair(0, rejected_image="bright.png"), make_pair(0)]
    dataset = pairs_to_dataset(pairs, [image_root])
    args = WeightedDPOConfig(str(tmp_path), report_to="none", bf16=False, use_cpu=True)
    trainer = WeightedDPOTrainer(model=str(model_dir), args=args, train_dataset=dataset)

    chosen_dark, rejected_dark = ref_logps(trainer, [dataset[0]])
    chosen_bright, rejected_bright = ref_logps(trainer, [dataset[1]])
    chosen_same, rejected_same = ref_logps(trainer, [dataset[2]])
    torch.testing.assert_close(chosen_dark, chosen_bright, atol=1e-5, rtol=0)
    torch.testing.assert_close(chosen_dark, chosen_same, atol=1e-5, rtol=0)
    assert abs(rejected_dark.item() - rejected_bright.item()) > 1e-3
    assert abs(rejected_bright.item() - rejected_same.item()) > 1e-3

    # In a batch (Qwen2-VL: all images' patches in one flat tensor), each pair's rejected row gets its own image.
    both = ref_logps(trainer, [dataset[0], dataset[1]])
    torch.testing.assert_close(both[1], torch.cat([rejected_dark, rejected_bright]), atol=1e-5, rtol=0)


def test_rejected_image_of_another_size_is_refused(qwen2_vl_dir, image_root, tmp_path):
    # Qwen2-VL sizes the image-token run by the image: a rejected image of another size would need another prompt.
    dataset = pairs_to_dataset([make_pair(0, rejected_image="wide.png")], [image_root])
    args = WeightedDPOConfig(str(tmp_path), report_to="none", bf16=False, use_cpu=True)
    trainer = WeightedDPOTrainer(model=str(qwen2_vl_dir), args=args, train_dataset=dataset)
    with pytest.raises(ValueError, match="rejected images must match their chosen images in size"):
        trainer.data_collator([dataset[0]])
    # Two pairs that swap a 4x4 and a 2x4 grid: the batch's patch count is unchanged (16 + 8 either way), but each
    # prompt's image-token run would get the other image's features.
    swapped = pairs_to_dataset(
        [make_pair(0, rejected_image="half.png"), make_pair(1, image="half.png", rejected_image="left.png")],
        [image_root],
    )
    with pytest.raises(ValueError, match="rejected images must match their chosen images in size: image_grid_thw"):
        trainer.data_collator(list(swapped))
