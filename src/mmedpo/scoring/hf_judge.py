"""The `hf` judge: a local transformers causal LM rates how clinically significant a pair is.

It asks the versioned `judge` prompt the `chat` judge asks
(src/mmedpo/prompts/judge_v1.txt: a rating from 1, no clinical difference, to
5, critical, as `{"score": N, ...}`), but does not generate and parse a reply:
it reads the model's next-token probabilities of the ratings "1".."5" right
after `{"score":`, renormalised over the five, and scores the expected rating,
mapped to [0, 1] by (E - 1) / 4 as the chat judge maps its rating. Nothing can
fail to parse, and a judge torn between 2 and 4 gives 3 rather than a coin
flip. A model that puts less than `min_mass` of its probability on the five
ratings is not answering the question, so the pair is left unscored with that
reason.

Config:

    score:
      judges: [findings, hf]
      judge_options:
        hf: {model: /models/BioMistral-7B, batch_size: 8}
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from string import Template

from mmedpo.prompts import load_prompt
from mmedpo.scoring.cache import folder_fingerprint
from mmedpo.scoring.judges import Judge, Verdict

RATINGS = ("1", "2", "3", "4", "5")
ANSWER_PREFIX = '{"score":'  # the start of the JSON reply the prompt asks for


def rating_token_ids(tokenizer, prompt: str, add_special_tokens: bool) -> tuple[str, list[int]]:
    """The separator after `prompt` and the token id of each rating, each rating being one token.

    Tokenizers differ: GPT-style BPE has " 3" as one token, Llama's SentencePiece
    splits it into "▁" and "3". The first separator under which every rating adds
    exactly one token to the prompt's tokens is used.
    """
    base = tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids
    for separator in (" ", ""):
        ids = []
        for rating in RATINGS:
            tokens = tokenizer(prompt + separator + rating, add_special_tokens=add_special_tokens).input_ids
            if tokens[: len(base)] != base or len(tokens) != len(base) + 1:
                break
            ids.append(tokens[-1])
        if len(ids) == len(RATINGS) and len(set(ids)) == len(RATINGS):
            return separator, ids
    raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no single token for each rating 1..5")


class HFJudge(Judge):
    """Rates pairs with a local causal LM from the probabilities of the ratings 1..5."""

    name = "hf"

    def __init__(
        self,
        model: str,
        batch_size: int = 8,
        min_mass: float = 0.5,
        device: str | None = None,
        prompt_version: str | None = None,
    ):
        # transformers takes seconds to import; only a panel with this judge pays for it.
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1 or not 0 <= min_mass <= 1:
            raise ValueError(f"hf judge: need batch_size >= 1 and 0 <= min_mass <= 1, got {batch_size}, {min_mass}")
        text, self.version = load_prompt("judge", prompt_version)
        self.template = Template(text)
        self.model = str(model)
        self.weights = folder_fingerprint(self.model)
        self.batch_size = batch_size
        self.min_mass = min_mass
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model)
        self.tokenizer.padding_side = "left"  # the next token is then at the last position of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(self.model, dtype="auto").to(self.device).eval()
        # A chat template writes the special tokens itself; a plain prompt gets the tokenizer's.
        self.add_special_tokens = not self.tokenizer.chat_template
        self.separator, self.rating_ids = rating_token_ids(
            self.tokenizer, self._render("q", "a", "b"), self.add_special_tokens
        )

    def _render(self, question: str, chosen: str, rejected: str) -> str:
        text = self.template.substitute(question=question, chosen=chosen, rejected=rejected)
        if self.tokenizer.chat_template:
            messages = [{"role": "user", "content": text}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text += "\n"
        return text + ANSWER_PREFIX

    def score(self, question: str, chosen: str, rejected: str) -> Verdict:
        return next(self.score_many([(question, chosen, rejected)]))[1]

    def score_many(self, items: Sequence[tuple[str, str, str]]) -> Iterator[tuple[int, Verdict]]:
        prompts = [self._render(*item) + self.separator for item in items]
        # Batching prompts of similar length wastes less compute on padding.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            probabilities = self._rating_probabilities([prompts[i] for i in batch])
            for index, row in zip(batch, probabilities):
                yield index, self._verdict(row)

    def _rating_probabilities(self, prompts: list[str]) -> list[list[float]]:
        """Next-token probability of each rating after each prompt."""
        import torch

        encoded = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=self.add_special_tokens
        ).to(self.device)
        # Left padding shifts each row: models with absolute positions (GPT-2) need positions that
        # count real tokens only. Rotary ones (Llama) are shift-invariant and lose nothing.
        positions = (encoded.attention_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = self.lm(**encoded, position_ids=positions).logits[:, -1, :]
        return logits.float().softmax(-1)[:, self.rating_ids].tolist()

    def _verdict(self, probabilities: list[float]) -> Verdict:
        mass = sum(probabilities)
        if mass == 0 or mass < self.min_mass:
            return Verdict(
                None,
                f"only {mass:.1%} of the next-token probability is on the ratings 1-5 "
                f"(min_mass {self.min_mass:.0%}): the model is not answering with a rating",
            )
        shares = [p / mass for p in probabilities]
        expected = sum(rating * share for rating, share in enumerate(shares, start=1))
        listed = " ".join(f"{share:.2f}" for share in shares)
        return Verdict((expected - 1) / 4, f"expected rating {expected:.2f} of 5 (1-5: {listed}; mass {mass:.0%})")
