"""`generate_to_file` / `--to-file`: context conditioning, resuming safely, and its checks."""

import json
import re
import shutil

import pytest

from tinygen import TextGenerator, TinygenError

from runtime_cli import run

HEADER = re.compile(r"^=+ seed (\d+)$", re.M)


def seeds_in(path):
    return [int(s) for s in HEADER.findall(path.read_text())]


# -- 1. context conditioning into a file -------------------------------------------

def test_generate_to_file_takes_a_context(fields_model, tmp_path):
    gen = TextGenerator(fields_model)
    target = tmp_path / "texts.txt"
    gen.generate_to_file(target, "It", n=3, seed=4, batch_size=2, context={"title": "Rain"},
                         max_new_tokens=6)
    expected = gen.generate("It", n=3, seed=4, context={"title": "Rain"}, max_new_tokens=6)
    blocks = re.findall(r"^=+ seed (\d+)\n(.*?)(?=^=+ seed |\Z)", target.read_text(), re.S | re.M)
    assert [int(s) for s, _ in blocks] == [4, 5, 6]
    assert [b for _, b in blocks] == [f"It{t}\n" for t in expected]


def test_context_with_to_file_from_the_cli(fields_model, tmp_path):
    target = tmp_path / "texts.txt"
    code, out, err = run(["", "--model", str(fields_model), "--context", "title=Rain", "-n", "2",
                          "--seed", "1", "--max-new-tokens", "5", "--to-file", str(target)])
    assert code == 0, err
    assert "wrote 2 texts" in err and seeds_in(target) == [1, 2]
    # Resuming under another context is refused: the texts would be mixed.
    code, _, err = run(["", "--model", str(fields_model), "--context", "title=Sun", "-n", "4",
                        "--max-new-tokens", "5", "--to-file", str(target), "--resume"])
    assert code == 2 and err.count("\n") == 1 and "different prompt" in err
    assert seeds_in(target) == [1, 2]


def test_a_streamed_text_takes_a_context(fields_model):
    """stream and astream condition as generate does: the same text for a seed, ended by a
    field token; so `tinygen --context` streams its text as it comes."""
    import asyncio

    gen = TextGenerator(fields_model)
    options = dict(context={"title": "Rain"}, max_new_tokens=12, seed=7)
    [made] = gen.generate("It", **options)
    stream = gen.stream("It", **options)
    assert "".join(stream) == made and stream.completion.token_ids == made.token_ids

    async def pieces():
        return "".join([p async for p in gen.astream("It", **options)])

    assert asyncio.run(pieces()) == made
    with pytest.raises(TinygenError, match="target needs a context"):
        gen.astream("It", target="body")
    code, out, err = run(["It", "--model", str(fields_model), "--context", "title=Rain",
                          "--seed", "7", "--max-new-tokens", "12", "--show-probs"])
    assert code == 0, err
    assert out == f"It{made}\n" and err == "seed: 7\n"


# -- 2. resuming ----------------------------------------------------------------------

def test_resume_with_fewer_texts_asked_keeps_every_complete_record(optimum_gpt2_dir, tmp_path):
    target = tmp_path / "t.txt"
    args = ["Hi", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "5", "--to-file", str(target)]
    assert run([*args, "-n", "3", "--seed", "5"])[0] == 0
    whole = target.read_text()
    code, _, err = run([*args, "-n", "1", "--resume"])
    assert code == 0 and target.read_text() == whole
    assert "nothing to do" in err and "wrote" not in err
    code, _, err = run([*args, "-n", "3", "--resume"])
    assert code == 0 and target.read_text() == whole and "nothing to do" in err


@pytest.mark.parametrize("change,message", [
    (["--prompt", "Bye"], "different prompt"),
    # Options named as the command line spells them, where it has a flag for the value.
    (["--top-k", "5"], "was started with --top-k=0, not --top-k=5"),
    (["--max-new-tokens", "6"], "was started with --max-new-tokens=5, not --max-new-tokens=6"),
    (["--greedy"], "was started with do_sample=True, not --greedy"),
    (["--seed", "9"], "seed 5, not 9"),
])
def test_resume_refuses_other_settings(optimum_gpt2_dir, tmp_path, change, message):
    target = tmp_path / "t.txt"
    prompt = change[1] if change[0] == "--prompt" else "Hi"
    extra = [] if change[0] == "--prompt" else change
    base = ["--model", str(optimum_gpt2_dir), "--to-file", str(target)]
    new_tokens = [] if "--max-new-tokens" in extra else ["--max-new-tokens", "5"]
    assert run(["Hi", *base, "--max-new-tokens", "5", "-n", "2", "--seed", "5"])[0] == 0
    whole = target.read_text()
    code, out, err = run([prompt, *base, *new_tokens, *extra, "-n", "4", "--resume"])
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("tinygen: error: ")
    assert message in err and "choose a new file" in err
    assert target.read_text() == whole


def interrupt_the_second_batch(monkeypatch) -> None:
    """Ctrl-C during the second batch: TextGenerator.generate raises on its second call."""
    real, calls = TextGenerator.generate, []

    def dies_on_the_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TextGenerator, "generate", dies_on_the_second_batch)


def test_an_interrupted_run_resumes_and_reports_what_it_wrote(optimum_gpt2_dir, tmp_path, monkeypatch):
    gen = TextGenerator(optimum_gpt2_dir)
    target = tmp_path / "t.txt"
    whole_file = tmp_path / "whole.txt"
    gen.generate_to_file(whole_file, "Hi", n=5, seed=20, batch_size=2, max_new_tokens=6)

    interrupt_the_second_batch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_to_file(target, "Hi", n=5, seed=20, batch_size=2, max_new_tokens=6)
    monkeypatch.undo()
    assert seeds_in(target) == [20, 21]
    result = gen.generate_to_file(target, "Hi", n=5, batch_size=2, max_new_tokens=6, resume=True)
    assert result == target and result.written == 3 and result.texts == 5
    assert target.read_text() == whole_file.read_text()


def test_an_interrupted_cli_run_says_how_to_go_on(optimum_gpt2_dir, tmp_path, monkeypatch):
    target = tmp_path / "t.txt"
    interrupt_the_second_batch(monkeypatch)
    code, _, err = run(["Hi", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "4", "-n", "4",
                        "--batch-size", "2", "--seed", "3", "--to-file", str(target)])
    assert code == 130 and seeds_in(target) == [3, 4]
    assert err == (f"{target} keeps the texts it finished; the same command with --resume goes on "
                   f"from there\ntinygen: interrupted\n")


def test_cli_reports_the_texts_written_by_this_run(optimum_gpt2_dir, tmp_path):
    target = tmp_path / "t.txt"
    args = ["Hi", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "5", "--to-file", str(target)]
    assert run([*args, "-n", "2", "--seed", "5"])[0] == 0
    code, _, err = run([*args, "-n", "5", "--resume"])
    assert code == 0 and "wrote 3 texts" in err and seeds_in(target) == [5, 6, 7, 8, 9]


def test_a_cut_record_is_made_again(optimum_gpt2_dir, tmp_path):
    gen = TextGenerator(optimum_gpt2_dir)
    target = tmp_path / "t.txt"
    gen.generate_to_file(target, "Once", n=4, seed=3, batch_size=4, max_new_tokens=8)
    whole = target.read_text()
    target.write_text(whole[:whole.index("seed 6") + 9])  # the last record cut short
    result = gen.generate_to_file(target, "Once", n=4, max_new_tokens=8, resume=True)
    assert target.read_text() == whole and result.written == 1


# -- 3. batch size ------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_batch_size_is_checked_before_anything_is_written(optimum_gpt2_dir, tmp_path, batch_size):
    gen = TextGenerator(optimum_gpt2_dir)
    target = tmp_path / "t.txt"
    with pytest.raises(TinygenError, match="batch_size must be an integer >= 1"):
        gen.generate_to_file(target, "Hi", n=2, seed=1, batch_size=batch_size, max_new_tokens=4)
    assert not target.exists()


def test_bad_batch_size_from_the_cli(optimum_gpt2_dir, tmp_path):
    for size in ("0", "-1"):
        code, _, err = run(["Hi", "--model", str(optimum_gpt2_dir), "-n", "2", "--batch-size", size,
                            "--to-file", str(tmp_path / "t.txt")])
        assert code == 2 and err.count("\n") == 1 and "--batch-size must be >= 1" in err


def test_n_is_checked_by_generate_to_file(optimum_gpt2_dir, tmp_path):
    gen = TextGenerator(optimum_gpt2_dir)
    with pytest.raises(TinygenError, match="n must be an integer >= 1"):
        gen.generate_to_file(tmp_path / "t.txt", "Hi", n=0)


# -- 7. options --to-file would ignore -------------------------------------------------------

@pytest.mark.parametrize("extra", [["--dedupe", "0.5"], ["--dedupe", "0.5", "--dedupe-against", "x.tokens"]])
def test_dedupe_with_to_file_is_refused(optimum_gpt2_dir, tmp_path, extra):
    target = tmp_path / "t.txt"
    code, _, err = run(["Hi", "--model", str(optimum_gpt2_dir), "-n", "2", *extra, "--to-file", str(target)])
    assert code == 2 and err.count("\n") == 1 and "--dedupe" in err and "--to-file" in err
    assert not target.exists()


def test_settings_file_sits_next_to_the_texts(optimum_gpt2_dir, tmp_path):
    gen = TextGenerator(optimum_gpt2_dir)
    target = tmp_path / "t.txt"
    gen.generate_to_file(target, "Hi", n=2, seed=1, max_new_tokens=4)
    sidecar = json.loads((tmp_path / "t.txt.tinygen.json").read_text())
    assert sidecar["prompt"] == "Hi" and sidecar["seed"] == 1 and sidecar["texts"] == 2
    assert sidecar["bytes"] == target.stat().st_size


def test_files_written_before_settings_were_kept_still_resume(optimum_gpt2_dir, tmp_path):
    gen = TextGenerator(optimum_gpt2_dir)
    target = tmp_path / "t.txt"
    gen.generate_to_file(target, "Hi", n=5, seed=1, max_new_tokens=4)
    whole = target.read_text()
    (tmp_path / "t.txt.tinygen.json").unlink()
    target.write_text(whole[:whole.index("seed 4")])
    gen.generate_to_file(target, "Hi", n=5, max_new_tokens=4, resume=True)
    assert target.read_text() == whole
    shutil.copy(target, tmp_path / "copy.txt")
    with pytest.raises(TinygenError, match="different prompt"):
        gen.generate_to_file(tmp_path / "copy.txt", "Bye", n=7, max_new_tokens=4, resume=True)


def test_resume_refuses_another_model(optimum_gpt2_dir, exported_gpt2_dir, tmp_path):
    """The same options on other weights (or another graph of them) would mix two models' texts."""
    target = tmp_path / "t.txt"
    args = ["Hi", "--max-new-tokens", "5", "--to-file", str(target), "--top-k", "40"]
    assert run([*args, "--model", str(optimum_gpt2_dir), "-n", "2", "--seed", "5"])[0] == 0
    whole = target.read_text()
    code, out, err = run([*args, "--model", str(exported_gpt2_dir), "-n", "4", "--resume"])
    assert code == 2 and err.count("\n") == 1
    assert f"was written by another model ({optimum_gpt2_dir.name}, or other weights" in err
    assert target.read_text() == whole
    # the model it was written by goes on
    assert run([*args, "--model", str(optimum_gpt2_dir), "-n", "4", "--resume"])[0] == 0
    assert seeds_in(target) == [5, 6, 7, 8]


def test_a_half_written_batch_is_cut_even_when_nothing_is_left_to_write(optimum_gpt2_dir, tmp_path):
    gen = TextGenerator(optimum_gpt2_dir)
    target = tmp_path / "t.txt"
    gen.generate_to_file(target, "Hi", n=2, seed=5, max_new_tokens=5)
    whole = target.read_text()
    with open(target, "a") as f:  # a kill while the next batch was written, then -n 2 again
        f.write("=" * 20 + " seed 7\nHi and th")
    result = gen.generate_to_file(target, "Hi", n=2, max_new_tokens=5, resume=True)
    assert result.written == 0 and result.texts == 2
    assert target.read_text() == whole


def test_a_folder_is_one_line(optimum_gpt2_dir, tmp_path):
    for extra in ([], ["--resume"]):
        code, _, err = run(["Hi", "--model", str(optimum_gpt2_dir), "--to-file", str(tmp_path), *extra])
        assert code == 2 and err == f"tinygen: error: {tmp_path} is a folder; give a file to write the texts to\n"


def test_a_folder_where_the_settings_go_is_one_line_and_no_file_is_made(optimum_gpt2_dir, tmp_path):
    """It was 'PATH.tinygen.json is a folder; give the path of the file to write', which names
    a path the user never gave, and came after an empty PATH was made."""
    target = tmp_path / "texts.txt"
    (tmp_path / "texts.txt.tinygen.json").mkdir()
    code, _, err = run(["Hi", "--model", str(optimum_gpt2_dir), "--to-file", str(target)])
    assert code == 2 and err == (f"tinygen: error: {target}.tinygen.json, where the settings of "
                                 f"{target} go, is a folder; move it, or choose a new file\n")
    assert not target.exists()


def test_texts_written_inside_the_model_folder_resume(optimum_gpt2_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(optimum_gpt2_dir, model)
    args = ["Hi", "--model", str(model), "--max-new-tokens", "5", "--to-file", str(model / "t.txt")]
    assert run([*args, "-n", "2", "--seed", "5"])[0] == 0
    code, _, err = run([*args, "-n", "3", "--resume"])
    assert code == 0, err
    assert seeds_in(model / "t.txt") == [5, 6, 7]


def test_to_file_makes_missing_folders_as_save_does(optimum_gpt2_dir, tmp_path):
    """--to-file and curate's --save follow one rule, the trainer's -o's: missing folders are made."""
    target = tmp_path / "runs" / "today" / "texts.txt"
    code, _, err = run(["Hi", "--model", str(optimum_gpt2_dir), "-n", "2", "--seed", "3",
                        "--max-new-tokens", "4", "--to-file", str(target)])
    assert code == 0, err
    assert seeds_in(target) == [3, 4]


def test_a_file_in_the_way_of_to_file_is_one_line(optimum_gpt2_dir, tmp_path):
    (tmp_path / "afile").write_text("")
    target = tmp_path / "afile" / "texts.txt"
    code, _, err = run(["Hi", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "4",
                        "--to-file", str(target)])
    assert code == 2
    assert err == f"tinygen: error: cannot write {target}: {tmp_path / 'afile'} is a file, not a folder\n"


def test_a_text_edited_by_hand_is_not_cut_by_a_resume(optimum_gpt2_dir, tmp_path):
    """The record's byte offset fell inside the last text once an earlier one was made longer
    by hand: the resume cut that text and glued the next header to it."""
    gen = TextGenerator(optimum_gpt2_dir)
    target = tmp_path / "t.txt"
    gen.generate_to_file(target, "Hi", n=4, seed=5, max_new_tokens=6)
    edited = target.read_text().replace("seed 6\nHi", "seed 6\nHi (a note added by hand)")
    target.write_text(edited)
    assert gen.generate_to_file(target, "Hi", n=4, max_new_tokens=6, resume=True).written == 1
    assert target.read_text() == edited  # the last text, made again, is the one it held
    result = gen.generate_to_file(target, "Hi", n=5, max_new_tokens=6, resume=True)
    assert result.texts == 5 and seeds_in(target) == [5, 6, 7, 8, 9]
    assert target.read_text().startswith(edited)


def test_a_text_taken_out_by_hand_is_refused_not_written_twice(optimum_gpt2_dir, tmp_path):
    gen = TextGenerator(optimum_gpt2_dir)
    target = tmp_path / "t.txt"
    gen.generate_to_file(target, "Hi", n=4, seed=5, max_new_tokens=6)
    text = target.read_text()
    cut = text[:text.index("=" * 20 + " seed 6")] + text[text.index("=" * 20 + " seed 7"):]
    target.write_text(cut)
    with pytest.raises(TinygenError) as info:
        gen.generate_to_file(target, "Hi", n=6, max_new_tokens=6, resume=True)
    assert str(info.value) == (f"{target}: text 2 has seed 7, not 6: texts were taken out or moved "
                               f"by hand, so a resume would write some seeds twice; put them back "
                               f"in order, or choose a new file")
    assert target.read_text() == cut


def test_a_second_writer_is_refused_while_the_first_writes(optimum_gpt2_dir, tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    gen = TextGenerator(optimum_gpt2_dir)
    target = tmp_path / "t.txt"
    gen.generate_to_file(target, "Hi", n=2, seed=5, max_new_tokens=4)
    whole = target.read_text()
    with open(target, "ab") as other:  # another process's writer holds it
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run(["Hi", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "4",
                            "-n", "4", "--to-file", str(target), "--resume"])
    assert code == 2 and err == (f"tinygen: error: {target} is being written by another writer "
                                 f"(another process, or another generate_to_file call in this "
                                 f"one); wait for it to finish, or choose a new file\n")
    assert target.read_text() == whole


def test_a_second_writer_in_the_same_process_is_refused(optimum_gpt2_dir, tmp_path):
    """Two threads of one app writing one file: the second is refused too (flock holds per open
    file), and told so, not sent looking for another process."""
    fcntl = pytest.importorskip("fcntl")
    gen = TextGenerator(optimum_gpt2_dir)
    target = tmp_path / "t.txt"
    gen.generate_to_file(target, "Hi", n=2, seed=5, max_new_tokens=4)
    with open(target, "ab") as other:  # the first call's writer, in this process
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(TinygenError, match="another generate_to_file call in this one"):
            gen.generate_to_file(target, "Hi", n=4, max_new_tokens=4, resume=True)


def test_a_list_of_seeds_is_refused_by_generate_to_file(optimum_gpt2_dir, tmp_path):
    """The file records one seed (text i has seed + i): a list was written, then resumed wrongly."""
    with pytest.raises(TinygenError, match=r"generate_to_file takes one seed \(text i gets seed \+ i\), "
                                           r"got \[1, 5\]"):
        TextGenerator(optimum_gpt2_dir).generate_to_file(tmp_path / "t.txt", "Hi", n=2, seed=[1, 5])
    assert not (tmp_path / "t.txt").exists()
