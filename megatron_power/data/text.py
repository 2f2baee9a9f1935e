"""User text (.txt: one document per blank-line-separated paragraph; .jsonl: a "text"
field per line) tokenized with SentencePiece - trained on the fly when no model is given."""

from __future__ import annotations

import json
import os
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
    processor = spm.SentencePieceProcessor(model_file=str(model_path))
    eod = processor.eos_id() if processor.eos_id() >= 0 else processor.get_piece_size() - 1
    tokens = [np.array([*processor.encode(doc), eod], dtype=np.int64) for doc in documents]
    meta = {
        "source": str(source),
        "tokenizer_model": os.path.relpath(model_path.resolve(), data_dir.resolve()),
        "vocab_size": processor.get_piece_size(),
        "eod": eod,
        "num_tokens": int(sum(len(t) for t in tokens)),
    }
    return tokens, meta
