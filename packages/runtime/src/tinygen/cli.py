"""`tinygen`: generate text from the command line.

    tinygen "Once upon a time"                 # same as: tinygen generate "Once upon a time"
    tinygen generate "Hello" -n 5 --seed 42 --to-file texts.txt
    tinygen curate "Once upon a time" -k 3 --save story.json
    tinygen info --model DIR
    tinygen serve --model DIR --port 8000       # OpenAI-compatible server (needs tinygen[server])

Library errors (TinygenError) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from typing import TextIO

from . import __version__
from .errors import ModelFormatError, TinygenError, respell
from .help_format import ArgumentParser, HelpFormatter

COMMANDS = ("generate", "curate", "next", "info", "serve")
BOLD, RESET = "\033[1m", "\033[0m"
PROB_COLOURS = (196, 202, 214, 226, 154, 46)  # xterm-256: red (unlikely) .. green (likely)


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="exported model directory (default: the embedded tiny model)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--replacements", metavar="JSON", help="replacement-token config to use instead of the model's")


def _add_sampling_arguments(p: argparse.ArgumentParser, prompt_from_stdin: bool = True) -> None:
    from .config import GenerationConfig

    d = GenerationConfig()
    p.add_argument("prompt", nargs="?", default="",
                   help="text to continue (- reads it from stdin)" if prompt_from_stdin else "text to continue")
    _add_model_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"tokens to generate per text (default: the model's, else {d.max_new_tokens})")
    p.add_argument("--min-new-tokens", type=int, default=None,
                   help="no end of text before this many tokens (stop strings still end it)")
    drawing = p.add_mutually_exclusive_group()
    drawing.add_argument("--greedy", action="store_true", help="always pick the most likely token")
    drawing.add_argument("--sample", action="store_true",
                         help="draw tokens at random (the default, unless the model's settings "
                              "say greedy)")
    p.add_argument("--temperature", type=float, default=None, help=f"default {d.temperature}; 0 is greedy")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--min-p", type=float, default=None, help="drop tokens below min-p x the top probability")
    p.add_argument("--typical-p", type=float, default=None, help="locally typical sampling mass in (0, 1]")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeats")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None, help="never repeat n-grams of this size")
    stops = p.add_mutually_exclusive_group()
    stops.add_argument("--stop", action="append", default=None, metavar="TEXT",
                       help=r"end a text at this string (repeatable; \n, \t, \r and \\ are "
                            "escapes; instead of the model's)")
    stops.add_argument("--no-stop", action="store_true",
                       help="no stop strings, not even the model's")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the first text; text i uses seed+i (default: drawn and reported)")
    p.add_argument("--exclude-chars", default=None, metavar="CHARS",
                   help=r"no generated text contains any of these characters (\n, \t, \r, \\ "
                        "as for --stop)")
    p.add_argument("--exclude", action="append", default=None, metavar="TOKEN",
                   help="never generate a token with exactly this text (repeatable; escapes as "
                        "for --stop)")
    p.add_argument("--no-slide", action="store_true",
                   help="stop at the model's window instead of sliding past it")


def _add_generate_arguments(p: argparse.ArgumentParser) -> None:
    _add_sampling_arguments(p)
    p.add_argument("-n", type=int, default=1, help="how many texts to generate")
    p.add_argument("--show-probs", action="store_true",
                   help="colour each token by its probability (on a terminal)")
    p.add_argument("--batch-size", type=int, default=16, help="texts decoded together")
    p.add_argument("--to-file", metavar="PATH",
                   help="write the texts, each with its seed, to this file (its settings go to PATH.tinygen.json)")
    p.add_argument("--resume", action="store_true",
                   help="with --to-file: continue an interrupted file, with the settings it was started with")
    _add_context_arguments(p)
    p.add_argument("--dedupe", type=float, default=None, metavar="SHARE",
                   help="drop texts sharing at least this share of 8-grams with an earlier text")
    p.add_argument("--dedupe-against", metavar="CACHE",
                   help="with --dedupe: also drop texts copying this token cache (training data)")


def _add_context_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--context", action="append", default=None, metavar="FIELD=VALUE",
                   help="a known field, for models trained on records with fields (repeatable; "
                        "a value with commas is a list)")
    p.add_argument("--target", default=None, metavar="FIELD",
                   help="with --context: the field to generate (default: the last one not given)")


def _add_curate_arguments(p: argparse.ArgumentParser) -> None:
    _add_sampling_arguments(p, prompt_from_stdin=False)  # stdin gives the choices
    p.add_argument("-k", type=int, default=3, help="continuations to choose from each round")
    p.add_argument("--save", metavar="JSON",
                   help="save the session (text, choices, seeds) here after every round; a session "
                        "saved there before goes on")


class _Parser(ArgumentParser):
    """The CLI's parser: its errors also say how to give a prompt that starts with '-', which
    argparse reads as an option (`tinygen -hello` was "argument -h/--help: ignored explicit
    argument 'ello'")."""

    dashed: str | None = None  # for this command line, set by main(): the way to write it

    def error(self, message: str):
        if _Parser.dashed is not None:
            message += f"; a prompt that starts with '-' goes after '--', behind the options: " \
                       f"{_Parser.dashed}"
        elif message.startswith("unrecognized arguments: ") and self.prog.split()[-1] in PROMPTED \
                and not message.split(": ", 1)[1].startswith("-"):
            # `tinygen Once upon a time` said only "unrecognized arguments: upon a time".
            message += ("; a prompt of several words goes in quotes, as one argument: "
                        "\"Once upon a time\"")
        super().error(message)


PROMPTED = ("generate", "next", "curate")  # the commands that take a prompt


def _dashed_prompt(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """How to write the first argument before '--' that starts with one '-' (a mistyped
    --option is not a prompt) but is no option of its command, if that command takes a prompt."""
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    command = argv[0] if argv else None
    if command not in ("generate", "next", "curate"):
        return None
    known = commands.choices[command]._option_string_actions
    for arg in argv[1:argv.index("--") if "--" in argv else len(argv)]:
        short = known.get(arg[:2])  # -n2 is -n with its value; -hello is no -h (a flag)
        if arg.startswith("-") and not arg.startswith("--") and arg != "-" and " " not in arg \
                and arg not in known and not (short and short.nargs != 0) and not _is_number(arg):
            named = "" if command == "generate" else f" {command}"
            return f"tinygen{named} [OPTIONS] -- {shlex.quote(arg)}"
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinygen", description="Generate text offline with a small language model.")
    parser.add_argument("--version", action="version", version=f"tinygen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = HelpFormatter
    _add_generate_arguments(sub.add_parser("generate", help="generate text (the default command)", formatter_class=fmt))
    probs = sub.add_parser("next", help="the most likely next tokens after a prompt, with probabilities",
                           formatter_class=fmt)
    probs.add_argument("prompt", help="text whose next token to predict (- reads it from stdin)")
    _add_model_arguments(probs)
    probs.add_argument("--top-n", type=int, default=10, help="how many tokens to list")
    _add_context_arguments(probs)
    _add_curate_arguments(sub.add_parser("curate", help="pick, reroll or edit continuations interactively",
                                         formatter_class=fmt))
    info = sub.add_parser("info", help="describe a model directory", formatter_class=fmt)
    _add_model_arguments(info)
    _add_serve_arguments(sub.add_parser("serve", help="serve the model over HTTP (OpenAI API, playground)",
                                        formatter_class=fmt))
    return parser


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    from .serving.settings import ServerSettings

    d = ServerSettings()
    _add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (another than loopback exposes the server)")
    p.add_argument("--port", type=int, default=8000, help="port to bind")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $TINYGEN_API_KEY, else no key)")
    p.add_argument("--model-name", default=None, help="the model id clients use (default: the model folder's name; the "
                        "embedded model's is tinygen-tinymodel)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (https://app.example.com; * for any) call the API "
                        "and open the websocket (repeatable; default: only the server's own pages)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="sequences decoded together")
    p.add_argument("--max-waiting", type=int, default=d.max_waiting,
                   help="requests queued for a place; more get 429")
    p.add_argument("--max-tokens-limit", type=int, default=d.max_tokens_limit, help="largest max_tokens allowed")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help="largest request body or websocket message")


def _options(args: argparse.Namespace) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        do_sample=False if args.greedy else True if args.sample else None,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        typical_p=args.typical_p, repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        stop=[unescape(s) for s in args.stop] if args.stop else [] if args.no_stop else None,
        exclude_chars=unescape(args.exclude_chars) if args.exclude_chars is not None else None,
        exclude_strings=[unescape(s) for s in args.exclude] if args.exclude else None,
        slide_window=False if args.no_slide else None,
        return_probs=True if getattr(args, "show_probs", False) else None,
    )


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    r"""The shell gives `--stop "\n\n"` as backslash-n characters: make \n, \t, \r and \\ what they say.

    Other backslashes are left as they are, and so is any other text (unicode_escape
    would garble non-ASCII characters).
    """
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def _generator(args):
    from .generator import TextGenerator

    return TextGenerator(args.model, device=args.device, threads=args.threads,
                         replacements=args.replacements)


def _coloured(piece) -> str:
    """Colour a streamed piece by its least likely token: red (unlikely) to green (likely)."""
    if not piece.token_probs:
        return str(piece)
    prob = min(tp.prob for tp in piece.token_probs)
    colour = PROB_COLOURS[min(len(PROB_COLOURS) - 1, int(prob * len(PROB_COLOURS)))]
    return f"\033[38;5;{colour}m{piece}{RESET}"


def run_generate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.n < 1:
        raise TinygenError(f"-n must be >= 1, got {args.n}")
    if args.resume and not args.to_file:
        raise TinygenError("--resume needs --to-file")
    if args.batch_size < 1:
        raise TinygenError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.dedupe_against and args.dedupe is None:
        raise TinygenError("--dedupe-against needs --dedupe SHARE")
    if args.dedupe is not None and not 0 < args.dedupe <= 1:
        raise TinygenError(f"--dedupe must be a share in (0, 1], got {args.dedupe}")
    if args.dedupe is not None and args.to_file:
        raise TinygenError("--dedupe does not work with --to-file (texts are written as they are made); "
                           "drop one of them")
    context = _context(args)
    streamed = args.n == 1 and args.dedupe is None and not args.to_file
    if args.show_probs and not streamed:
        raise TinygenError("--show-probs works only for one streamed text: drop it, or drop -n, "
                           "--dedupe and --to-file")
    gen = _generator(args)
    options = _options(args)
    if context is not None:
        options.update(context=context, target=args.target)
    tty = out.isatty()
    # NO_COLOR (no-color.org) and TERM=dumb drop the bold prompt; --show-probs, asked for by
    # name, still colours.
    bold = tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    shown_prompt = f"{BOLD}{args.prompt}{RESET}" if bold else args.prompt
    if args.to_file:
        try:
            written = gen.generate_to_file(args.to_file, args.prompt, n=args.n, seed=args.seed,
                                           batch_size=args.batch_size, resume=args.resume,
                                           progress=err.isatty(), **options)
        except KeyboardInterrupt:
            err.write(f"{args.to_file} keeps the texts it finished; the same command with "
                      f"--resume goes on from there\n")
            raise
        if written.written:
            more = f" ({written.texts} in all)" if written.texts != written.written else ""
            err.write(f"wrote {_count(written.written, 'text')} to {args.to_file}{more}\n")
        else:
            err.write(f"{args.to_file} already holds {written.texts} texts (-n {args.n}): nothing to do\n")
        return 0
    if streamed:
        stream = gen.stream(args.prompt, seed=args.seed, **options)
        out.write(shown_prompt)
        try:
            for piece in stream:
                out.write(_coloured(piece) if args.show_probs and tty else piece)
                out.flush()
        finally:  # also when interrupted: the line ends, and the seed remakes the text
            try:
                out.write("\n")
            finally:  # also when the reader left (`| head`): the seed of what it saw
                if stream.seed is not None:
                    err.write(f"seed: {stream.seed}\n")
        return 0
    if args.dedupe is None:
        return _print_as_made(gen, args, options, shown_prompt, out, err)
    texts = gen.generate(args.prompt, n=args.n, seed=args.seed, batch_size=args.batch_size,
                         progress=err.isatty(), dedupe=args.dedupe, dedupe_against=args.dedupe_against,
                         **options)
    for _, duplicate in texts.dropped:
        err.write(f"dropped: {duplicate.reason}\n")
    for i, text in enumerate(texts):
        _print_text(out, text, shown_prompt, first=i == 0)
    seeds = [t.seed for t in texts if t.seed is not None]
    if seeds:
        _report_seeds(err, seeds[0], seeds[-1])
    return 0


def _print_as_made(gen, args: argparse.Namespace, options: dict, shown_prompt: str, out: TextIO,
                   err: TextIO) -> int:
    """-n texts on stdout, each batch's as soon as it is made: a long run shows them as it
    goes, and Ctrl-C keeps those made (their seeds reported). Text i has seed first + i, as
    one generate call gives them."""
    # A bar on the terminal the texts go to would be torn by them: there they are the progress.
    from .generator import progress_bar

    bar = progress_bar(args.n) if err.isatty() and not out.isatty() else None
    seed, first, made = args.seed, None, 0
    try:
        for start in range(0, args.n, args.batch_size):
            texts = gen.generate(args.prompt, n=min(args.batch_size, args.n - start), seed=seed,
                                 batch_size=args.batch_size, **options)
            try:
                for text in texts:
                    _print_text(out, text, shown_prompt, first=made == 0)
                    made += 1
                out.flush()
            except BrokenPipeError:  # the reader left (`| head`) with some of these: their seeds
                first = texts[0].seed if first is None else first
                raise
            if texts[0].seed is not None:  # drawn by the first batch, unless given
                first = texts[0].seed if first is None else first
                seed = first + made
            if bar is not None:
                bar.update(len(texts))
    finally:
        if bar is not None:
            bar.close()
        if first is not None and made:
            _report_seeds(err, first, first + made - 1)
    return 0


def _print_text(out: TextIO, text: str, shown_prompt: str, first: bool) -> None:
    from .generator import DELIMITER

    if not first:
        out.write(f"{DELIMITER}\n")
    out.write(f"{shown_prompt}{text}\n")


def _report_seeds(err: TextIO, first: int, last: int) -> None:
    err.write(f"seeds: {first}..{last}\n" if last > first else f"seed: {first}\n")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def run_curate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .curate import run_curate as curate

    if sys.stdin is None:  # started with `<&-`: readline would fail on None, after the model loads
        raise TinygenError("curate reads your choices from stdin, which is closed; run it on a "
                           "terminal, or pipe the choices in")
    session = curate(_generator(args), args.prompt, args.k, args.seed, _options(args), args.save,
                     sys.stdin, out)
    if args.save:
        err.write(f"saved {_count(len(session.rounds), 'round')} to {args.save}\n")
    return 0


def _context(args: argparse.Namespace) -> dict | None:
    """--context title=Rain --context keywords=wet,grey -> {"title": "Rain", "keywords": ["wet", "grey"]}"""
    if not args.context:
        if args.target:
            raise TinygenError("--target needs --context")
        return None
    context = {}
    for item in args.context:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise TinygenError(f"--context takes FIELD=VALUE, got {item!r}")
        if name in context:  # the last would silently replace the others
            raise TinygenError(f"--context gives the field {name!r} twice; give it once (a value "
                               f"with commas is a list: {name}=a,b)")
        context[name] = [v.strip() for v in value.split(",")] if "," in value else value
    return context


def _stdin_prompt() -> str:
    """`echo "Once upon a time" | tinygen -`: the whole input, less the newline echo ends it
    with; a file saved on Windows gives the same prompt (no byte-order mark, LF for CRLF)."""
    if sys.stdin is None:
        raise TinygenError("the prompt - reads stdin, which is closed; give the prompt as an argument")
    try:
        text = sys.stdin.read()
    except UnicodeDecodeError as exc:
        raise TinygenError(f"the prompt on stdin is not UTF-8 text (byte {exc.start}); give it "
                           f"as UTF-8") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    return text[:-1] if text.endswith("\n") else text


def run_next(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.top_n < 1:
        raise TinygenError(f"--top-n must be >= 1, got {args.top_n}")
    context = _context(args)
    for text, prob in _generator(args).next_token_probs(args.prompt, top_n=args.top_n,
                                                        context=context, target=args.target):
        out.write(f"{prob:.6f}\t{text!r}\n")
    return 0


def run_info(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import json

    import numpy as np

    gen = _generator(args)
    # The KV buffers' type is the graph's (float32, or int8 from `export --kv-cache int8`).
    kv = np.dtype(gen.model.kv_dtype).name
    info = {"model_dir": str(gen.model_dir), "device": gen.device, "kv_buffers": kv, **gen.manifest.to_json()}
    if args.replacements:  # the one in use, not the model's own
        info["replacements_file"] = args.replacements
    out.write(json.dumps(info, indent=2) + "\n")
    return 0


def run_serve(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .serving.server import listen, require_server_extra, serve
    from .serving.settings import ServerSettings

    require_server_extra()
    # An empty --api-key (`--api-key "$KEY"` with KEY unset) is refused by validated(), not
    # taken as no key: only leaving the option out serves without authentication. So is an
    # empty TINYGEN_API_KEY (`-e TINYGEN_API_KEY=$KEY` in a container, KEY unset).
    api_key = args.api_key
    if api_key is None and "TINYGEN_API_KEY" in os.environ:
        api_key = os.environ["TINYGEN_API_KEY"]
        if not api_key.strip():
            raise TinygenError("TINYGEN_API_KEY is set but empty; set it to the key, or unset it "
                               "to serve without authentication")
    settings = ServerSettings(
        model_name=args.model_name, api_key=api_key, cors_origins=tuple(args.cors_origin),
        max_batch=args.max_batch, max_waiting=args.max_waiting, max_tokens_limit=args.max_tokens_limit,
        max_body_bytes=args.max_body_bytes).validated()
    sock = listen(args.host, args.port)  # before the model loads: a taken port fails at once
    try:
        serve(_generator(args), settings, host=args.host, port=args.port, err=err, sock=sock)
    finally:
        sock.close()
    return 0


# Options the library names as Python does, as this command line spells them (errors.respell):
# the library's messages reach the user here, who typed flags.
FLAGS = {
    "max_new_tokens": "--max-new-tokens", "min_new_tokens": "--min-new-tokens",
    "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
    "typical_p": "--typical-p", "repetition_penalty": "--repetition-penalty",
    "no_repeat_ngram_size": "--no-repeat-ngram-size", "stop": "--stop", "seed": "--seed",
    "exclude_chars": "--exclude-chars", "exclude_strings": "--exclude",
    "do_sample=False": "--greedy", "slide_window=False": "--no-slide", "resume=True": "--resume",
    "batch_size": "--batch-size", "dedupe": "--dedupe", "dedupe_against": "--dedupe-against",
    "top_n": "--top-n", "threads": "--threads", 'device="cpu"': "--device cpu",
}


def _as_typed(exc: TinygenError, argv: list[str]) -> str:
    """The library names options as Python does (top_p must be ..., pass resume=True): name
    them as the command line does (--top-p, --resume). Any other "NAME must" is named as the
    user typed it (--max-batch) where the command line has that flag. A model file's errors
    name its own keys (tinygen.json's 'generation': top_p ...), which stay as they are."""
    message = str(exc)
    if isinstance(exc, ModelFormatError):
        return message
    message = respell(message, FLAGS)
    name = re.match(r"[a-z][a-z_]*(?= must )", message)  # a value's rule, not "model ... not found"
    if name:
        flag = "--" + name[0].replace("_", "-")
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            return flag + message[name.end():]
    return message


def main(argv: list[str] | None = None, out: TextIO = None, err: TextIO = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    if out is None:  # started with `>&-`: print() would fail on None
        if err is not None:
            err.write("tinygen: error: standard output is closed; redirect it to a file or /dev/null\n")
        return 2
    if err is None:  # `2>&-`: the texts still go out; what stderr would say is dropped
        err = open(os.devnull, "w")
    argv = list(sys.argv[1:] if argv is None else argv)
    # A bare prompt means `generate`: `tinygen "Once upon a time"`.
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "generate")
    try:
        # Inside the try: numpy and onnxruntime load here, the first half second a Ctrl-C hits.
        parser = build_parser()
        _Parser.dashed = _dashed_prompt(parser, argv)
        try:
            args = parser.parse_args(argv)
        finally:  # for this command line only
            _Parser.dashed = None
        _check_paths(args)
        if args.command == "curate" and args.prompt == "-":
            raise TinygenError("curate reads your choices from stdin, so its prompt cannot come "
                               "from there: give the prompt as an argument")
        if args.command in ("generate", "next") and args.prompt == "-":
            args.prompt = _stdin_prompt()
        run = {"info": run_info, "curate": run_curate, "serve": run_serve,
               "next": run_next}.get(args.command, run_generate)
        return run(args, out, err)
    except TinygenError as exc:
        err.write(f"tinygen: error: {_as_typed(exc, argv)}\n")
        return 2
    except KeyboardInterrupt:
        err.write("tinygen: interrupted\n")
        return 130
    except BrokenPipeError:  # `tinygen ... | head`
        return 0
    except OSError as exc:  # writing the texts failed: `> /dev/full`, a disk that filled up
        if exc.filename is not None:
            raise  # not the output: a file of ours, shown whole
        err.write(f"tinygen: error: cannot write the output: {exc.strerror or exc}\n")
        return 2


def _check_paths(args: argparse.Namespace) -> None:
    """An empty path would quietly mean the current folder, or no file at all."""
    for name in ("model", "replacements", "to_file", "save", "dedupe_against"):
        if getattr(args, name, None) == "":
            raise TinygenError(f"--{name.replace('_', '-')} needs a path, got an empty string")


if __name__ == "__main__":
    sys.exit(main())
