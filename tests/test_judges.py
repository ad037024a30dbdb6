"""The hf and embedding judges, the judge cache and the agreement measures, on hand-computed numbers."""

from __future__ import annotations

import math
from string import Template

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from mmedpo.models.tiny import train_tokenizer
from mmedpo.prompts import load_prompt
from mmedpo.registry import JUDGES
from mmedpo.scoring.agreement import krippendorff_alpha, spearman, spearman_matrix
from mmedpo.scoring.cache import JudgeCache, cache_key, folder_fingerprint
from mmedpo.scoring.hf_judge import HFJudge, rating_token_ids
from mmedpo.scoring.judges import Verdict

QUESTION = "Is there a pneumothorax?"
PAIRS = [
    (QUESTION, "No", "Yes, there is a large pneumothorax."),
    ("Describe the image.", "The lungs are clear.", "There is a small nodule in the left upper lobe of the lung."),
    ("Where is the effusion?", "Right", "Left"),
]


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    """A randomly initialised tiny GPT-2 and a byte-level BPE tokenizer (with a chat template) trained here."""
    template = Template(load_prompt("judge", "v1")[0])
    texts = [template.substitute(question=q, chosen=c, rejected=r) for q, c, r in PAIRS]
    texts += [f'{{"score": {rating}, "reason": "x"}}' for rating in "12345"]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    # GPT-2 has absolute positions, so a batch whose left padding shifted them would change scores.
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny_judge")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def set_next_token_logits(judge: HFJudge, logits: dict[int, float]) -> None:
    """Make the judge's LM predict fixed logits: a zero-weight head with a bias (-1e4 for unnamed tokens)."""
    head = torch.nn.Linear(judge.lm.config.hidden_size, judge.lm.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)
        for token, value in logits.items():
            head.bias[token] = value
    judge.lm.lm_head = head


def test_hf_judge_scores_the_expected_rating(tiny_judge_dir):
    judge = JUDGES.load("hf")(model=str(tiny_judge_dir))
    assert [judge.tokenizer.decode([i]).strip() for i in judge.rating_ids] == ["1", "2", "3", "4", "5"]
    one, four = judge.rating_ids[0], judge.rating_ids[3]
    other = judge.tokenizer.eos_token_id
    # p(1) : p(4) : p(other) = 1 : 3 : 1, so the ratings hold 80% and share 0.25 / 0.75.
    set_next_token_logits(judge, {one: 0.0, four: math.log(3), other: 0.0})
    verdict = judge.score(*PAIRS[0])
    # E = 0.25 * 1 + 0.75 * 4 = 3.25; (3.25 - 1) / 4 = 0.5625
    assert verdict.score == pytest.approx(0.5625, abs=1e-6)
    assert verdict.reason == "expected rating 3.25 of 5 (1-5: 0.25 0.00 0.00 0.75 0.00; mass 80%)"


def test_hf_judge_leaves_a_non_answer_unscored(tiny_judge_dir):
    judge = HFJudge(model=str(tiny_judge_dir), min_mass=0.5)
    assert judge.weights == folder_fingerprint(tiny_judge_dir) != ""  # in the cache key: new weights, new verdicts
    three = judge.rating_ids[2]
    other = judge.tokenizer.eos_token_id
    set_next_token_logits(judge, {three: 0.0, other: math.log(9)})  # the ratings hold 10%
    verdict = judge.score(*PAIRS[1])
    assert verdict.score is None
    assert verdict.reason.startswith("only 10.0% of the next-token probability is on the ratings 1-5")


def test_hf_judge_batches_give_the_single_scores(tiny_judge_dir):
    # Prompts of different lengths share a left-padded batch: padding must not change a score.
    judge = HFJudge(model=str(tiny_judge_dir), batch_size=3, min_mass=0.0)
    batched = dict(judge.score_many(PAIRS))
    assert sorted(batched) == [0, 1, 2]
    for index, pair in enumerate(PAIRS):
        single = judge.score(*pair)
        assert 0 <= single.score <= 1
        assert batched[index].score == pytest.approx(single.score, abs=1e-5)
    assert len({round(v.score, 6) for v in batched.values()}) == 3  # the prompts really differ


def test_rating_tokens_must_exist():
    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "Score:": 1}, unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]")
    with pytest.raises(ValueError, match="no single token for each rating 1..5"):
        rating_token_ids(tokenizer, "Score:", add_special_tokens=False)


@pytest.mark.slow
def test_embedding_judge_on_the_shipped_minilm():
    judge = JUDGES.load("embedding")()
    assert len(judge.weights) == 16  # the shipped model folder's fingerprint
    normal = "The lungs are clear."
    verdicts = dict(
        judge.score_many(
            [
                (QUESTION, normal, normal),
                (QUESTION, normal, "Lungs clear."),
                (QUESTION, normal, "There is a large right pleural effusion and a pneumothorax."),
            ]
        )
    )
    assert verdicts[0] == Verdict(0.0, "cosine similarity 1.000")
    # Values of all-MiniLM-L6-v2 itself (cosine 0.908 and 0.504): a rewording is close, new findings far.
    assert verdicts[1].score == pytest.approx(0.0925, abs=2e-3)
    assert verdicts[2].score == pytest.approx(0.4956, abs=2e-3)
    assert judge.model == "all-MiniLM-L6-v2"


def test_cache_key_is_stable_and_separates_fields():
    key = cache_key("chat", "1", "gpt-4o", QUESTION, "No", "Yes")
    # Pinned: a changed key would silently re-ask every judge of every existing cache.
    assert key == "4640198ff5af24a401e8a7c5563f0d5959a38b0818f4f811a604c3e47a00df54"
    assert (
        len(
            {
                key,
                cache_key("chat", "2", "gpt-4o", QUESTION, "No", "Yes"),
                cache_key("chat", "1", "gpt-4o-mini", QUESTION, "No", "Yes"),
                cache_key("chat", "1", "gpt-4o", QUESTION, "No", "Yes."),
            }
        )
        == 4
    )
    assert cache_key("j", "1", "m", "q", "a b", "c") != cache_key("j", "1", "m", "q", "a", "b c")


def test_cache_persists_counts_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "judge_cache.jsonl"
    cache = JudgeCache(path)
    cache.put("k1", 0.9, "pneumothorax")
    cache.put("k2", 0.1, "rewording")
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "k3", "sco')  # a kill in the middle of a write
    reopened = JudgeCache(path)
    assert len(reopened) == 2
    assert reopened.get("k1") == (0.9, "pneumothorax")
    assert reopened.get("k3") is None
    assert reopened.get("k2") == (0.1, "rewording")
    assert (reopened.hits, reopened.misses) == (2, 1)
    reopened.put("k3", 0.5, "again")
    assert len(path.read_text().splitlines()) == 3
    assert JudgeCache(path).get("k3") == (0.5, "again")


def test_cache_names_a_bad_line(tmp_path):
    path = tmp_path / "judge_cache.jsonl"
    path.write_text('{"key": "k1", "score": 0.5, "reason": "x"}\n{"nope": 1}\n')
    with pytest.raises(ValueError, match=r"judge_cache.jsonl:2: not a judge cache entry"):
        JudgeCache(path)


def test_spearman_on_hand_computed_ranks():
    # d = (0, 1, 1, 0): rho = 1 - 6 * 2 / (4 * 15) = 0.8; the None pair is left out.
    assert spearman([1, 2, 3, 4, None], [1, 3, 2, 4, 9]) == pytest.approx(0.8)
    assert spearman([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]) is None  # a constant judge has no ranking
    assert spearman_matrix({"a": [1, 2, 3], "b": [3, 2, 1], "c": [1, 3, 2]}) == pytest.approx(
        {"a vs b": -1.0, "a vs c": 0.5, "b vs c": -0.5}
    )


def test_krippendorff_alpha_on_a_hand_case():
    # Units (1, 1), (2, 2), (3, 4): Do = 2 / 6 (one disagreeing unit, both orders);
    # De = sum over ordered pairs of all 6 values of (a - b)^2 = 82, over 6 * 5.  alpha = 1 - (1/3) / (82/30).
    assert krippendorff_alpha({"a": [1, 2, 3], "b": [1, 2, 4]}) == pytest.approx(1 - 10 / 82)
    # A unit only one judge scored pairs with nothing: it changes nothing.
    assert krippendorff_alpha({"a": [1, 2, 3, None], "b": [1, 2, 4, 5]}) == pytest.approx(1 - 10 / 82)
    assert krippendorff_alpha({"a": [1, 2, 3]}) is None
    assert krippendorff_alpha({"a": [0.5, 0.5], "b": [0.5, 0.5]}) is None
