"""The one prompt format every model sees: a conversation of an image, a question and an answer.

SFT, generation, the DPO trainer and the TRL preference export all build their
prompts here, and each model's processor renders them with its own chat template.
"""

from __future__ import annotations


def prompt_messages(question: str, answer: str | None = None) -> list[dict]:
    """The conversation for one image and question, with the assistant's answer when given."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages
