"""Reporting: a progress bar (loss, tokens/s, ETA), metrics.jsonl, and optionally TensorBoard.

metrics.jsonl gets one JSON object per logged step ({"step", "loss", "lr",
"tokens_per_s", "phase"}; null for a number that is not finite), and one per held-out
evaluation ({"step", "eval_loss", "eval_perplexity", "eval_tokens"}); it is the record
a resumed run continues, so on resume the lines after the checkpoint's step (and
a line torn by a kill) are dropped first.

TensorBoard gets the same scalars, and the generated samples as text. A resumed
run logs the steps after its checkpoint again, so its writer purges them
(SummaryWriter's purge_step): the interrupted run's points past the checkpoint would
otherwise stay beside the new ones.

On a TPU pod slice only process 0 reports (writes=True); the Reporter of every
other host writes no file and prints nothing, so there is one metrics.jsonl,
one TensorBoard log and one progress bar for the whole slice.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tinygen.errors import TinygenError
from tinygen.atomic import atomic_write

from ..bars import progress_bar

METRICS_FILE = "metrics.jsonl"


def summary_writer_class():
    """torch's SummaryWriter, or a one-line error saying how to install tensorboard."""
    # Imported here: tensorboard is an optional extra and slow to import.
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TinygenError(
            "--tensorboard needs the tensorboard package: "
            "pip install 'tinygen-trainer[tensorboard]'"
        ) from None
    return SummaryWriter


class Reporter:
    def __init__(self, output_dir: Path, total_steps: int, tensorboard_dir: Path | None = None,
                 progress: bool = True, writes: bool = True):
        self.metrics_path = Path(output_dir) / METRICS_FILE
        self.total_steps = total_steps
        self.writes = writes  # False: another process reports, this one stays silent
        self.progress = progress and writes
        self.tensorboard_dir = tensorboard_dir if writes else None
        # Checked now, not after the run's setup; the writer is made by start(), which knows
        # the step the run starts at.
        self._writer_class = summary_writer_class() if self.tensorboard_dir else None
        self.writer = None
        self.bar: tqdm | None = None

    def start(self, step: int, resumed: bool = False) -> None:
        """`resumed`: the run goes on (--resume) from `step`, its checkpoint's (0 if it had
        none yet), after a run interrupted later than that."""
        if not self.writes:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if self.tensorboard_dir:
            # This run logs again the steps after `step` that the interrupted run logged:
            # TensorBoard hides the old ones (purge_step: the first step hidden), as
            # truncate_after drops them from metrics.jsonl. A new run marks its start too
            # (at 0: it hides only what an earlier run left in the folder, as TensorBoard's
            # fast reader does anyway): the Python reader (plugin_event_accumulator, as in
            # --load_fast=false) takes the first start it sees for the run's own and purges
            # only at a later one, so unmarked, the first resume would purge nothing.
            self.writer = self._writer_class(log_dir=str(self.tensorboard_dir),
                                             purge_step=step + 1 if resumed else 0)
        # On a terminal a bar; in a log, a plain line now and then (bars.py).
        self.bar = progress_bar(self.total_steps, "training", "step", initial=step,
                                enabled=self.progress)

    def truncate_after(self, step: int) -> None:
        """Drop metrics of steps after `step`: the resumed run logs them again.

        A torn last line (a kill during log) goes too. The file is replaced
        atomically, so a kill here leaves the old file or the new one.
        """
        path = self.metrics_path
        if not self.writes or not path.is_file():
            return
        # A fresh run (step 0) keeps nothing, so an old damaged file need not parse.
        kept = [line for line, record in _records(path) if record.get("step", 0) <= step] \
            if step > 0 else []
        text = "".join(line + "\n" for line in kept).encode("utf-8")
        mode = path.stat().st_mode & 0o777

        def write(f) -> None:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)  # the temp file is private; keep the log's mode
            f.write(text)

        atomic_write(path, write)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.writes:
            return
        self._record(step, metrics, "train")
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                                 tok_s=f"{metrics['tokens_per_s']:,.0f}", refresh=False)

    def log_eval(self, step: int, metrics: dict[str, Any], line: str) -> None:
        """A held-out evaluation: a line of its own in metrics.jsonl ({"step", "eval_loss",
        "eval_perplexity", "eval_tokens"}), eval/* in TensorBoard, and `line` above the bar."""
        if not self.writes:
            return
        self._record(step, {k: v for k, v in metrics.items() if k != "step"}, "eval")
        if self.progress:
            self.write(f"step {step}: {line}")

    def log_sample(self, step: int, text: str) -> None:
        """A generated sample: printed above the bar, and TensorBoard's text "samples"."""
        if not self.writes:
            return
        self.write(f"--- sample at step {step} ---\n{text}\n---")
        if self.writer is not None:
            # TensorBoard renders text as Markdown: indented, it is shown as written, its
            # line breaks and any *, # or <tag> kept.
            self.writer.add_text("samples", "".join(f"    {line}\n" for line in
                                                    text.split("\n")), step)

    def _record(self, step: int, metrics: dict[str, Any], group: str) -> None:
        # json.dumps writes nan as a bare NaN, which is not JSON (a diverged loss): null instead.
        record = {name: None if isinstance(value, float) and not math.isfinite(value) else value
                  for name, value in metrics.items()}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        if self.writer is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{group}/{name.removeprefix(group + '_')}", value, step)

    def write(self, text: str) -> None:
        """Print to stderr (with the bar), above the bar without breaking it."""
        if self.writes:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [record for _, record in _records(path)]


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """metrics.jsonl's (line, record) pairs; a torn last line is left out.

    Reporter.log appends one line at a time, so a kill can cut only the last
    one; a bad line before it means the file was damaged some other way.
    """
    lines = [(number, line) for number, line in
             enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if i == len(lines) - 1:
                break  # torn by a kill: the resumed run logs that step again
            raise TinygenError(f"{path}: line {number} is not JSON; delete that line or the file")
        records.append((line, record))
    return records
