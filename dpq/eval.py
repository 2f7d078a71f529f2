"""Accuracy evaluation: token perplexity and zero-shot multiple-choice accuracy, one stated protocol for all methods.

Perplexity protocol: the evaluation half of a text source is joined with blank lines, tokenized (no BOS), cut into
non-overlapping windows of ``window`` tokens; each window is scored on its own from its first token, so
``window - 1`` tokens per window are predicted; ppl = exp(mean negative log-likelihood over all predicted tokens).

Zero-shot protocol: for each choice, log p(continuation | context) summed over the continuation's tokens
(context and continuation tokenized separately, context truncated on the left to ``max_tokens``);
``acc`` = argmax of the sum, ``acc_norm`` = argmax of the sum divided by the continuation's length in UTF-8 bytes
(lm-evaluation-harness' acc_norm). LAMBADA: acc = every token of the last word is the greedy prediction.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from dpq.data import Example
from dpq.model import LlamaModel, log_softmax_at


class Progress:
    """A minimal progress bar on a stream (stderr): ``label  done/total  elapsed``."""

    def __init__(self, total: int, label: str, stream="stderr"):
        stream = sys.stderr if stream == "stderr" else stream  # resolved per call: stderr may be replaced
        self.total, self.label, self.stream = max(int(total), 1), label, stream
        self.done, self.t0, self._last = 0, time.perf_counter(), -1.0
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.stream is None:
            return
        now = time.perf_counter()
        final = self.done >= self.total
        if not final and now - self._last < (0.5 if self._tty else 10.0):
            return
        self._last = now
        width = 24
        filled = int(width * min(self.done, self.total) / self.total)
        msg = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {now - self.t0:.0f}s"
        end = "\n" if (final or not self._tty) else ""
        print(("\r" if self._tty else "") + msg, end=end, file=self.stream, flush=True)


def perplexity(model: LlamaModel, windows: np.ndarray, *, batch_size: int = 4, progress="stderr",
               label: str = "[ppl]") -> dict:
    """Token perplexity of ``windows`` int (n, T): {'ppl', 'nll', 'tokens', 'windows', 'window'}."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (n, T >= 2) token ids, got shape {windows.shape}")
    bar = Progress(len(windows), label, progress)
    nll_sum, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        ids = windows[i:i + batch_size]
        hidden = model.hidden_states(ids)
        for b in range(ids.shape[0]):
            lp = log_softmax_at(model.logits(hidden[b, :-1]), ids[b, 1:])
            nll_sum -= float(lp.sum())
            count += lp.size
        bar.update(ids.shape[0])
    nll = nll_sum / count
    return {"ppl": float(np.exp(nll)), "nll": nll, "tokens": count, "windows": int(len(windows)),
            "window": int(windows.shape[1])}


@dataclass(frozen=True)
class _Request:
    ids: tuple  # context + continuation tokens
    n_cont: int  # continuation tokens at the end of ids


def score_requests(model: LlamaModel, requests: list[_Request], *, token_budget: int = 4096, progress=None,
                   label: str = "") -> list[tuple[float, bool]]:
    """(sum log p(continuation), greedy match) per request; batches of similar length, right padding (causal)."""
    order = sorted(range(len(requests)), key=lambda k: -len(requests[k].ids))
    out: list = [None] * len(requests)
    bar = Progress(len(requests), label, progress)
    i = 0
    while i < len(order):
        t_max = len(requests[order[i]].ids)
        b = max(1, token_budget // t_max)
        batch = order[i:i + b]
        ids = np.zeros((len(batch), t_max), dtype=np.int64)
        for r, k in enumerate(batch):
            seq = requests[k].ids
            ids[r, :len(seq)] = seq
        hidden = model.hidden_states(ids)
        rows, targets, spans = [], [], []
        for r, k in enumerate(batch):
            req = requests[k]
            n = len(req.ids)
            pos = np.arange(n - req.n_cont - 1, n - 1)
            spans.append((len(targets), len(targets) + len(pos)))
            rows.append(hidden[r, pos])
            targets.extend(req.ids[n - req.n_cont:])
        logits = model.logits(np.concatenate(rows))
        targets = np.asarray(targets)
        lp = log_softmax_at(logits, targets)
        greedy = logits.argmax(axis=-1) == targets
        for (a, z), k in zip(spans, batch):
            out[k] = (float(lp[a:z].sum()), bool(greedy[a:z].all()))
        bar.update(len(batch))
        i += len(batch)
    return out


def build_requests(tokenizer, examples: list[Example], max_tokens: int) -> list[list[_Request]]:
    """Token requests per example and choice (context truncated on the left so the whole fits ``max_tokens``)."""
    out = []
    for ex in examples:
        reqs = []
        for ctx, cont in zip(ex.contexts, ex.continuations):
            c = tokenizer.encode(ctx)
            k = tokenizer.encode(cont)
            if not k:
                raise ValueError(f"continuation {cont!r} has no tokens")
            k = k[-(max_tokens - 1):]
            c = c[-(max_tokens - len(k)):] if len(c) + len(k) > max_tokens else c
            if not c:
                raise ValueError(f"context of {cont!r} is empty after tokenization")
            reqs.append(_Request(tuple(c + k), len(k)))
        out.append(reqs)
    return out


def zero_shot(model: LlamaModel, tokenizer, task: str, examples: list[Example], *, max_tokens: int = 512,
              progress="stderr") -> dict:
    """Accuracy on ``examples``: {'acc', 'acc_norm', 'n'} (LAMBADA: acc only; acc_norm equals acc)."""
    per_example = build_requests(tokenizer, examples, max_tokens)
    flat = [r for reqs in per_example for r in reqs]
    scores = score_requests(model, flat, progress=progress, label=f"[{task}]")
    correct = correct_norm = 0
    i = 0
    for ex, reqs in zip(examples, per_example):
        s = scores[i:i + len(reqs)]
        i += len(reqs)
        if task == "lambada":
            correct += s[0][1]
            correct_norm += s[0][1]
            continue
        ll = np.array([v for v, _ in s])
        lengths = np.array([len(c.encode("utf-8")) for c in ex.continuations], dtype=np.float64)
        correct += int(np.argmax(ll) == ex.label)
        correct_norm += int(np.argmax(ll / lengths) == ex.label)
    n = len(examples)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n}


# Metric reported per task in tables: lm-evaluation-harness' usual choice (acc_norm where length bias matters).
PRIMARY_METRIC = {"lambada": "acc", "hellaswag": "acc_norm", "piqa": "acc_norm", "arc_easy": "acc",
                  "arc_challenge": "acc_norm", "boolq": "acc", "winogrande": "acc", "openbookqa": "acc_norm"}


def evaluation_inputs(tokenizer, *, datasets, tasks, ppl_window: int, ppl_windows: int, examples: int | None,
                      seed: int = 0) -> dict:
    """Token windows per text dataset and example subsets per task (built once, reused for every method)."""
    from dpq.data import load_documents, load_task, sample_examples, split_documents, token_windows

    windows = {d: token_windows(tokenizer, split_documents(load_documents(d), "eval"), ppl_window, ppl_windows)
               for d in datasets}
    subsets = {t: sample_examples(load_task(t), examples, seed) for t in tasks} if examples else {}
    return {"windows": windows, "tasks": subsets}


def evaluate(model: LlamaModel, tokenizer, inputs: dict, *, max_tokens: int = 384, progress="stderr") -> dict:
    """{'ppl': {dataset: perplexity dict}, 'zero_shot': {task: {'acc', 'acc_norm', 'n'}}} on prepared inputs."""
    ppl = {d: perplexity(model, w, progress=progress, label=f"[ppl {d}]") for d, w in inputs["windows"].items()}
    zs = {t: zero_shot(model, tokenizer, t, ex, max_tokens=max_tokens, progress=progress)
          for t, ex in inputs["tasks"].items()}
    return {"ppl": ppl, "zero_shot": zs}


def compare_backends(model_a: LlamaModel, model_b: LlamaModel, windows: np.ndarray, progress="stderr") -> dict:
    """Run two models (e.g. reference vs emulated backend) on the same windows.

    Returns ppl of each, max and mean |logit difference|, and the fraction of positions whose argmax token agrees.
    """
    windows = np.asarray(windows)
    bar = Progress(len(windows), "[compare]", progress)
    nll = [0.0, 0.0]
    count, max_diff, sum_diff, n_logits, agree = 0, 0.0, 0.0, 0, 0
    for w in windows:
        ids = w[None, :]
        la = model_a.forward(ids)[0, :-1]
        lb = model_b.forward(ids)[0, :-1]
        nll[0] -= float(log_softmax_at(la, w[1:]).sum())
        nll[1] -= float(log_softmax_at(lb, w[1:]).sum())
        d = np.abs(la.astype(np.float64) - lb)
        max_diff = max(max_diff, float(d.max()))
        sum_diff += float(d.sum())
        n_logits += d.size
        agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
        count += len(w) - 1
        bar.update()
    return {"ppl_a": float(np.exp(nll[0] / count)), "ppl_b": float(np.exp(nll[1] / count)),
            "max_abs_logit_diff": max_diff, "mean_abs_logit_diff": sum_diff / n_logits,
            "argmax_agreement": agree / count, "tokens": count}


def compare_linears(model: LlamaModel, ckpt, hw, windows: np.ndarray, *, out_dtype: str = "bfloat16") -> dict:
    """Per-linear agreement of the emulated and reference backends on the same real inputs.

    Inputs of every linear are recorded while the reference-backend model runs ``windows``; each linear then runs on
    both backends and SQNR(reference, emulated) in dB is taken. Returns mean/min/max over linears and the count of
    linears whose outputs are identical; ``per_linear`` lists {"linear": name, "sqnr_db": value} in checkpoint order
    (inf where the outputs are identical).
    """
    from dpq.backends import EmulatedLinear, ReferenceLinear
    from dpq.calibrate import INPUT_GROUP_OF, apply_checkpoint
    from dpq.quantizers import sqnr_db

    acts: dict = {}
    apply_checkpoint(model, ckpt).hidden_states(np.asarray(windows),
                                                observer=lambda i, g, h: acts.setdefault((i, g), []).append(h))
    values = []
    for key, p in ckpt.linears.items():
        i, name = int(key.split(".")[1]), key.split(".", 2)[2]
        x = np.concatenate(acts[(i, INPUT_GROUP_OF[name])])
        values.append(sqnr_db(ReferenceLinear(p)(x), EmulatedLinear(p, hw, out_dtype)(x)))
    v = np.array(values)
    finite = v[np.isfinite(v)]
    return {"linears": int(v.size), "identical": int(np.isinf(v).sum()),
            "sqnr_db_mean_finite": float(finite.mean()) if finite.size else float("inf"),
            "sqnr_db_min": float(v.min()),
            "per_linear": [{"linear": key, "sqnr_db": float(x)} for key, x in zip(ckpt.linears, v)]}
