"""Sampling on constructed logits: the filters equal HF's logits processors, the penalties follow
ChatRWKV's PIPELINE loop, draws follow the distribution and are reproducible by seed."""
import math

import numpy as np
import pytest

from rwkv_np.errors import InputError
from rwkv_np.sampling import (Penalties, apply_presence_frequency, apply_repetition_penalty, greedy,
                              logits_to_probs, sample, softmax, suppress_tokens, top_k_filter,
                              top_p_filter)


def random_logits(rows=6, vocab=50, seed=0):
    return np.random.default_rng(seed).normal(0, 3, (rows, vocab))


def hf_top_p_by_hand(scores, top_p):
    """HF TopPLogitsWarper's rule written out: sort ascending, drop while cumsum <= 1 - top_p,
    always keep the most probable token."""
    out = scores.copy()
    for row, s in zip(out, scores):
        order = np.argsort(s, kind="stable")
        p = np.exp(s[order] - s.max())
        cum = np.cumsum(p / p.sum())
        drop = cum <= 1 - top_p
        drop[-1] = False
        row[order[drop]] = -np.inf
    return out


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.7, 0.95])
def test_top_p_keeps_the_same_tokens_as_hf_rule(top_p):
    scores = random_logits()
    np.testing.assert_array_equal(np.isinf(top_p_filter(scores, top_p)), np.isinf(hf_top_p_by_hand(scores, top_p)))


def top_p_full_sort(scores, top_p):
    """The nucleus rule on a full sort, most probable first, equal scores in id order (where HF's
    ascending sort would keep the higher ids of a tie that straddles the cut)."""
    out = scores.copy()
    for row, s in zip(out, scores):
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))
        p = np.exp(s[order] - s.max())
        p /= p.sum()
        before = np.cumsum(p) - p
        row[np.array(order)[before >= top_p]] = -np.inf
    return out


@pytest.mark.parametrize("top_p", [0.01, 0.5, 0.9, 0.999])
def test_top_p_on_a_large_vocabulary_with_ties(top_p):
    # V = 6000: the filter sorts only a partition of each row; ties straddle its edges
    rng = np.random.default_rng(8)
    scores = np.round(rng.normal(0, 2, (3, 6000)), 1)          # many equal scores
    scores[1] = np.round(rng.normal(0, 0.05, 6000), 2)         # a flat row: the nucleus is large
    np.testing.assert_array_equal(np.isinf(top_p_filter(scores, top_p)), np.isinf(top_p_full_sort(scores, top_p)))


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.9995])
def test_top_p_reaching_into_a_long_tail(top_p):
    # One token holds ~0.8 of the mass, 6000 far less likely ones the rest: the nucleus goes
    # past the tokens the filter sorts first (those at least 1/256 as likely as the top one).
    rng = np.random.default_rng(9)
    scores = np.round(rng.normal(0, 0.01, (2, 6000)), 3)
    scores[0, 17], scores[1, 4000] = 10.0, 16.0  # row 1: the tail is 1/256 of that, twice over
    np.testing.assert_array_equal(np.isinf(top_p_filter(scores, top_p)), np.isinf(top_p_full_sort(scores, top_p)))


def test_top_k_keeps_the_k_largest():
    scores = random_logits()
    kept = ~np.isinf(top_k_filter(scores, 7))
    assert (kept.sum(axis=1) == 7).all()
    for row, k in zip(scores, kept):
        assert set(np.flatnonzero(k)) == set(np.argsort(row)[-7:])


def test_filters_and_penalties_equal_transformers_processors():
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    scores = random_logits(rows=4, vocab=40, seed=3).astype(np.float32)
    history = np.random.default_rng(4).integers(0, 40, (4, 12))
    t_scores, t_ids = torch.from_numpy(scores.copy()), torch.from_numpy(history)
    seen = np.zeros(scores.shape, dtype=bool)
    for b, row in enumerate(history):
        seen[b, row] = True
    cases = [
        (lp.TemperatureLogitsWarper(0.7), lambda s: s / 0.7),
        (lp.TopKLogitsWarper(5), lambda s: top_k_filter(s, 5)),
        (lp.TopPLogitsWarper(0.6), lambda s: top_p_filter(s, 0.6)),
        (lp.RepetitionPenaltyLogitsProcessor(1.3), lambda s: apply_repetition_penalty(s, seen, 1.3)),
    ]
    for processor, ours in cases:
        theirs = processor(t_ids, t_scores.clone()).numpy()
        np.testing.assert_allclose(ours(scores.astype(np.float64)), theirs, rtol=1e-6, err_msg=type(processor).__name__)


def pipeline_penalties(logits_per_step, chosen, presence, frequency, decay):
    """ChatRWKV PIPELINE's loop, with its occurrence dict: penalize, then decay, then count."""
    occurrence, out = {}, []
    for logits, token in zip(logits_per_step, chosen):
        logits = logits.copy()
        for n in occurrence:
            logits[n] -= presence + occurrence[n] * frequency
        out.append(logits)
        for n in occurrence:
            occurrence[n] *= decay
        occurrence[token] = occurrence.get(token, 0) + 1
    return out


def test_presence_frequency_with_decay_follow_pipeline():
    rng = np.random.default_rng(5)
    steps = rng.normal(0, 1, (9, 30))
    chosen = [3, 7, 3, 3, 12, 7, 0, 29, 3]
    want = pipeline_penalties(steps, chosen, presence=0.4, frequency=0.25, decay=0.9)
    pen = Penalties(presence_penalty=0.4, frequency_penalty=0.25, penalty_decay=0.9)
    pen.start([np.array([1, 2, 3])], 30)  # the prompt must not count for these two penalties
    for logits, token, expected in zip(steps, chosen, want):
        np.testing.assert_allclose(pen.apply(logits[None])[0], expected, rtol=1e-12)
        pen.update(np.array([token]))


def test_repetition_penalty_counts_the_prompt_and_follows_sign():
    pen = Penalties(repetition_penalty=2.0)
    pen.start([np.array([0, 1])], 4)
    out = pen.apply(np.array([[4.0, -4.0, 4.0, -4.0]]))
    np.testing.assert_array_equal(out, [[2.0, -8.0, 4.0, -4.0]])


def test_penalties_change_the_distribution_as_specified():
    logits = np.zeros((1, 5))
    generated = np.array([[True, True, False, False, False]])
    counts = np.array([[3.0, 1.0, 0, 0, 0]])
    p = softmax(apply_presence_frequency(logits, generated, counts, presence=0.5, frequency=0.5))[0]
    # weights e^-2, e^-1, 1, 1, 1 (logit minus 0.5 + 0.5 * count)
    w = [math.exp(-2.0), math.exp(-1.0), 1.0, 1.0, 1.0]
    np.testing.assert_allclose(p, np.array(w) / sum(w), rtol=1e-12)


def test_temperature_scales_log_probabilities():
    logits = np.array([[1.0, 2.0, 4.0]])
    p = logits_to_probs(logits, temperature=0.5)[0]
    w = [math.exp(x / 0.5) for x in (1.0, 2.0, 4.0)]
    np.testing.assert_allclose(p, np.array(w) / sum(w), rtol=1e-12)


def test_top_k_1_and_tiny_top_p_equal_greedy():
    scores = random_logits(rows=50, vocab=100, seed=7)
    want = greedy(scores)
    rngs = [np.random.default_rng(0)] * 50
    np.testing.assert_array_equal(sample(logits_to_probs(scores, top_k=1), rngs), want)
    np.testing.assert_array_equal(sample(logits_to_probs(scores, top_p=1e-9), rngs), want)


def test_greedy_ties_go_to_the_lowest_id():
    np.testing.assert_array_equal(greedy(np.array([[0.0, 3.0, 3.0, 1.0]])), [1])


def test_suppressed_tokens_are_never_drawn():
    scores = np.zeros((1, 4))
    scores[0, 2] = 50.0
    probs = logits_to_probs(suppress_tokens(scores, [2]))
    assert probs[0, 2] == 0.0
    draws = [sample(probs, [np.random.default_rng(s)])[0] for s in range(200)]
    assert 2 not in draws


def test_draws_follow_the_distribution_and_the_seed():
    probs = np.array([[0.1, 0.0, 0.6, 0.3]])
    draws = lambda seed, n: sample(np.repeat(probs, n, axis=0), [np.random.default_rng(seed)] * n)
    a = draws(1, 8000)
    np.testing.assert_array_equal(a, draws(1, 8000))         # same seed -> same draws
    assert (a[:50] != draws(2, 50)).any()                    # another seed -> other draws
    freq = np.bincount(a, minlength=4) / len(a)
    assert freq[1] == 0                                      # zero probability is never drawn
    np.testing.assert_allclose(freq, probs[0], atol=0.025)  # 8000 draws: sd <= 0.0055


def test_bad_penalty_arguments_are_input_errors():
    with pytest.raises(InputError, match="repetition_penalty"):
        Penalties(repetition_penalty=0.0)
    with pytest.raises(InputError, match="penalty_decay"):
        Penalties(penalty_decay=1.5)
