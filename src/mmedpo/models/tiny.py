"""The tiny LLaVA: a real `LlavaForConditionalGeneration`, small enough to train on a laptop CPU.

It is built from scratch (no downloaded weights): a byte-level BPE tokenizer trained on
the dataset's own text, a tiny CLIP vision tower and a tiny Llama. It is saved with
`save_pretrained`, so every other stage loads it exactly as it would load a 7B
LLaVA-Med: `AutoProcessor` / `AutoModelForImageTextToText`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, IMAGE]

# LLaVA-1.5 style: "<s>USER: <image>\nQ ASSISTANT: A</s>". The prompt rendered with
# add_generation_prompt is a prefix of prompt + answer, which TRL's DPOTrainer relies on
# to split prompt from completion. String contents and system turns are accepted too.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for part in parts if part['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for part in parts if part['type'] == 'text' %}{{ part['text'] }}{% endfor %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for part in parts if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}{{ eos_token }}"
    "{% elif message['role'] == 'system' %}"
    "{% for part in parts if part['type'] == 'text' %}{{ part['text'] }}{% endfor %} "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 800) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`.

    Byte-level means any text round-trips exactly (case and unseen characters included);
    the merges learnt from the corpus only make its words short. No special tokens are
    added by `encode`: the chat template writes the BOS/EOS itself.
    """
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_as_seen_in_chats(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE},
        chat_template=CHAT_TEMPLATE,
    )


def _as_seen_in_chats(texts: Iterable[str]) -> Iterator[str]:
    """Each text both as it is and after a space, as answers follow "ASSISTANT:".

    Byte-level BPE learns " yes" and "yes" as different words; both forms occur in chats.
    """
    yield "USER: ASSISTANT:"  # the chat template's role words are in every sequence
    for text in texts:
        yield text
        yield " " + text


def build_tiny_llava(
    texts: Iterable[str],
    out_dir: Path,
    image_size: int = 64,
    seed: int = 0,
    vision_hidden: int = 64,
    text_hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    vocab_size: int = 800,
) -> Path:
    """Build a randomly initialised tiny LLaVA with its processor and save both to `out_dir`.

    The same texts and seed give the same weights. Images are resized and cropped to
    `image_size` pixels and cut into 8x8 patches, so each image takes
    (image_size / 8) ** 2 + 1 tokens of the sequence (the patches and CLIP's class token).
    """
    patch_size = 8
    if image_size % patch_size:
        raise ValueError(f"image_size must be a multiple of {patch_size}, got {image_size}")
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
        num_additional_image_tokens=1,  # CLIP's class token
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=2 * vision_hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch_size,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_hidden,
            intermediate_size=2 * text_hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_seq_length=(image_size // patch_size) ** 2 + 1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
