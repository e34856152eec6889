"""Checks every way of running a model must pass, shared by the test files that run one."""

PROMPTS = ["Once upon a time", "The quick brown fox jumps over", "To be"]


def assert_batch_is_alone_and_seeds_repeat(gen, max_new_tokens: int = 16) -> None:
    """A text made in a batch is the text made alone (greedy), and a seed repeats its texts."""
    options = dict(do_sample=False, max_new_tokens=max_new_tokens)
    batch = gen.generate(PROMPTS, **options)
    for prompt, text in zip(PROMPTS, batch):
        assert gen.generate(prompt, **options) == [text]
    seeded = dict(n=3, seed=5, max_new_tokens=max_new_tokens, batch_size=3)
    texts = gen.generate(PROMPTS[0], **seeded)
    assert texts == gen.generate(PROMPTS[0], **seeded)
    assert len(set(texts)) > 1
