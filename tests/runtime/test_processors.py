"""Our numpy processors give the same distributions as transformers' on the same logits."""

import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf

from tinygen import GenerationConfig
from tinygen import processors as ours
from tinygen.processors import build_processors, softmax
from tinygen.sampling import BLOCK, GreedySampler, RandomSampler, inverse_cdf


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((4, 200)) * 3).astype(np.float32)


HISTORY = [[1, 2, 3, 1, 2], [5, 5, 5], [7, 8, 9, 7, 8], [0, 1, 0, 1, 0]]

CASES = [
    (ours.Temperature(0.7), hf.TemperatureLogitsWarper(0.7)),
    (ours.TopK(10), hf.TopKLogitsWarper(10)),
    (ours.TopK(1), hf.TopKLogitsWarper(1)),
    (ours.TopP(0.9), hf.TopPLogitsWarper(0.9)),
    (ours.TopP(0.05), hf.TopPLogitsWarper(0.05)),
    (ours.MinP(0.1), hf.MinPLogitsWarper(0.1)),
    (ours.TypicalP(0.8), hf.TypicalLogitsWarper(0.8)),
    (ours.TypicalP(0.2), hf.TypicalLogitsWarper(0.2)),
    (ours.RepetitionPenalty(1.3), hf.RepetitionPenaltyLogitsProcessor(1.3)),
    (ours.RepetitionPenalty(0.8), hf.RepetitionPenaltyLogitsProcessor(0.8)),
    (ours.NoRepeatNGram(2), hf.NoRepeatNGramLogitsProcessor(2)),
    (ours.NoRepeatNGram(3), hf.NoRepeatNGramLogitsProcessor(3)),
]



@pytest.mark.parametrize("ours_proc,hf_proc", CASES, ids=lambda p: type(p).__name__)
def test_processor_matches_transformers(ours_proc, hf_proc, logits):
    for row, history in enumerate(HISTORY):
        mine = ours_proc(logits[row:row + 1], [history])
        theirs = hf_proc(torch.tensor([history]), torch.from_numpy(logits[row:row + 1].copy())).numpy()
        assert np.array_equal(np.isinf(mine), np.isinf(theirs))
        np.testing.assert_allclose(softmax(mine), softmax(theirs), rtol=1e-5, atol=1e-7)


def _rows_to_prune(vocab: int, seed: int) -> np.ndarray:
    """Flat to peaked rows, one with masked tokens, one top-k already pruned, and a last one
    with many equal logits at every cut."""
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal(vocab) * scale for scale in (0.3, 3, 12)]
    masked = rng.standard_normal(vocab) * 3
    masked[rng.random(vocab) < 0.4] = -np.inf
    pruned = np.full(vocab, -np.inf)
    pruned[rng.choice(vocab, 20, replace=False)] = rng.standard_normal(20)
    tied = np.round(rng.standard_normal(vocab), 1)
    return np.array(rows + [masked, pruned, tied], dtype=np.float32)


@pytest.mark.parametrize("vocab", [40, 1000, 20000])
def test_nucleus_and_typical_keep_what_transformers_keeps(vocab):
    """TopP and TypicalP sort a few candidates, not the vocabulary (ours.CANDIDATES): the
    kept tokens must be transformers' at every size, mass and shape of distribution."""
    rows = _rows_to_prune(vocab, seed=vocab)
    for ours_proc, hf_proc in [(ours.TopP(p), hf.TopPLogitsWarper(p)) for p in (0.05, 0.5, 0.9, 0.995)] \
            + [(ours.TypicalP(m), hf.TypicalLogitsWarper(m)) for m in (0.2, 0.9)]:
        mine = ours_proc(rows, None)
        theirs = hf_proc(None, torch.from_numpy(rows.copy())).numpy()
        kept, kept_theirs = mine > -np.inf, theirs > -np.inf
        assert np.array_equal(mine[kept], rows[kept])
        # torch.sort is not stable, so of equal logits at the cut transformers drops any;
        # ours drops the lower ids first. The last row is all such cuts: same count there.
        assert np.array_equal(kept[:-1], kept_theirs[:-1]), type(ours_proc).__name__
        assert kept[-1].sum() == kept_theirs[-1].sum()
        if isinstance(ours_proc, ours.TopP):
            cut = rows[-1][kept[-1]].min()
            at_cut = kept[-1][rows[-1] == cut]
            assert np.array_equal(at_cut, np.sort(at_cut))  # kept ones are the higher ids
            assert kept[-1][rows[-1] > cut].all()


def test_full_chain_matches_transformers_order(logits):
    config = GenerationConfig().merged(temperature=0.8, top_k=50, top_p=0.9, min_p=0.02,
                                       typical_p=0.95, repetition_penalty=1.2, no_repeat_ngram_size=2)
    chain = build_processors(config)
    theirs_chain = hf.LogitsProcessorList([
        hf.RepetitionPenaltyLogitsProcessor(1.2), hf.NoRepeatNGramLogitsProcessor(2),
        hf.TemperatureLogitsWarper(0.8), hf.TopKLogitsWarper(50), hf.TopPLogitsWarper(0.9),
        hf.MinPLogitsWarper(0.02), hf.TypicalLogitsWarper(0.95),
    ])
    history = [[3, 4, 3]] * 4
    mine = logits
    for p in chain:
        mine = p(mine, history)
    theirs = theirs_chain(torch.tensor(history), torch.from_numpy(logits.copy())).numpy()
    np.testing.assert_allclose(softmax(mine), softmax(theirs), rtol=1e-5, atol=1e-7)


def test_greedy_skips_warpers_but_keeps_penalties():
    names = lambda c: [type(p).__name__ for p in build_processors(c)]
    assert names(GenerationConfig().merged(do_sample=False, top_k=5, repetition_penalty=1.1)) == ["RepetitionPenalty"]
    assert names(GenerationConfig().merged(temperature=0, top_p=0.5)) == []
    assert names(GenerationConfig().merged(top_k=5, top_p=0.5)) == ["TopK", "TopP"]


def test_random_sampler_follows_the_distribution():
    probs = np.array([0.5, 0.3, 0.2, 0.0], dtype=np.float64)
    logits = np.log(np.where(probs > 0, probs, 1e-300)).astype(np.float32)[None, :]
    logits[0, 3] = -np.inf
    sampler = RandomSampler([123])
    counts = np.bincount([int(sampler(logits)[0]) for _ in range(20000)], minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), probs, atol=0.015)
    assert counts[3] == 0  # a masked token is never drawn


def test_blocked_inverse_cdf_is_the_whole_vocabulary_cumsum():
    """inverse_cdf sums blocks of BLOCK tokens, then tokens in one block: it must pick the
    token one float64 cumsum over the whole vocabulary picks, wherever the draw falls."""
    rng = np.random.default_rng(5)
    vocab = 3 * BLOCK + 77  # a last block shorter than the others
    for _ in range(300):
        row = (rng.standard_normal(vocab) * rng.uniform(0.5, 8)).astype(np.float32)
        row[rng.random(vocab) < 0.3] = -np.inf  # masked tokens, block edges included
        reference = np.cumsum(softmax(row.astype(np.float64)))
        for u in rng.random(5):
            assert inverse_cdf(row, u) == np.searchsorted(reference, u * reference[-1], "right")


def test_inverse_cdf_never_picks_a_masked_token_at_the_ends():
    row = np.full(2 * BLOCK + 5, -np.inf, np.float32)
    row[[3, BLOCK - 1, BLOCK + 7]] = [0.0, 1.0, 2.0]  # nothing after BLOCK + 7 can be drawn
    assert inverse_cdf(row, 0.0) == 3
    assert inverse_cdf(row, np.nextafter(1.0, 0.0)) == BLOCK + 7
    assert inverse_cdf(np.full(10, -np.inf, np.float32), 0.5) == -1


def test_each_row_has_its_own_generator(logits):
    alone = [RandomSampler([s]) for s in (11, 12, 13)]
    together = RandomSampler([11, 12, 13])
    for _ in range(50):
        joint = together(logits[:3])
        for row, sampler in enumerate(alone):
            assert sampler(logits[row:row + 1])[0] == joint[row]


def test_greedy_sampler_is_argmax(logits):
    assert GreedySampler()(logits).tolist() == logits.argmax(axis=-1).tolist()


def test_nucleus_and_typical_pass_rows_with_nothing_to_rank():
    """An all -inf row (bans removed everything) or a NaN logit (a broken model) comes out
    as it went in, for the sampler to refuse, not as an exception from the ranking."""
    nothing = np.full((1, 300), -np.inf, np.float32)
    broken = np.zeros((1, 300), np.float32)
    broken[0, 7] = np.nan
    for processor in (ours.TopP(0.9), ours.TypicalP(0.9)):
        assert np.array_equal(processor(nothing, None), nothing)
        np.testing.assert_array_equal(processor(broken, None), broken)  # NaN where NaN was
    assert inverse_cdf(broken[0], 0.5) == -1


def test_extreme_temperature_and_penalty_stay_distributions(logits):
    """float32 makes 1e-300 zero: dividing by it gave +inf logits and NaN probabilities."""
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # nor a warning on the way
        cold = ours.Temperature(1e-300)(logits, HISTORY)
        banned = logits.copy()
        banned[:, :3] = -np.inf
        pushed = ours.RepetitionPenalty(1e-300)(banned, HISTORY)
    probs = softmax(cold.astype(np.float64))
    assert np.isfinite(probs).all() and (probs.argmax(axis=-1) == logits.argmax(axis=-1)).all()
    probs = softmax(pushed.astype(np.float64))
    assert np.isfinite(probs).all()
    for row, seen in enumerate(HISTORY):  # a penalty under 1 favours what was seen
        boosted = [t for t in set(seen) if banned[row, t] > 0]
        if boosted:
            assert probs[row].argmax() == max(boosted, key=lambda t: banned[row, t])


def test_a_huge_temperature_is_uniform_over_the_tokens_left():
    """float32 made 1e300 inf, and a banned token's -inf / inf NaN: `--temperature 1e300` was
    refused as 'no token is left to sample', though nothing but that one token was banned."""
    banned = np.array([[3.0, -np.inf, -2.0, 9.0]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        hot = ours.Temperature(1e300)(banned, [[]])
    probs = softmax(hot.astype(np.float64))[0]
    assert probs[1] == 0 and np.allclose(probs[[0, 2, 3]], 1 / 3)


def test_a_huge_logit_bias_or_penalty_stays_within_float32(logits):
    """float32 made a bias of 1e300 inf: the token it should force was never drawn (NaN), and
    a penalty of 1e300 printed numpy's overflow warnings on the user's screen."""
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        forced = ours.LogitBias([(4, 1e300)])(logits, HISTORY)
        banned = ours.LogitBias([(4, -1e300)])(logits, HISTORY)
        penalised = ours.RepetitionPenalty(1e300)(logits, HISTORY)
    assert (softmax(forced.astype(np.float64)).argmax(axis=-1) == 4).all()
    assert np.isfinite(softmax(banned.astype(np.float64))).all()
    assert (softmax(banned.astype(np.float64))[:, 4] == 0).all()
    assert np.isfinite(softmax(penalised.astype(np.float64))).all()


@pytest.mark.parametrize("temperature", [0.5, 1e-3])
def test_a_logit_at_float32s_largest_survives_a_temperature_under_1(logits, temperature):
    """A bias of 1e300 (or a penalty of 1e-38 on a positive logit) puts a logit at float32's
    largest; dividing by a temperature under 1 made it +inf, and sampling refused with 'no
    token is left to sample' after numpy's overflow warning."""
    forced = ours.LogitBias([(4, 1e300)])(logits, HISTORY)
    boosted = ours.RepetitionPenalty(1e-38)(logits, HISTORY)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        forced, boosted = (ours.Temperature(temperature)(x, HISTORY) for x in (forced, boosted))
    assert (softmax(forced.astype(np.float64)).argmax(axis=-1) == 4).all()
    probs = softmax(boosted.astype(np.float64))
    assert np.isfinite(probs).all()
    for row, seen in enumerate(HISTORY):  # the seen token with the largest positive logit
        boosted_ids = [t for t in set(seen) if logits[row, t] > 0]
        if boosted_ids:
            assert probs[row].argmax() in boosted_ids
