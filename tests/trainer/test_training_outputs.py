"""What a user sees while training: samples, TensorBoard as TensorBoard reads it, Ctrl-C,
errors for bad flags, progress on a terminal of no width."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tinygen.replacements import EncodeRule, Replacements
from tinygen_trainer import bars
from tinygen_trainer.cli import main
from tinygen_trainer.data.encoder import Encoder
from tinygen_trainer.training import TrainConfig, Trainer, train
from tinygen_trainer.training.device import select_backend
from tinygen_trainer.training.samples import generate_sample

from training_corpus import Interrupted, corpus, dies_after, one_thread, tokenizer  # noqa: F401


def tiny(tmp_path, corpus, tokenizer_path, **options) -> TrainConfig:
    base = {"output_dir": tmp_path / "out", "data": (corpus,), "preset": "cpu-tiny",
            "tokenizer": tokenizer_path, "steps": 8, "block_size": 32, "batch_size": 4,
            "warmup_steps": 2, "log_every": 1, "checkpoint_every": 4, "progress": False}
    return TrainConfig(**{**base, **options})


def train_args(corpus, tokenizer, out, *extra) -> list[str]:
    return ["train", str(corpus), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
            "-o", str(out), "--steps", "8", "--block-size", "32", "--batch-size", "4",
            "--quiet", *extra]


# -- samples -------------------------------------------------------------------------------

class Writes:
    """A stand-in model whose generate() writes the ids it is given, and keeps the prompt."""

    training = True

    def __init__(self, ids: list[int]):
        self.ids, self.prompts = ids, []

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def generate(self, input_ids, **options):
        self.prompts.append(input_ids[0].tolist())
        return torch.cat([input_ids, torch.tensor([self.ids])], dim=1)


def records_encoder() -> Encoder:
    """A byte-level tokenizer with a record's field tokens and a URL replacement token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["see the rain fall on the roof"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|title|>", "<|body|>", "<|url|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    rules = Replacements(encode=(EncodeRule(r"https?://\S+", "<|url|>", regex=True),),
                         decode={"<|url|>": "<url>"})
    return Encoder(tok, tok.token_to_id("<|endoftext|>"), rules)


def sample(encoder: Encoder, prompt: str, written: str) -> tuple[str, list[int]]:
    """(the sample's text, the prompt's ids) when the model writes `written`, then EOS."""
    ids = encoder.tokenizer.encode(written).ids + [encoder.eos_id]
    model = Writes(ids)
    text = generate_sample(model, encoder, select_backend("cpu", "fp32"), prompt, len(ids), 256)
    return text, model.prompts[0]


def test_a_sample_shows_the_fields_and_replacement_text_the_model_writes():
    # Special tokens were skipped: a record's title and body ran together ("Rainsee"), and a
    # replacement token vanished instead of showing the text replacements.json gives it.
    text, _ = sample(records_encoder(), "", "<|title|>Rain<|body|>see <|url|> fall")
    assert text == "<|title|>Rain<|body|>see <url> fall"


def test_a_sample_prompt_keeps_its_field_tokens_from_the_replacement_rules():
    # Encoded as the corpus was: the URL rule stops at <|body|>, not swallowing it.
    encoder = records_encoder()
    body = encoder.tokenizer.token_to_id("<|body|>")
    text, prompt = sample(encoder, "<|title|>see http://rain.org<|body|>", " the rain")
    assert body in prompt and encoder.tokenizer.token_to_id("<|url|>") in prompt
    assert text == "<|title|>see http://rain.org<|body|> the rain"  # the prompt as given


def test_a_sample_continues_a_sentencepiece_prompt_with_its_space():
    # SentencePiece-style (Metaspace) tokenizers drop the space before a text's first word;
    # decoded alone, the continuation lost it: "the catsat on the mat".
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(["the cat sat on the mat"] * 20, trainers.BpeTrainer(
        vocab_size=60, special_tokens=["<unk>", "</s>"]))
    encoder = Encoder(tok, tok.token_to_id("</s>"))
    written = tok.encode("the cat sat on the mat").ids[len(tok.encode("the cat").ids):]
    model = Writes(written)
    text = generate_sample(model, encoder, select_backend("cpu", "fp32"), "the cat",
                           len(written), 256)
    assert text == "the cat sat on the mat"


# -- TensorBoard ----------------------------------------------------------------------------

def tensorboard_steps(folder) -> dict[str, list[int]]:
    """Each tag's steps as TensorBoard's Python reader (its text plugin, --load_fast=false)
    shows them."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: [e.step for e in events.Tensors(tag)] for tag in events.Tags()["tensors"]}


def test_tensorboard_shows_each_step_and_sample_once_after_a_resume(tmp_path, corpus, tokenizer):
    # The resumed run's purge mark was the first one that reader saw, which it takes for the
    # run's start: steps 5 and 6 showed twice. Samples were not in TensorBoard at all.
    config = tiny(tmp_path, corpus, tokenizer, tensorboard_dir=tmp_path / "tb", sample_every=2,
                  sample_length=4)
    with pytest.raises(Interrupted):
        dies_after(6).from_config(config).fit()
    train(TrainConfig(**{**config.__dict__, "resume": True}))
    steps = tensorboard_steps(tmp_path / "tb")
    assert steps["train/loss"] == list(range(1, 9))
    assert steps["samples/text_summary"] == [2, 4, 6, 8]


# -- Ctrl-C ---------------------------------------------------------------------------------

@pytest.fixture
def ctrl_c_at_step_6(monkeypatch):
    step_end = Trainer.on_step_end

    def on_step_end(self, phase, lr, loss):
        step_end(self, phase, lr, loss)
        if self.step == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "on_step_end", on_step_end)
    return monkeypatch


def test_ctrl_c_says_which_checkpoint_is_kept_and_how_to_resume(tmp_path, corpus, tokenizer,
                                                               ctrl_c_at_step_6, capsys):
    args = train_args(corpus, tokenizer, tmp_path / "run", "--checkpoint-every", "4")
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("tinygen-train: interrupted; the checkpoint of step 4 is kept (")
    assert err.endswith("step-00000004): run the same command with --resume to go on from "
                        "there\n")
    ctrl_c_at_step_6.undo()
    assert main([*args, "--resume"]) == 0  # as it says


# A child process sends itself SIGTERM while it writes the checkpoint of step 8 (its weights
# are on disk, the folder is still a temp one): where the kill lands when a job is stopped.
SIGTERM_WHILE_SAVING = """
import os, signal, sys
from tinygen_trainer.cli import main
from tinygen_trainer.training import checkpoint

check = checkpoint.check_finite_weights
def check_then_stop(path, step):
    check(path, step)
    if step == 8:
        os.kill(os.getpid(), signal.SIGTERM)
checkpoint.check_finite_weights = check_then_stop
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_stops_as_ctrl_c_does_and_leaves_no_temp_folder(tmp_path, corpus, tokenizer):
    # SIGTERM (kill, docker stop, torchrun stopping the other processes) ended the process
    # on the spot: no word of what was kept, and a .tmp-step-* folder left in checkpoints.
    out = tmp_path / "run"
    args = train_args(corpus, tokenizer, out, "--steps", "12", "--checkpoint-every", "4")
    run = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_SAVING, *args],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 130, run.stderr[-2000:]
    assert run.stderr.startswith("tinygen-train: interrupted; the checkpoint of step 4 is kept ")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000004"]
    assert main([*args, "--resume"]) == 0


@pytest.mark.parametrize("every,said", [
    ("10", "it stopped before its first checkpoint (--checkpoint-every 10), so there is nothing "
           "to resume: the same command starts it again"),
    ("0", "--checkpoint-every 0 keeps no checkpoint to resume from: the same command starts it "
          "again"),
])
def test_ctrl_c_before_any_checkpoint_says_to_start_again(tmp_path, corpus, tokenizer,
                                                         ctrl_c_at_step_6, capsys, every, said):
    args = train_args(corpus, tokenizer, tmp_path / "run", "--checkpoint-every", every)
    assert main(args) == 130
    assert capsys.readouterr().err == f"tinygen-train: interrupted; {said}\n"
    ctrl_c_at_step_6.undo()
    assert main(args) == 0  # as it says


# -- bad values name the flag ---------------------------------------------------------------

@pytest.mark.parametrize("extra,message", [
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--steps", "-5"], "--steps must be an integer >= 1, got -5"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--grad-accum", "0"], "--grad-accum must be an integer >= 1, got 0"),
    (["--warmup-steps", "-1"], "--warmup-steps must be an integer >= 0, got -1"),
    (["--min-lr-ratio", "2"], "--min-lr-ratio must be in [0, 1], got 2.0"),
    (["--log-every", "0"], "--log-every must be an integer >= 1, got 0"),
    (["--eval-fraction", "1.5"], "--eval-fraction must be between 0 and 1"),
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
])
def test_a_bad_value_names_the_flag_typed(tmp_path, corpus, tokenizer, capsys, extra, message):
    # The config's field names (learning_rate, batch_size) are not what the user typed.
    assert main(train_args(corpus, tokenizer, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tinygen-train: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_a_bad_distillation_value_names_the_flag_typed(tmp_path, tokenizer, capsys):
    args = ["distill", "--teacher-cache", str(tmp_path / "cache"), "--preset", "cpu-tiny",
            "--tokenizer", str(tokenizer), "-o", str(tmp_path / "student"), "--block-size", "32"]
    error = "tinygen-train: error: "
    assert main([*args, "--kd-weight", "2"]) == 2
    assert capsys.readouterr().err == f"{error}--kd-weight must be in [0, 1], got 2.0\n"
    assert main([*args, "--temperature", "0"]) == 2
    assert capsys.readouterr().err == f"{error}--temperature must be > 0, got 0.0\n"


def test_train_config_keeps_its_field_names(tmp_path, corpus, tokenizer):
    # The library names its own fields; only the command line says flags.
    from tinygen.errors import TinygenError

    with pytest.raises(TinygenError, match=r"^learning_rate must be > 0"):
        tiny(tmp_path, corpus, tokenizer, learning_rate=0)


# -- progress on a terminal no one sized ----------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_terminal_without_a_width_gets_progress_lines():
    # `docker run -t` in CI: a pseudo-terminal of 0 columns, where tqdm drew its bar in
    # nothing, so a whole run showed no progress at all.
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    with os.fdopen(slave, "w") as terminal:
        try:
            with bars.progress_bar(4, "training", "step", file=terminal) as bar:
                assert isinstance(bar, bars.LineProgress)
                bar.update(4)
            terminal.flush()
            assert os.read(master, 4096).decode().startswith("training: 100% 4/4 [")
            # sized, it is a terminal: tqdm's bar
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            sized = bars.progress_bar(4, "training", "step", file=terminal, leave=False)
            assert not isinstance(sized, bars.LineProgress)
            sized.close()
        finally:
            os.close(master)


def test_ctrl_c_in_distillation_says_how_to_resume(tiny_gpt2_dir, corpus, tmp_path,
                                                   ctrl_c_at_step_6, capsys):
    cache = tmp_path / "cache"
    assert main(["teacher-cache", str(corpus), "--teacher", str(tiny_gpt2_dir), "-o", str(cache),
                 "--block-size", "32", "--top-k", "4", "--teacher-blocks", "8", "--quiet"]) == 0
    capsys.readouterr()
    args = ["distill", "--teacher-cache", str(cache), "--preset", "cpu-tiny", "--tokenizer",
            str(tiny_gpt2_dir / "tokenizer.json"), "-o", str(tmp_path / "student"), "--steps",
            "8", "--batch-size", "2", "--checkpoint-every", "5", "--quiet"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err.startswith("tinygen-train: interrupted; the checkpoint of step 5 is kept (")
    assert err.endswith("with --resume to go on from there\n") and err.count("\n") == 1


# -- a batch bigger than the corpus -----------------------------------------------------------

@pytest.mark.parametrize("line_by_line, batch, warned", [
    (False, 4, False), (False, 40, True), (True, 3, False), (True, 4, True)])
def test_a_batch_with_more_rows_than_the_corpus_is_warned_of(tmp_path, capsys, line_by_line,
                                                             batch, warned):
    from tinygen_trainer.data.dataset import TokenDataset
    from tinygen_trainer.training.setup import build_phases

    encoder = records_encoder()
    # 3 documents: about 9 blocks of 16 tokens, or 3 rows of one record each
    lines = ["see the rain fall on the roof " * (1 if line_by_line else 6)] * 3
    dataset = TokenDataset.from_documents(lines, encoder, progress=False)
    path = tmp_path / "c.txt"
    config = TrainConfig(output_dir=tmp_path / "o", data=(path,), preset="cpu-tiny",
                         tokenizer=tmp_path / "t.json", steps=2, batch_size=batch, block_size=16,
                         line_by_line=line_by_line)
    build_phases(config, encoder, 16, encoder.eos_id, {(path, None): dataset})
    err = capsys.readouterr().err
    assert ("each step repeats it; lower --batch-size" in err) == warned
    if warned:
        assert err.count("\n") == 1 and f"--batch-size {batch} is more rows" in err
