"""`tinygen-train` usage errors are one line naming the command, exit 2, like every other bad input."""

import pytest

from tinygen_trainer.cli import main


@pytest.mark.parametrize("argv,message", [
    (["encode", "corpus.txt"], "tinygen-train encode: error: the following arguments are required: "
                               "-o/--output, --tokenizer (see tinygen-train encode --help)"),
    (["train", "x.tokens", "--preset", "cpu-tiny", "-o", "out", "--bogus"],
     "tinygen-train train: error: unrecognized arguments: --bogus"),
    (["trian"], "tinygen-train: error: argument COMMAND: invalid choice: 'trian'"),
])
def test_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith(message)


def test_an_error_is_one_write(tmp_path, monkeypatch):
    """Under torchrun every process says its error into the same stderr: a line written in two
    parts (print writes the newline apart) can run into another process's line."""
    import io

    writes = []

    class Recording(io.StringIO):
        def write(self, text):
            writes.append(text)
            return super().write(text)

    monkeypatch.setattr("sys.stderr", Recording())
    assert main(["encode", str(tmp_path / "nope.txt"), "--tokenizer", str(tmp_path / "nope.json"),
                 "-o", str(tmp_path / "x.tokens")]) == 2
    assert len(writes) == 1 and writes[0].startswith("tinygen-train: error: ") and \
        writes[0].endswith("\n") and writes[0].count("\n") == 1


@pytest.mark.parametrize("argv", [["encode", "c.txt", "--tokenizer", "t.json", "-o", "c.tokens"],
                                  ["tokenizer", "c.txt", "-o", "t.json"],
                                  ["export", "run", "out"]])
def test_one_process_commands_under_torchrun_are_refused(argv, monkeypatch, capsys):
    # Each process would do the whole job: encode wrote its file twice, teacher-cache scored twice.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"tinygen-train: error: {argv[0]} runs in one process: run it without torchrun "
                   f"(only train and distill use several)\n")


def test_ctrl_c_under_torchrun_is_said_by_process_0_alone(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    from tinygen_trainer.commands import train

    monkeypatch.setattr(train, "run", interrupted)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("1", ""), ("0", "tinygen-train: interrupted\n")):
        monkeypatch.setenv("RANK", rank)
        assert main(["train", "c.txt", "--preset", "cpu-tiny", "-o", "out"]) == 130
        assert capsys.readouterr().err == said


def test_misplaced_folders_say_what_they_are(exported_gpt2_dir, tiny_gpt2_dir, tmp_path, capsys):
    """An export given as a teacher, a cache that is not there, a run that never saved its model,
    a prompts file with no prompts: each says what it is and what to give instead."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\n" * 20, encoding="utf-8")
    tok = str(tiny_gpt2_dir / "tokenizer.json")
    unfinished = tmp_path / "run"
    (unfinished / "checkpoints" / "step-00000002").mkdir(parents=True)
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    cases = [
        (["teacher-cache", str(corpus), "--teacher", str(exported_gpt2_dir), "-o", str(tmp_path / "c")],
         f"--teacher {exported_gpt2_dir} is an exported tinygen model, which scores no corpus: give "
         f"the transformers folder it was exported from, or --teacher-texts N to distill from texts "
         f"it writes"),
        (["distill", "--teacher-cache", str(tmp_path / "nowhere"), "--preset", "cpu-tiny",
          "--tokenizer", tok, "-o", str(tmp_path / "s")],
         f"{tmp_path / 'nowhere'}: not found; build a teacher cache there with 'tinygen-train "
         f"teacher-cache'"),
        (["export", str(unfinished), str(tmp_path / "out")],
         f"{unfinished}: a training run that did not finish (no model saved yet); finish it with "
         f"the same command and --resume, or export one of its checkpoints "
         f"({unfinished / 'checkpoints'}/step-N)"),
        (["teacher-cache", str(corpus), "--teacher", str(unfinished), "-o", str(tmp_path / "c")],
         f"--teacher {unfinished}: a training run that did not finish (no model saved yet); "
         f"finish it with --resume, or give one of its checkpoints "
         f"({unfinished / 'checkpoints'}/step-N)"),
        (["distill", str(corpus), "--teacher", str(exported_gpt2_dir), "--teacher-texts", "4",
          "--prompts", str(empty), "--preset", "cpu-tiny", "--tokenizer", tok, "-o", str(tmp_path / "q")],
         f"--prompts {empty} has no prompts (every line is empty); give one prompt per line, or "
         f"drop --prompts for unprompted texts"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert capsys.readouterr().err == f"tinygen-train: error: {message}\n", argv


def test_a_model_file_given_for_its_folder_names_the_folder(exported_gpt2_dir, tiny_gpt2_dir,
                                                            tmp_path, capsys):
    """--model or --teacher given the weights (model.safetensors, model.onnx) said 'folder not
    found' of a path that is there."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\n" * 20, encoding="utf-8")
    tok = str(tiny_gpt2_dir / "tokenizer.json")
    weights, onnx = tiny_gpt2_dir / "model.safetensors", exported_gpt2_dir / "model.onnx"
    cases = [
        (["train", str(corpus), "--model", str(weights), "-o", str(tmp_path / "a"), "--quiet"],
         f"--model {weights} is a file; give the model's folder, {tiny_gpt2_dir}"),
        (["teacher-cache", str(corpus), "--teacher", str(weights), "-o", str(tmp_path / "b")],
         f"--teacher {weights} is a file; give the model's folder, {tiny_gpt2_dir}"),
        (["distill", str(corpus), "--teacher", str(onnx), "--teacher-texts", "2", "--preset",
          "cpu-tiny", "--tokenizer", tok, "-o", str(tmp_path / "c"), "--quiet"],
         f"--teacher {onnx} is a file; give the exported model's folder, {exported_gpt2_dir}"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert capsys.readouterr().err == f"tinygen-train: error: {message}\n", argv
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_run_or_an_export_given_to_finetune_says_what_it_is(exported_gpt2_dir, tmp_path,
                                                              capsys):
    """--model given a run still training (checkpoints, no model yet) or an export asked for
    its tokenizer ('has no tokenizer.json; pass --tokenizer FILE'), which would not help."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\n" * 20, encoding="utf-8")
    unfinished = tmp_path / "run"
    (unfinished / "checkpoints" / "step-00000002").mkdir(parents=True)
    (unfinished / "metrics.jsonl").touch()
    cases = [
        (unfinished, f"{unfinished}: a training run that did not finish (no model saved yet); "
                     f"finish it with --resume, or give one of its checkpoints "
                     f"({unfinished / 'checkpoints'}/step-N)"),
        (exported_gpt2_dir, f"{exported_gpt2_dir} is an exported tinygen model; give the "
                            f"transformers folder it was exported from"),
    ]
    for model, message in cases:
        argv = ["train", str(corpus), "--model", str(model), "-o", str(tmp_path / "out"), "--quiet"]
        assert main(argv) == 2
        assert capsys.readouterr().err == f"tinygen-train: error: {message}\n"
    assert not (tmp_path / "out").exists()
