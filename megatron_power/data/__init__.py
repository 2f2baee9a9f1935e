"""Training data that ships with the package: a synthetic Markov language with a known
entropy (:mod:`.markov`) and user text tokenized with SentencePiece (:mod:`.text`), both
written as Megatron-Core indexed datasets and read through megatron.core.datasets."""
