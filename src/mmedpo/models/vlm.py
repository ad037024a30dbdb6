"""Loading any Hugging Face vision-language model and generating answers with it.

Nothing here knows about the tiny LLaVA: the prompt is written through the
processor's own chat template, so llava-hf, converted LLaVA-Med or Qwen2-VL
checkpoints work the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.generation import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from mmedpo.data.messages import prompt_messages
from mmedpo.progress import progress_bar

# Submodule names under which HF VLMs keep their image encoder (llava-hf, LLaVA-Med converted, Qwen2-VL...)
# and their vision-to-text projector.
VISION_MODULES = ("vision_tower", "visual", "vision_model")
PROJECTOR_MODULES = ("multi_modal_projector", "mm_projector", "merger")


def load_vlm(path: Path | str, device: str | None = None, dtype=None):
    """`(model, processor)` from a local checkpoint folder, the model in eval mode on `device`.

    `device` defaults to CUDA when available, else CPU; `dtype` defaults to the checkpoint's own.
    Nothing is downloaded.
    """
    if not Path(path).is_dir():
        raise ValueError(f"no model folder at {path}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(
        path, local_files_only=True, dtype=dtype if dtype is not None else "auto"
    )
    return model.to(device).eval(), processor


def freeze_vision_tower(model: torch.nn.Module) -> int:
    """Stop gradients into the image encoder (not the projector); returns how many tensors were frozen."""
    frozen = 0
    for name, parameter in model.named_parameters():
        if _in_module(name, VISION_MODULES) and not _in_module(name, PROJECTOR_MODULES):
            parameter.requires_grad_(False)
            frozen += 1
    return frozen


def _in_module(name: str, modules: tuple[str, ...]) -> bool:
    return any(part in modules for part in name.split("."))


def encode(processor, images: list[Image.Image], texts: list[str], padding_side: str):
    """Tokenize chat-rendered texts with their images, padded on `padding_side`.

    A template that writes the BOS itself must not get a second one from the tokenizer.
    """
    bos = processor.tokenizer.bos_token
    add_special_tokens = not (bos and all(text.startswith(bos) for text in texts))
    return processor(
        images=images,
        text=texts,
        padding=True,
        padding_side=padding_side,
        add_special_tokens=add_special_tokens,
        return_tensors="pt",
    )


def generate_answers(
    model,
    processor,
    images: list[Image.Image],
    questions: list[str],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
) -> list[list[str]]:
    """The model's answers: one list of `num_return_sequences` candidates per question.

    Greedy decoding (the default) is deterministic and does not depend on `batch_size`.
    Sampling (temperature, nucleus `top_p`) draws question q's candidates from a
    generator of its own seeded with `seeds[q]`, so a question's answers do not
    depend on the batch it is in: a server that answers it alone, as an
    OpenAI-compatible request with that `seed` and `n`, draws what a batch draws.
    Without `seeds`, they are drawn from torch's global generator.
    """
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images for {len(questions)} questions")
    if num_return_sequences > 1 and not do_sample:
        raise ValueError("num_return_sequences > 1 needs do_sample=True: greedy candidates would be identical")
    if do_sample and seeds is None:
        seeds = torch.randint(0, 2**31, (len(questions),)).tolist()
    if seeds is not None and len(seeds) != len(questions):
        raise ValueError(f"got {len(seeds)} seeds for {len(questions)} questions")
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n = num_return_sequences
    answers: list[list[str]] = []
    with progress_bar("generate", len(questions), progress) as advance:
        for start in range(0, len(questions), batch_size):
            batch = range(start, min(start + batch_size, len(questions)))
            # Each question's row repeated once per candidate: a sampled row is greedy over noised logits.
            prompts = [
                processor.apply_chat_template(prompt_messages(questions[q]), add_generation_prompt=True)
                for q in batch
                for _ in range(n)
            ]
            inputs = encode(processor, [images[q] for q in batch for _ in range(n)], prompts, padding_side="left")
            inputs = inputs.to(model.device, dtype=model.dtype)
            processors = LogitsProcessorList()
            if do_sample:
                sampler = _SeededSampler([seeds[q] for q in batch], n)
                processors += [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p), sampler]
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    logits_processor=processors,
                    pad_token_id=pad,
                )
            texts = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            texts = [text.strip() for text in texts]
            answers.extend(texts[i : i + n] for i in range(0, len(texts), n))
            advance(len(batch))
    return answers


class _SeededSampler(LogitsProcessor):
    """Sampling with a generator per question: argmax of log-probabilities plus Gumbel noise (the Gumbel-max trick).

    argmax(log p - log E) with E ~ Exp(1) is a draw from p, so greedy search over
    these scores samples. Each question's generator draws the noise of its `n`
    candidate rows (consecutive in the batch) at every step. transformers' own
    sampling draws every row from one global generator, which ties a row's draw
    to the batch around it.
    """

    def __init__(self, seeds: Sequence[int], n: int):
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.n = n

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        shape = (self.n, scores.shape[-1])
        exponential = torch.cat([torch.empty(shape).exponential_(generator=g) for g in self.generators])
        return scores - exponential.log().to(scores.device, scores.dtype)
