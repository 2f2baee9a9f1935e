"""The Markov source's sampler against the chain it samples (its transition matrix)."""

from __future__ import annotations

import numpy as np

from megatron_power.data.markov import MarkovSource


def test_sampled_transitions_follow_the_matrix():
    source = MarkovSource(vocab_size=8, seed=3, concentration=0.5)
    tokens = source.sample(400_000, seed=11)
    counts = np.zeros((8, 8))
    np.add.at(counts, (tokens[:-1], tokens[1:]), 1)
    visits = counts.sum(axis=1, keepdims=True)
    # binomial standard error of each estimated P_ij, 5 sigma
    tolerance = 5 * np.sqrt(source.transitions * (1 - source.transitions) / visits) + 1e-9
    assert np.all(np.abs(counts / visits - source.transitions) <= tolerance)
    pi = np.bincount(tokens, minlength=8) / len(tokens)
    assert np.abs(pi - source.stationary()).max() < 0.01


def test_a_short_sample_is_the_start_of_a_long_one():
    """Short samples take the per-token numpy search, long ones the list bisection: the
    same seed gives the same chain either way (one random stream, the prefix is shared)."""
    source = MarkovSource(vocab_size=256, seed=5)
    short, long = source.sample(1_000, seed=2), source.sample(20_000, seed=2)
    assert 16 * 1_000 < 256**2 <= 16 * 20_000  # one of each
    assert np.array_equal(short, long[:1_000])
    assert short.dtype == np.int64 and len(short) == 1_000
