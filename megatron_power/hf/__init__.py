"""Hugging Face Granite / GraniteMoE export and import (``megatron-power export-hf``)."""
