"""Text lines drawn from planted topics of pseudo-words."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from distnmf.ingest.report import progress
from distnmf.synth.blocks import DOCS, atomic_text, block_range, draw, n_blocks, seeded_rng, zipf_cdf


@dataclass(frozen=True)
class PlantedDocuments:
    """Synthetic text documents and their ground truth.

    Attributes
    ----------
    path : the text file, one document per line.
    topic_words : of shape (n_topics, words_per_topic), each topic's words.
    doc_topics : of shape (n_docs, 2), each document's two topics (equal when it has one).
    """

    path: Path
    topic_words: np.ndarray
    doc_topics: np.ndarray


def pseudo_words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct pronounceable 6-letter words (consonant-vowel x 3), none an English stop word."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    space = len(syllables) ** 3
    if n > space // 2:
        raise ValueError(f"at most {space // 2} pseudo-words are available, asked for {n}")
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        for code in rng.integers(space, size=2 * (n - len(words))):
            a, rest = divmod(int(code), len(syllables) ** 2)
            b, c = divmod(rest, len(syllables))
            word = syllables[a] + syllables[b] + syllables[c]
            if word not in seen and word not in ENGLISH_STOP_WORDS:
                seen.add(word)
                words.append(word)
                if len(words) == n:
                    break
    return words


def documents(path: str | os.PathLike, n_docs: int = 10_000, *, n_topics: int = 10, words_per_topic: int = 30,
              n_background: int = 300, doc_length: int = 50, topic_mix: float = 0.8,
              second_topic: float = 0.3, seed: int = 0, overwrite: bool = False,
              show_progress: bool | None = None) -> PlantedDocuments:
    """Write ``n_docs`` lines of text, each a document drawn from one or two planted topics.

    A document has about ``doc_length`` words; each is, with probability ``topic_mix``, a
    uniform pick from one of its topics' ``words_per_topic`` words, else a Zipf-distributed
    pick from ``n_background`` shared words. Words are distinct pseudo-words.
    """
    if min(n_docs, n_topics, words_per_topic, n_background, doc_length) < 1:
        raise ValueError("n_docs, n_topics, words_per_topic, n_background and doc_length must be >= 1")
    rng = seeded_rng(seed, DOCS)
    vocab = np.array(pseudo_words(n_topics * words_per_topic + n_background, rng))
    topic_words = vocab[: n_topics * words_per_topic].reshape(n_topics, words_per_topic)
    background = vocab[n_topics * words_per_topic:]
    cdf = zipf_cdf(n_background, 1.0)
    doc_topics = np.empty((n_docs, 2), dtype=np.int64)
    with atomic_text(path, overwrite) as f:
        for b in progress(range(n_blocks(n_docs)), total=n_blocks(n_docs), desc="synth documents",
                          unit="block", enabled=show_progress):
            start, stop = block_range(b, n_docs)
            for words, topics in _document_block(seeded_rng(seed, DOCS, b), stop - start, topic_words, background,
                                                 cdf, doc_length, topic_mix, second_topic):
                f.write(" ".join(words) + "\n")
                doc_topics[start] = topics
                start += 1
    return PlantedDocuments(Path(path), topic_words, doc_topics)


def _document_block(rng: np.random.Generator, n: int, topic_words: np.ndarray, background: np.ndarray,
                    cdf: np.ndarray, doc_length: int, topic_mix: float, second_topic: float
                    ) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    n_topics, per_topic = topic_words.shape
    first = rng.integers(n_topics, size=n)
    second = np.where(rng.random(n) < second_topic, rng.integers(n_topics, size=n), first)
    lengths = np.maximum(1, rng.poisson(doc_length, size=n))
    for i in range(n):
        m = int(lengths[i])
        topic = np.where(rng.random(m) < 0.5, second[i], first[i])
        planted = topic_words[topic, rng.integers(per_topic, size=m)]
        words = np.where(rng.random(m) < topic_mix, planted, background[draw(cdf, rng.random(m))])
        yield words, (int(first[i]), int(second[i]))
