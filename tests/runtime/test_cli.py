"""The `tinygen` CLI: stdout holds the text, stderr the seeds and errors; errors are one line, exit 2."""

import io
import os
import re

import pytest

from tinygen.cli import BOLD, main

from runtime_cli import ClosedPipe, run


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_bare_prompt_generates_and_reports_the_seed(optimum_gpt2_dir):
    code, out, err = run(["Once upon", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "8"])
    assert code == 0 and out.startswith("Once upon") and BOLD not in out
    seed = int(re.fullmatch(r"seed: (\d+)\n", err).group(1))
    code2, out2, _ = run(["generate", "Once upon", "--model", str(optimum_gpt2_dir),
                          "--max-new-tokens", "8", "--seed", str(seed)])
    assert code2 == 0 and out2 == out


def test_prompt_is_bold_only_on_a_terminal(optimum_gpt2_dir):
    code, out, _ = run(["Once", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "4", "--seed", "1"],
                       out=Tty())
    assert code == 0 and out.startswith(f"{BOLD}Once\033[0m")


def test_many_texts_and_to_file_keep_each_seed(optimum_llama_dir, tmp_path):
    target = tmp_path / "texts.txt"
    args = ["Once", "--model", str(optimum_llama_dir), "--max-new-tokens", "6"]
    code, out, err = run([*args, "-n", "4", "--seed", "50", "--to-file", str(target)])
    assert code == 0 and out == "" and "wrote 4 texts" in err
    blocks = re.findall(r"^=+ seed (\d+)\n(.*?)(?=^=+ seed |\Z)", target.read_text(), re.S | re.M)
    assert [int(s) for s, _ in blocks] == [50, 51, 52, 53]
    # Any one text comes back alone from its seed.
    code, alone, _ = run([*args, "--seed", "52"])
    assert alone == blocks[2][1]


def test_many_texts_to_stdout_are_delimited(optimum_gpt2_dir):
    code, out, err = run(["Hi", "--model", str(optimum_gpt2_dir), "-n", "3", "--max-new-tokens", "4", "--seed", "9"])
    assert code == 0 and out.count("=" * 20 + "\n") == 2 and err == "seeds: 9..11\n"


def test_greedy_flag_needs_no_seed(optimum_gpt2_dir):
    code, out, err = run(["Hi", "--model", str(optimum_gpt2_dir), "--greedy", "--max-new-tokens", "4"])
    assert code == 0 and err == ""


@pytest.mark.parametrize("extra,message", [
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--temperature", "inf"], "temperature must be a finite number >= 0"),
    (["--repetition-penalty", "inf"], "--repetition-penalty must be a finite number > 0"),
    (["--threads", "-1"], "--threads must be an integer >= 1"),
    (["-n", "0"], "-n must be >= 1"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
])
def test_bad_options_give_one_line_and_exit_2(optimum_gpt2_dir, extra, message):
    code, out, err = run(["Hi", "--model", str(optimum_gpt2_dir), *extra])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("tinygen: error: ") and message in err


def test_info_describes_the_model(optimum_llama_dir, tmp_path):
    code, out, _ = run(["info", "--model", str(optimum_llama_dir)])
    assert code == 0 and '"architecture": "llama"' in out and '"num_kv_heads": 2' in out
    (tmp_path / "mine.json").write_text('{"format_version": 1}')
    code, out, _ = run(["info", "--model", str(optimum_llama_dir), "--replacements", str(tmp_path / "mine.json")])
    assert code == 0 and f'"replacements_file": "{tmp_path / "mine.json"}"' in out


def test_show_probs_colours_tokens_on_a_terminal_only(optimum_gpt2_dir):
    args = ["Once", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "6", "--seed", "4", "--show-probs"]
    _, plain, _ = run(args)
    _, coloured, _ = run(args, out=Tty())
    assert "\033[38;5;" not in plain and coloured.count("\033[38;5;") >= 1
    assert re.sub(r"\033\[[0-9;]*m", "", coloured) == plain


def test_exclude_chars_from_the_cli(optimum_gpt2_dir):
    code, out, _ = run(["", "--model", str(optimum_gpt2_dir), "-n", "8", "--seed", "0",
                        "--max-new-tokens", "30", "--exclude-chars", "eo", "--temperature", "1.5"])
    assert code == 0 and "e" not in out and "o" not in out


def test_excluded_characters_and_tokens_take_the_escapes_stop_takes():
    """--exclude-chars '\\n' bans newlines (not a backslash and the letter n)."""
    args = ["Once upon a time", "--seed", "1", "--max-new-tokens", "80"]
    _, free, _ = run(args)
    _, banned, _ = run([*args, "--exclude-chars", r"\n", "--exclude", r"\n"])
    assert free.rstrip("\n").count("\n") >= 2  # the embedded model writes lines at this seed
    assert "\n" not in banned.rstrip("\n") and "n" in banned


def test_to_file_resume_from_the_cli(optimum_gpt2_dir, tmp_path):
    target = tmp_path / "t.txt"
    args = ["Hi", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "5", "--to-file", str(target)]
    assert run([*args, "-n", "3", "--seed", "5"])[0] == 0
    code, _, err = run([*args, "-n", "3", "--seed", "5"])
    assert code == 2 and "--resume" in err
    assert run([*args, "-n", "5", "--resume"])[0] == 0
    assert re.findall(r"seed (\d+)", target.read_text()) == ["5", "6", "7", "8", "9"]


def test_next_lists_the_likeliest_tokens(optimum_gpt2_dir):
    from tinygen import TextGenerator

    code, out, _ = run(["next", "Once upon a", "--model", str(optimum_gpt2_dir), "--top-n", "3"])
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    expected = TextGenerator(optimum_gpt2_dir).next_token_probs("Once upon a", top_n=3)
    assert [float(line.split("\t")[0]) for line in lines] == pytest.approx([p for _, p in expected], abs=1e-6)


def test_context_flags_need_a_model_with_fields(optimum_gpt2_dir):
    code, _, err = run(["", "--model", str(optimum_gpt2_dir), "--context", "title=Rain"])
    assert code == 2 and "no fields.json" in err
    code, _, err = run(["", "--model", str(optimum_gpt2_dir), "--context", "title"])
    assert code == 2 and "--context takes FIELD=VALUE" in err


def test_a_context_field_given_twice_is_refused_not_overwritten():
    """The second --context keywords=... silently replaced the first."""
    assert run(["It", "--context", "keywords=wet", "--context", "keywords=grey"]) == (
        2, "", "tinygen: error: --context gives the field 'keywords' twice; give it once (a value "
               "with commas is a list: keywords=a,b)\n")


def test_help_shows_each_default_once_and_only_where_it_tells_something():
    from tinygen.cli import build_parser
    from tinygen_trainer.cli import build_parser as build_train_parser

    generate = build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    export = build_train_parser()._subparsers._group_actions[0].choices["export"].format_help()
    for text in (generate, export):
        assert "(default: None)" not in text and "(default: False)" not in text
    assert generate.count("(default: 16)") == 1  # --batch-size: said by argparse, once
    assert "the embedded tiny model) (default" not in generate  # said by the help text itself


@pytest.mark.parametrize("argv,message", [
    (["Hi", "--bogus"], "tinygen generate: error: unrecognized arguments: --bogus (see tinygen generate --help)"),
    (["Hi", "--max-new-tokens", "abc"], "tinygen generate: error: argument --max-new-tokens: invalid int value: 'abc'"),
    (["next"], "tinygen next: error: the following arguments are required: prompt"),
    # Unquoted words were only "unrecognized arguments: upon a time".
    (["Once", "upon", "a", "time"],
     "tinygen generate: error: unrecognized arguments: upon a time; a prompt of several words goes "
     "in quotes, as one argument: \"Once upon a time\" (see tinygen generate --help)"),
    (["info", "Hi"], "tinygen info: error: unrecognized arguments: Hi (see tinygen info --help)"),
])
def test_usage_errors_are_one_line_naming_the_command(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv, out=io.StringIO(), err=io.StringIO())
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith(message)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and re.fullmatch(r"tinygen \d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_the_prompt_dash_reads_stdin(optimum_gpt2_dir, monkeypatch):
    args = ["--model", str(optimum_gpt2_dir), "--max-new-tokens", "6", "--seed", "4"]
    monkeypatch.setattr("sys.stdin", io.StringIO("Once upon\n"))
    assert run(["-", *args]) == run(["Once upon", *args])
    # a file saved on Windows: its BOM and \r\n line ends are not part of the prompt
    monkeypatch.setattr("sys.stdin", io.StringIO("\ufeffOnce\r\nupon\r\n"))
    assert run(["-", *args]) == run(["Once\nupon", *args])


def test_a_closed_stdout_is_one_line(monkeypatch):
    monkeypatch.setattr("sys.stdout", None)
    err = io.StringIO()
    assert main(["Hi"], err=err) == 2
    assert err.getvalue() == "tinygen: error: standard output is closed; redirect it to a file or /dev/null\n"


def test_bytes_that_are_not_utf8_are_one_line(optimum_gpt2_dir, monkeypatch):
    """A command-line argument or stdin (C locale) with bytes that are not UTF-8 reaches
    Python as lone surrogates; stdin under a UTF-8 locale fails to decode."""
    args = ["--model", str(optimum_gpt2_dir), "--max-new-tokens", "3"]
    for argv in (["caf\udce9", *args], ["next", "caf\udce9", *args[:2]], ["Hi", "--stop", "\udce9", *args]):
        code, out, err = run(argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and "is not UTF-8 text" in err, err
    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9\n"), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", stdin)
    assert run(["-", *args]) == (2, "", "tinygen: error: the prompt on stdin is not UTF-8 text (byte 3); "
                                        "give it as UTF-8\n")


class FullDisk(io.StringIO):
    def write(self, text):
        raise OSError(28, "No space left on device")


def test_output_that_cannot_be_written_is_one_line(optimum_gpt2_dir):
    args = ["--model", str(optimum_gpt2_dir), "--max-new-tokens", "3", "--seed", "1"]
    for argv in (["Hi", *args], ["Hi", "-n", "2", *args], ["next", "Hi", *args[:2]], ["info", *args[:2]]):
        err = io.StringIO()
        assert main(argv, out=FullDisk(), err=err) == 2
        assert err.getvalue() == "tinygen: error: cannot write the output: No space left on device\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_under_stdout_is_one_line_and_nothing_more(optimum_gpt2_dir):
    """A real stdout: one line, and no second error when Python flushes it at exit."""
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "tinygen.cli", "Hi", "--model", str(optimum_gpt2_dir),
                               "--max-new-tokens", "3", "--seed", "1"], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    assert (done.returncode, done.stderr) == (2, "tinygen: error: cannot write the output: No space left on "
                                                 "device\n")


def test_a_closed_stderr_still_generates(optimum_gpt2_dir, monkeypatch):
    monkeypatch.setattr("sys.stderr", None)
    out = io.StringIO()
    assert main(["Hi", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "3", "--seed", "1"], out=out) == 0
    assert out.getvalue() == run(["Hi", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "3",
                                  "--seed", "1"])[1]


@pytest.mark.parametrize("option", ["--model", "--replacements", "--to-file", "--dedupe-against"])
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(option):
    argv = ["Hi", option, ""] + (["--dedupe", "0.5"] if option == "--dedupe-against" else [])
    assert run(argv) == (2, "", f"tinygen: error: {option} needs a path, got an empty string\n")
    if option == "--model":
        assert run(["curate", "Hi", "--save", ""])[2] == "tinygen: error: --save needs a path, got an empty string\n"


def test_curate_refuses_its_prompt_from_stdin_where_its_choices_come_from(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello"))
    code, out, err = run(["curate", "-", "-k", "2"])
    assert code == 2 and out == "" and err.startswith("tinygen: error: curate reads your choices from stdin")
    with pytest.raises(SystemExit):
        main(["curate", "--help"])
    assert "stdin" not in capsys.readouterr().out.split("options:")[0]


def test_an_interrupted_stream_ends_its_line_and_reports_the_seed(optimum_gpt2_dir, monkeypatch):
    from tinygen import TextStream

    def interrupted(self):
        yield "a piece"
        raise KeyboardInterrupt
    monkeypatch.setattr(TextStream, "__iter__", interrupted)
    code, out, err = run(["Once", "--model", str(optimum_gpt2_dir), "--seed", "9"])
    assert code == 130 and out == "Oncea piece\n" and err == "seed: 9\ntinygen: interrupted\n"


def test_a_save_path_that_cannot_be_written_fails_before_the_first_round(optimum_gpt2_dir, tmp_path,
                                                                         monkeypatch):
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr("sys.stdin", io.StringIO("1\n"))
    save = tmp_path / "afile" / "story.json"
    code, out, err = run(["curate", "Once", "--model", str(optimum_gpt2_dir), "-k", "1", "--save", str(save)])
    assert code == 2 and out == ""
    assert err == f"tinygen: error: cannot write {save}: {tmp_path / 'afile'} is a file, not a folder\n"


def test_generating_loads_neither_the_server_nor_asyncio(optimum_gpt2_dir):
    """Each is tens of milliseconds at every start; only `tinygen serve` and the async API use them."""
    import subprocess
    import sys

    code = ("import io, sys\n"
            "from tinygen.cli import main\n"
            f"assert main(['Once', '--model', {str(optimum_gpt2_dir)!r}, '--max-new-tokens', '3'],"
            " out=io.StringIO(), err=io.StringIO()) == 0\n"
            "print(sorted(m for m in ('asyncio', 'tinygen.serving.engine', 'tinygen.async_api')"
            " if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_color_drops_the_bold_prompt_but_not_asked_for_colours(optimum_gpt2_dir, monkeypatch, env):
    """NO_COLOR (no-color.org) and a dumb terminal turn off styling the user did not ask for;
    --show-probs is asked for."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = ["Once", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "4", "--seed", "1"]
    code, out, _ = run(args, out=Tty())
    assert code == 0 and out.startswith("Once") and "\033[" not in out
    code, out, _ = run([*args, "--show-probs"], out=Tty())
    assert code == 0 and out.startswith("Once") and "\033[38;5;" in out and BOLD not in out


@pytest.mark.parametrize("argv,fix", [
    (["-hello"], "tinygen [OPTIONS] -- -hello"),  # argparse read it as -h with 'ello'
    (["-world", "-n", "2"], "tinygen [OPTIONS] -- -world"),
    (["next", "-x"], "tinygen next [OPTIONS] -- -x"),
    (["-it's"], "tinygen [OPTIONS] -- '-it'\"'\"'s'"),
])
def test_a_prompt_that_starts_with_a_dash_is_told_how_to_be_given(argv, fix, capsys, optimum_gpt2_dir):
    with pytest.raises(SystemExit) as exit_info:
        main(argv, out=io.StringIO(), err=io.StringIO())
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert f"; a prompt that starts with '-' goes after '--', behind the options: {fix} (see" in err
    # and the advice works
    code, out, _ = run(["--model", str(optimum_gpt2_dir), "--max-new-tokens", "3", "--", "-hello"]
                       if argv[0] != "next" else
                       ["next", "--model", str(optimum_gpt2_dir), "--", "-x"])
    assert code == 0 and (out.startswith("-hello") or argv[0] == "next")


def test_only_a_one_dash_argument_gets_the_prompt_advice(capsys):
    with pytest.raises(SystemExit):
        main(["Hi", "-q"], out=io.StringIO(), err=io.StringIO())  # one dash, after the prompt
    assert "goes after '--'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["Hi", "--bogus"], out=io.StringIO(), err=io.StringIO())
    assert "goes after '--'" not in capsys.readouterr().err  # a mistyped --option is no prompt
    with pytest.raises(SystemExit):
        main(["-n2", "Hi", "--bogus"], out=io.StringIO(), err=io.StringIO())
    assert "goes after '--'" not in capsys.readouterr().err  # -n2 is -n with its value


def test_an_option_is_named_as_typed():
    from tinygen import ModelFormatError, TinygenError
    from tinygen.cli import _as_typed

    message = "top_p must be in (0, 1], got 2.0"
    assert _as_typed(TinygenError(message), ["generate", "--top-p", "2"]) == "--top-p must be in (0, 1], got 2.0"
    assert _as_typed(TinygenError(message), ["generate", "--top-p=2"]).startswith("--top-p must")
    # A generation option is named by its flag even where not typed: the flag is what changes it.
    assert _as_typed(TinygenError("min_new_tokens must be an integer from 0 to max_new_tokens (64), "
                                  "got 70"), ["generate", "--min-new-tokens", "70"]) == \
        "--min-new-tokens must be an integer from 0 to --max-new-tokens (64), got 70"
    # Any other option's rule is named as typed, where it was.
    batch = "max_batch must be an integer >= 1, got 0"
    assert _as_typed(TinygenError(batch), ["serve", "--max-batch", "0"]) == "--max-batch" + batch[9:]
    assert _as_typed(TinygenError(batch), ["serve"]) == batch
    # Only an option's rule: "model directory not found" is not about the --model flag's name.
    assert _as_typed(TinygenError("model directory not found: m"), ["--model", "m"]) == \
        "model directory not found: m"
    # A model file's keys are its own, not flags; nor is a value quoted, nor a path.
    own = "m/tinygen.json: 'generation': top_p must be in (0, 1], got 7"
    assert _as_typed(ModelFormatError(own), ["generate"]) == own
    assert _as_typed(TinygenError("exclude_strings: 'top_p' is not a token of this model"), []) == \
        "--exclude: 'top_p' is not a token of this model"
    assert _as_typed(TinygenError("/tmp/min_new_tokens.txt exists; pass resume=True"), []) == \
        "/tmp/min_new_tokens.txt exists; pass --resume"


@pytest.mark.parametrize("extra,message", [
    (["--min-new-tokens", "9", "--max-new-tokens", "8"],
     "--min-new-tokens must be an integer from 0 to --max-new-tokens (8), got 9"),
    (["--exclude", "zzqqxx"], "--exclude: 'zzqqxx' is not a token of this model (it bans tokens by their "
                              "whole text, e.g. ' the'; --exclude-chars bans characters)"),
    (["--exclude", "min_new_tokens"], "--exclude: 'min_new_tokens' is not a token of this model (it bans "
                                      "tokens by their whole text, e.g. ' the'; --exclude-chars bans characters)"),
    (["--exclude", ""], "--exclude must be non-empty strings, got an empty one"),
    (["--stop", "x", "--stop", ""], "--stop must be non-empty strings, got an empty one"),
    (["--stop", "\udcff"], "--stop '\\udcff' is not UTF-8 text (at character 0); give it as UTF-8"),
    (["--exclude", "\udcff"], "--exclude '\\udcff' is not UTF-8 text (at character 0); give it as UTF-8"),
    (["--exclude-chars", "\udcff"], "--exclude-chars is not UTF-8 text (at character 0); give it as UTF-8"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
])
def test_library_errors_name_the_flags_not_the_python_options(optimum_gpt2_dir, extra, message):
    """The library's messages name options as Python does (exclude_strings, stop, resume=True):
    the command line's, as the user knows them (--exclude, --stop, --resume)."""
    assert run(["Hi", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "4", *extra]) == \
        (2, "", f"tinygen: error: {message}\n")


def test_an_existing_file_names_resume_as_a_flag(optimum_gpt2_dir, tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("mine\n")
    assert run(["Hi", "--model", str(optimum_gpt2_dir), "--to-file", str(target)]) == \
        (2, "", f"tinygen: error: {target} exists; pass --resume to continue it, or choose a new file\n")
    assert target.read_text() == "mine\n"

def test_texts_are_printed_batch_by_batch_as_one_call_makes_them(optimum_gpt2_dir, monkeypatch):
    """-n with --batch-size prints each batch as it is made, the texts and seeds those of one
    generate call; Ctrl-C keeps the batches made and reports their seeds."""
    from tinygen import TextGenerator

    args = ["Once", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "5", "-n", "5",
            "--batch-size", "2"]
    code, out, err = run([*args, "--seed", "9"])
    want = TextGenerator(optimum_gpt2_dir).generate("Once", n=5, seed=9, max_new_tokens=5)
    assert code == 0 and out == ("=" * 20 + "\n").join(f"Once{t}\n" for t in want)
    assert err == "seeds: 9..13\n"
    code, drawn, err = run(args)  # a drawn seed runs on from batch to batch too
    first = int(re.fullmatch(r"seeds: (\d+)\.\.(\d+)\n", err).group(1))
    assert err == f"seeds: {first}..{first + 4}\n" and drawn == run([*args, "--seed", str(first)])[1]

    real, calls = TextGenerator.generate, []

    def interrupted_in_the_second_batch(self, *a, **kw):
        calls.append(kw["seed"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **kw)
    monkeypatch.setattr(TextGenerator, "generate", interrupted_in_the_second_batch)
    code, out, err = run([*args, "--seed", "9"])
    assert code == 130 and calls == [9, 11]
    assert out == ("=" * 20 + "\n").join(f"Once{t}\n" for t in want[:2])
    assert err == "seeds: 9..10\ntinygen: interrupted\n"


def test_sample_and_no_stop_override_the_models_settings(optimum_gpt2_dir, tmp_path):
    """A model may say greedy and stop strings (its generation_config.json, exported); --sample
    and --no-stop take them back, as do_sample=True and stop=[] do in Python."""
    import json
    import shutil

    from tinygen import TextGenerator
    from tinygen.manifest import load_manifest

    model = tmp_path / "model"
    shutil.copytree(optimum_gpt2_dir, model)
    manifest = load_manifest(model).to_json()
    manifest["generation"] = {**manifest.get("generation", {}), "do_sample": False, "stop": ["e"]}
    (model / "tinygen.json").write_text(json.dumps(manifest))
    args = ["Once", "--model", str(model), "--max-new-tokens", "12"]
    gen = TextGenerator(model)
    assert run([*args, "--seed", "1"])[1] == run([*args, "--seed", "2"])[1]  # greedy: no seed counts
    for flags, options in [(["--sample"], dict(do_sample=True)), (["--no-stop"], dict(stop=[])),
                           (["--sample", "--no-stop"], dict(do_sample=True, stop=[]))]:
        [want] = gen.generate("Once", seed=1, max_new_tokens=12, **options)
        code, out, _ = run([*args, *flags, "--seed", "1"])
        assert code == 0 and out == f"Once{want}\n", flags
    assert str(gen.generate("Once", seed=1, max_new_tokens=12, do_sample=True)[0]) != \
        str(gen.generate("Once", seed=2, max_new_tokens=12, do_sample=True)[0])
    with pytest.raises(SystemExit):  # argparse's usage error: one or the other
        run([*args, "--greedy", "--sample"])


def test_curate_with_stdin_closed_is_one_line(monkeypatch):
    """`tinygen curate "Hi" <&-`: Python's sys.stdin is None, which readline failed on."""
    monkeypatch.setattr("sys.stdin", None)
    assert run(["curate", "Hi", "-k", "2"]) == (
        2, "", "tinygen: error: curate reads your choices from stdin, which is closed; run it on a "
               "terminal, or pipe the choices in\n")


def test_a_stream_piped_to_head_still_reports_its_seed(optimum_gpt2_dir):
    argv = ["Once", "--model", str(optimum_gpt2_dir), "--seed", "9"]
    code, out, err = run(argv, out=ClosedPipe())
    assert code == 0 and out == "Once" and err == "seed: 9\n"


def test_next_takes_a_context_as_generate_does(fields_model):
    """next_token_probs had no context (a TypeError), `tinygen next` no --context."""
    from tinygen import TextGenerator
    from tinygen.fields import FieldSchema

    gen = TextGenerator(fields_model)
    probs = gen.next_token_probs("It", top_n=3, context={"title": "Rain"})
    head, _ = FieldSchema.load(fields_model / "fields.json").prompt({"title": "Rain"})
    assert probs == gen.next_token_probs(head + "It", top_n=3)
    assert probs != gen.next_token_probs("It", top_n=3)
    code, out, err = run(["next", "It", "--model", str(fields_model), "--context", "title=Rain",
                          "--top-n", "3"])
    assert (code, err) == (0, "") and out == "".join(f"{p:.6f}\t{t!r}\n" for t, p in probs)
    assert run(["next", "It", "--model", str(fields_model), "--target", "body"])[2] == \
        "tinygen: error: --target needs --context\n"
