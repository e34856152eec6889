"""A tiny training corpus and its tokenizer, shared by the trainer tests and the XLA tests,
and a training run that dies midway (dies_after), for the resume tests.

Imported (not a conftest) because the XLA tests run in their own venv and folder;
a test module or conftest that imports these names gets them as fixtures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinygen_trainer.tokenizer_training import TokenizerConfig, save_tokenizer, train_tokenizer

SENTENCES = [
    "the cat sat on the mat.", "the dog ran in the park.", "a bird sang in the tree.",
    "the sun rose over the hill.", "we read a book by the fire.", "the rain fell on the roof.",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train faster on one thread, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "stories.txt"
    path.write_text(" ".join(rng.choice(SENTENCES, size=300)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer(corpus):
    tok = train_tokenizer([corpus.read_text()], TokenizerConfig(vocab_size=300, progress=False))
    return save_tokenizer(tok, corpus.parent / "tokenizer.json")


class Interrupted(Exception):
    pass


def dies_after(step: int):
    """A Trainer class whose run dies right after step `step` is logged (raising Interrupted),
    as a killed job would."""
    from tinygen_trainer.training import Trainer

    class DiesAfter(Trainer):
        def on_step_end(self, phase, lr, loss):
            super().on_step_end(phase, lr, loss)
            if self.step == step:
                raise Interrupted
    return DiesAfter
