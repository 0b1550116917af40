"""Exact match and token F1 of a generated answer against its reference(s), with SQuAD's normalisation.

Written by hand only because it is tiny (SQuAD v2's official evaluate script, a dozen lines): pulling a
metrics package into every trial process for it would cost more than it saves. Pure Python, no torch.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    refs = [references] if isinstance(references, str) else list(references)
    return float(any(normalize(prediction) == normalize(r) for r in refs))


def f1(prediction: str, references: str | Sequence[str]) -> float:
    """The best token F1 over the references. An empty (normalised) answer on either side scores 1.0 only
    when both are empty, as in SQuAD v2 (an unanswerable question answered with nothing is right)."""
    refs = [references] if isinstance(references, str) else list(references)
    return max((_f1(prediction, r) for r in refs), default=0.0)


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


SCORERS = {"exact_match": exact_match, "f1": f1}


def mean_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
                names: Sequence[str]) -> dict[str, float]:
    """{name: mean score over the examples} for each name in `names` (keys of SCORERS)."""
    n = max(len(predictions), 1)
    return {name: sum(SCORERS[name](p, r) for p, r in zip(predictions, references, strict=True)) / n
            for name in names}
