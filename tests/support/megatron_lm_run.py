"""Run a real Megatron-LM ``pretrain_gpt.py`` on CPU and record what Megatron applied.

    python tests/support/megatron_lm_run.py RECORD.json launcher TREE/pretrain_gpt.py FLAGS...
    python tests/support/megatron_lm_run.py RECORD.json patched  TREE/pretrain_gpt.py FLAGS...

``launcher`` goes through ``python -m megatron_power.launch`` (megatron_power.launch.main);
``patched`` runs the script as ``python pretrain_gpt.py`` would, in a tree that
patches/apply.py has patched. One process per rank (torchrun sets RANK/WORLD_SIZE).

Recorded on rank 0, per iteration, from Megatron's own objects around its
``train_step``: every param group's ``lr``, ``max_lr``, ``min_lr``, ``eps`` and
parameter names, the lm loss Megatron reports, the global batch size; before the first
step, every parameter's std, and the forward multipliers measured on the live model (a
module called with and without its forward hooks).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _unwrap(module):
    while hasattr(module, "module"):
        module = module.module
    return module


def _first_output(value):
    return value[0] if isinstance(value, tuple) else value


def _measured_multipliers(model) -> dict[str, float]:
    """output(with hooks) / output(without) for the modules muP scales, on the live model."""
    import torch

    ratios: dict[str, float] = {}
    model.eval()  # no dropout while measuring
    embedding = getattr(model, "embedding", None)
    if embedding is not None:
        ids = torch.arange(8).reshape(1, 8) % model.config.hidden_size
        position = torch.arange(8).reshape(1, 8)
        with torch.no_grad():
            hooked = embedding(input_ids=ids, position_ids=position)
            plain = embedding.forward(input_ids=ids, position_ids=position)
        ratios["embedding"] = float((hooked.norm() / plain.norm()).item())
    output = getattr(model, "output_layer", None)
    if output is not None:
        x = torch.randn(4, 1, model.config.hidden_size)
        weight = None
        if getattr(model, "share_embeddings_and_output_weights", False):
            weight = model.shared_embedding_or_output_weight()
        with torch.no_grad():
            hooked = _first_output(output(x, weight=weight))
            plain = _first_output(output.forward(x, weight=weight))
        ratios["output_layer"] = float((hooked.norm() / plain.norm()).item())
    layer = model.decoder.layers[0]
    x = torch.randn(4, 1, model.config.hidden_size)
    with torch.no_grad():
        hooked = _first_output(layer.mlp(x))
        plain = _first_output(layer.mlp.forward(x))
    ratios["mlp"] = float((hooked.norm() / plain.norm()).item())
    causal = torch.ones(1, 1, 4, 4, dtype=torch.bool).triu(1)  # True: masked out
    with torch.no_grad():
        hooked = _first_output(layer.self_attention(x, attention_mask=causal))
        plain = _first_output(layer.self_attention.forward(x, attention_mask=causal))
    ratios["self_attention"] = float((hooked.norm() / plain.norm()).item())
    model.train()
    return ratios


class Recorder:
    """Wraps ``megatron.training.training.train_step``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []
        self.model_report: dict | None = None
        self.names: dict[int, str] = {}

    def install(self) -> None:
        import megatron.training.training as training

        original = training.train_step
        signature = inspect.signature(original)
        recorder = self

        def train_step(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            model = bound.arguments["model"]
            optimizer = bound.arguments["optimizer"]
            if recorder.model_report is None:
                recorder.names = {id(p): n for chunk in model
                                  for n, p in _unwrap(chunk).named_parameters()}  # fmt: skip
                recorder.model_report = recorder.report_model(model, optimizer)
            result = original(*args, **kwargs)
            recorder.record(result, optimizer)
            return result

        training.train_step = train_step

    def report_model(self, model_chunks, optimizer) -> dict:
        model = _unwrap(model_chunks[0])
        stds = {name: float(p.detach().float().std().item()) for name, p in model.named_parameters()
                if p.numel() > 1}  # fmt: skip
        return {
            "param_std": stds,
            "multipliers": _measured_multipliers(model),
            "mup": repr(getattr(model, "_megatron_power_mup", None)),
            "softmax_scale": model.config.softmax_scale,
        }

    def record(self, result, optimizer) -> None:
        from megatron.training.global_vars import get_args

        args = get_args()
        loss_dict = result[0] if isinstance(result, tuple) else result
        loss = None
        if loss_dict:
            value = loss_dict.get("lm loss")
            if value is not None:
                if isinstance(value, tuple | list):  # (sum, count) on 0.16+
                    value = value[0] / value[1]
                loss = float(value.item() if hasattr(value, "item") else value)
        names = self.names
        groups = []
        for group in self._param_groups(optimizer):
            groups.append({
                "lr": group["lr"], "max_lr": group.get("max_lr"), "min_lr": group.get("min_lr"),
                "eps": group.get("eps"), "lr_mult": group.get("lr_mult", 1.0),
                "params": [names.get(id(p), "?") for p in group["params"]],
            })  # fmt: skip
        self.rows.append({
            "iteration": len(self.rows) + 1 + getattr(self, "start_iteration", 0),
            "loss": loss,
            "global_batch_size": _global_batch_size(args),
            "groups": groups,
        })  # fmt: skip

    def _param_groups(self, optimizer):
        inner = getattr(optimizer, "chained_optimizers", None) or [optimizer]
        groups = []
        for opt in inner:
            groups.extend(getattr(opt, "optimizer", opt).param_groups)
        return groups

    def write(self) -> None:
        data = {"rows": self.rows, "model": self.model_report}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)


def _global_batch_size(args) -> int:
    from megatron.core.num_microbatches_calculator import get_current_global_batch_size

    try:
        return int(get_current_global_batch_size())
    except Exception:  # older calculators
        return int(args.global_batch_size)


def main() -> None:
    record_path, route, script, *flags = sys.argv[1:]
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    script_path = Path(script).resolve()
    sys.path.insert(0, str(script_path.parent))
    sys.path.insert(1, str(REPO))
    from tests.support.cpu_shims import install_megatron_lm_cpu_shims

    install_megatron_lm_cpu_shims()
    recorder = Recorder(Path(record_path))
    recorder.install()
    rank = int(os.environ.get("RANK", "0"))
    try:
        if route == "launcher":
            from megatron_power.launch import main as launch

            launch([str(script_path), *flags])
        elif route == "patched":
            import runpy

            sys.argv = [str(script_path), *flags]
            runpy.run_path(str(script_path), run_name="__main__")
        else:
            raise SystemExit(f"megatron_lm_run: unknown route {route!r}")
    finally:
        if rank == 0 and (recorder.rows or recorder.model_report):
            recorder.write()


if __name__ == "__main__":
    main()
