"""User text (.txt: one document per blank-line-separated paragraph; .jsonl: a "text"
field per line) tokenized with SentencePiece (trained on the fly when no model is given) or
with a Hugging Face tokenizer.json (an imported model's own, as Granite's)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def read_documents(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        documents = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                record = json.loads(line)
                if "text" not in record:
                    raise ValueError(f"--data: {path}:{number} has no 'text' field")
                documents.append(record["text"])
        return documents
    return [block.strip() for block in text.split("\n\n") if block.strip()]


def tokenize_text(
    config: Any, run_dir: Path, data_dir: Path
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Token documents (each ending in end-of-document) and the metadata the loop needs.
    A tokenizer trained here is recorded relative to ``data_dir`` (where the metadata
    lives), so the run directory can be moved."""
    import sentencepiece as spm

    source = Path(config.data)
    documents = read_documents(source)
    if not documents:
        raise ValueError(f"--data: {source} has no text")
    model_path = config.path(config.tokenizer_model) if config.tokenizer_model else None
    if model_path is None:
        model_path = run_dir / "tokenizer.model"
        corpus = run_dir / "tokenizer_corpus.txt"
        corpus.write_text("\n".join(documents), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(model_path.with_suffix("")),
            vocab_size=config.vocab_size,
            model_type="bpe",
            character_coverage=1.0,
            hard_vocab_limit=False,
            minloglevel=2,
        )
    encode, vocab_size, eod = load_tokenizer(model_path)
    tokens = [np.array([*encode(doc), eod], dtype=np.int64) for doc in documents]
    meta = {
        "source": str(source),
        "tokenizer_model": os.path.relpath(model_path.resolve(), data_dir.resolve()),
        "vocab_size": vocab_size,
        "eod": eod,
        "num_tokens": int(sum(len(t) for t in tokens)),
    }
    return tokens, meta


def load_tokenizer(path: Path) -> tuple[Callable[[str], list[int]], int, int]:
    """(encode, vocabulary size, end-of-document id) of a SentencePiece .model or a
    Hugging Face tokenizer.json (its eos_token from tokenizer_config.json beside it)."""
    if path.name.endswith(".json"):
        return _hugging_face_tokenizer(path)
    import sentencepiece as spm

    try:
        processor = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError):
        raise ValueError(
            f"--tokenizer-model: {path} is not a SentencePiece model (give a .model file or "
            "a Hugging Face tokenizer.json)"
        ) from None
    eod = processor.eos_id() if processor.eos_id() >= 0 else processor.get_piece_size() - 1
    return processor.encode, processor.get_piece_size(), eod


def _hugging_face_tokenizer(path: Path) -> tuple[Callable[[str], list[int]], int, int]:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ValueError(
            f"--tokenizer-model: {path} needs the tokenizers package (pip install "
            "'megatron-power[hf]')"
        ) from None
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for a bad file
        raise ValueError(
            f"--tokenizer-model: {path} is not a Hugging Face tokenizer.json: "
            f"{str(error).splitlines()[0]}"
        ) from None
    settings = path.with_name("tokenizer_config.json")
    eos = json.loads(settings.read_text()).get("eos_token") if settings.is_file() else None
    if isinstance(eos, dict):
        eos = eos.get("content")
    eod = tokenizer.token_to_id(eos) if isinstance(eos, str) else None
    if eod is None:
        raise ValueError(
            f"--tokenizer-model: {path} has no eos_token in a tokenizer_config.json beside it "
            "(documents end with it)"
        )

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    return encode, tokenizer.get_vocab_size(with_added_tokens=True), eod
