"""Run a Megatron-LM script with megatron-power installed, without editing the tree.

    python -m megatron_power.launch pretrain_gpt.py --lr-decay-style power ...
    torchrun --nproc-per-node 8 -m megatron_power.launch pretrain_gpt.py ...
    srun ... python -m megatron_power.launch pretrain_gpt.py ...

The script's directory (the Megatron-LM tree) goes first on ``sys.path``, the hooks are
installed (megatron_power.megatron_lm.hooks), then the script runs as ``__main__``
with the remaining arguments, exactly as ``python pretrain_gpt.py ...`` would.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def _release_process_groups() -> None:
    """pretrain_gpt.py ends without destroy_process_group(); gloo's worker threads then
    die in interpreter finalization, which can abort a finished run (SIGABRT, "terminate
    called without an active exception", pytorch/pytorch#179291). Only after a clean end:
    a rank that failed must not wait in a collective teardown for the others."""
    torch = sys.modules.get("torch")
    if (
        torch is not None
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    ):
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        sys.stderr.write(
            "megatron_power.launch: error: give the Megatron-LM script first, e.g. "
            "python -m megatron_power.launch pretrain_gpt.py --lr-decay-style power ...\n"
        )
        raise SystemExit(2)
    script = Path(argv[0]).resolve()
    if not script.is_file():
        sys.stderr.write(f"megatron_power.launch: error: no such script: {argv[0]}\n")
        raise SystemExit(2)
    sys.path.insert(0, str(script.parent))
    from .megatron_lm.hooks import install

    install()
    sys.argv = [str(script), *argv[1:]]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:  # Megatron's --exit-interval / --exit-duration-in-mins
        if stop.code in (None, 0):
            _release_process_groups()
        raise
    _release_process_groups()


if __name__ == "__main__":
    main()
