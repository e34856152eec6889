"""Shared fixtures: tiny tokenizers and tiny random causal LMs, built offline in seconds.

The models use a large init std so their logits are peaked: greedy parity tests
then compare real decisions rather than near-ties decided by float noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CORPUS = (
    "Once upon a time there was a little model that wanted to write stories. "
    "It read every book in the library, from the first page to the last. "
    "The quick brown fox jumps over the lazy dog. Naïve café owners serve crème brûlée — "
    "with emoji 🙂 and ünïcödé. "
    "To be, or not to be, that is the question. "
) * 20


def train_tokenizer(path: Path, vocab_size: int = 320, bos_eos: bool = False) -> Path:
    """A byte-level BPE tokenizer trained on CORPUS, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>"] if not bos_eos else ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS], trainer=trainer)
    if bos_eos:  # Llama style: the tokenizer prepends BOS itself
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def _save_hf_tokenizer(model_dir: Path, tokenizer_file: Path, **special) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), **special)
    fast.save_pretrained(model_dir)


def _sharpen(model, std: float) -> None:
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)


def build_tiny_gpt2(model_dir: Path, n_positions: int = 128) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok_file = train_tokenizer(model_dir / "tokenizer.json")
    vocab = json.loads(tok_file.read_text())["model"]["vocab"]
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(vocab), n_layer=2, n_head=4, n_embd=64, n_positions=n_positions,
        bos_token_id=0, eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    _sharpen(model, 0.3)
    model.save_pretrained(model_dir)
    _save_hf_tokenizer(model_dir, tok_file, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    return model_dir


def build_tiny_llama(model_dir: Path, max_positions: int = 128) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok_file = train_tokenizer(model_dir / "tokenizer.json", bos_eos=True)
    vocab = json.loads(tok_file.read_text())["model"]["vocab"]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in SmolLM2
        hidden_size=64, intermediate_size=128, max_position_embeddings=max_positions,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    _sharpen(model, 0.3)
    model.save_pretrained(model_dir)
    _save_hf_tokenizer(model_dir, tok_file, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return model_dir


def build_tiny_model(model_dir: Path, config_class: str, model_class: str, **options) -> Path:
    """Any transformers causal LM, 2 layers x 4 heads x 64, with the GPT-2 style tokenizer;
    `options` go to its config class (e.g. FalconConfig's num_kv_heads)."""
    import torch
    import transformers

    tok_file = train_tokenizer(model_dir / "tokenizer.json")
    vocab = json.loads(tok_file.read_text())["model"]["vocab"]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(
        vocab_size=len(vocab), num_hidden_layers=2, num_attention_heads=4, hidden_size=64,
        bos_token_id=0, eos_token_id=0, **options)
    model = getattr(transformers, model_class)(config).eval()
    _sharpen(model, 0.3)
    model.save_pretrained(model_dir)
    _save_hf_tokenizer(model_dir, tok_file, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    return model_dir


@pytest.fixture(scope="session")
def tiny_model():
    """build_tiny_model, for tests of architectures beyond GPT-2 and Llama."""
    return build_tiny_model


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_source_dir(request, tiny_gpt2_dir, tiny_llama_dir) -> Path:
    """Both architectures, for tests that must hold for each."""
    return {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[request.param]


def optimum_export(src: Path, out: Path) -> Path:
    """What `optimum-cli export onnx --task text-generation-with-past` writes, unchanged."""
    from optimum.exporters.onnx import main_export

    main_export(str(src), output=str(out), task="text-generation-with-past")
    return out


@pytest.fixture(scope="session")
def optimum_gpt2_dir(tiny_gpt2_dir, tmp_path_factory) -> Path:
    return optimum_export(tiny_gpt2_dir, tmp_path_factory.mktemp("optimum-gpt2"))


@pytest.fixture(scope="session")
def optimum_llama_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    return optimum_export(tiny_llama_dir, tmp_path_factory.mktemp("optimum-llama"))


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def optimum_dir(request, optimum_gpt2_dir, optimum_llama_dir) -> Path:
    return {"gpt2": optimum_gpt2_dir, "llama": optimum_llama_dir}[request.param]


def tinygen_export(src: Path, out: Path) -> Path:
    """What `tinygen-train export SRC OUT` writes (verification included)."""
    from tinygen_trainer.export import export_model

    return export_model(src, out)


@pytest.fixture(scope="session")
def fields_model(tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2, its tokenizer given the field tokens <|title|> and <|body|>, with fields.json."""
    import shutil

    from optimum.exporters.onnx import main_export
    from tokenizers import AddedToken, Tokenizer
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    from tinygen.manifest import Manifest, load_manifest

    src = tmp_path_factory.mktemp("fields-src") / "model"
    shutil.copytree(tiny_gpt2_dir, src)
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.add_special_tokens([AddedToken("<|title|>", special=True), AddedToken("<|body|>", special=True)])
    tok.save(str(src / "tokenizer.json"))
    PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"), eos_token="<|endoftext|>",
                            bos_token="<|endoftext|>").save_pretrained(src)
    model = GPT2LMHeadModel.from_pretrained(src)
    model.resize_token_embeddings(tok.get_vocab_size(with_added_tokens=True))
    model.save_pretrained(src)
    out = tmp_path_factory.mktemp("fields-model")
    main_export(str(src), output=str(out), task="text-generation-with-past")
    (out / "fields.json").write_text(json.dumps({"format_version": 1, "names": ["title", "body"]}))
    Manifest.from_json({**load_manifest(out).to_json(), "fields_file": "fields.json"}).save(out)
    return out


@pytest.fixture(scope="session")
def exported_gpt2_dir(tiny_gpt2_dir, tmp_path_factory) -> Path:
    return tinygen_export(tiny_gpt2_dir, tmp_path_factory.mktemp("exported-gpt2") / "model")


@pytest.fixture(scope="session")
def exported_llama_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    return tinygen_export(tiny_llama_dir, tmp_path_factory.mktemp("exported-llama") / "model")
