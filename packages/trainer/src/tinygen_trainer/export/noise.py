"""Lines transformers and optimum log during an export that no user can act on.

Each is dropped by its message, not by lowering the libraries' verbosity: their
other warnings (e.g. weights missing from a checkpoint, which would export random
ones) still print.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Iterator

NOISE = re.compile("|".join([
    # optimum loads the model with the old keyword; the model loads the same.
    r"`torch_dtype` is deprecated! Use `dtype` instead!",
    # optimum says so, then keeps one copy of the tied embedding itself; a line per weight
    # follows ("\tlm_head.weight: {'onnx::MatMul_670'}").
    r"Found different candidate ONNX initializers \(likely duplicate\) for the tied weights",
    r"\t[\w.]+: (\{.*\}|set\(\))",
    # Tracing reads the model's training loss; an export never trains.
    r"`loss_type=None` was set in the config but it is unrecognized",
    # A Llama-family tokenizer loaded to write tokenizer.json: it tokenizes as it always did.
    r"You are using the default legacy behaviour of the ",
]))


def _keep(record: logging.LogRecord) -> bool:
    return NOISE.match(record.getMessage()) is None


@contextmanager
def library_noise_dropped() -> Iterator[None]:
    """Drop the NOISE lines for the duration of the block, wherever they would be written."""
    handlers = _library_handlers()
    for handler in handlers:
        handler.addFilter(_keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(_keep)


def _library_handlers() -> list[logging.Handler]:
    """transformers' and optimum's own handlers (their loggers do not propagate), and the
    root's in case someone made them. A filter on a handler sees every record it writes; one
    on a logger would see only the records logged on that very logger, not its children's."""
    from transformers.utils import logging as transformers_logging

    roots = [transformers_logging.get_logger(), logging.getLogger()]  # sets its handler up
    try:
        from optimum.utils import logging as optimum_logging
    except ImportError:  # optimum-onnx is optional: the fused graph needs no optimum
        pass
    else:
        roots.append(optimum_logging.get_logger())
    return list(dict.fromkeys(h for logger in roots for h in logger.handlers))
