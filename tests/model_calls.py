"""A TextGenerator's model runs counted, and held, for the tests of apps embedding the runtime."""

from __future__ import annotations

import asyncio
import threading
import time


class ModelCalls:
    """Counts the model's runs (prefills and decode steps) of `gen`; `first_step` is set when a
    decode step begins. With a `gate`, every decode step waits for it first: the call holds the
    generator until the test lets it go (or `release_after` seconds, so a failure cannot hang)."""

    def __init__(self, gen, monkeypatch, gate: threading.Event | None = None, release_after=5.0):
        self.prefills = self.steps = 0
        self.first_step = threading.Event()
        self.gate = gate
        forward, step = gen.model.forward, gen.model.step

        def counted_forward(*args):
            self.prefills += 1
            return forward(*args)

        def counted_step(*args):
            self.steps += 1
            self.first_step.set()
            if gate is not None and not gate.wait(release_after):
                gate.set()  # the test failed to open it: let the call end
            return step(*args)
        monkeypatch.setattr(gen.model, "forward", counted_forward)
        monkeypatch.setattr(gen.model, "step", counted_step)

    async def wait_first_step(self):
        deadline = time.monotonic() + 30
        while not self.first_step.is_set():
            assert time.monotonic() < deadline, "the call never took a step"
            await asyncio.sleep(0.005)
