"""megatron-power: the Power LR scheduler, the WSD family and muP for Megatron-Core."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="megatron-power",
    version="0.1.0",
    description=(
        "Power learning-rate scheduler (arXiv 2408.13359), WSD family and muP for Megatron-Core"
    ),
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["megatron_power", "megatron_power.*"]),
    install_requires=[
        # The plugin's adapters support megatron-core 0.14 to 0.19.
        "megatron-core>=0.14,<0.20",
        "torch>=2.6",
        "numpy",
        "tqdm",
        "sentencepiece",
        "matplotlib>=3.8",
        "safetensors>=0.4",  # export-hf / import-hf
        "scipy>=1.10",  # confidence intervals of the power-law fit
    ],
    extras_require={
        "plots": ["matplotlib>=3.8"],
        # tokenizer.json for exported models; loading them in transformers
        "hf": ["transformers>=4.45", "protobuf"],
        "test": ["pytest>=8", "ruff>=0.6", "matplotlib>=3.8", "transformers>=4.45", "protobuf"],
    },
    entry_points={"console_scripts": ["megatron-power=megatron_power.cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
