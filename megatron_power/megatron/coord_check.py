"""Run the muP coordinate check on Megatron-Core GPT / MoE models (see mup/coord_check.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch


def record_activation_scales(model: torch.nn.Module) -> tuple[dict[str, float], list]:
    """Hooks that store mean |activation| of the embedding, every layer, every router's
    logits and experts' output, and the logits, into the returned dict on each forward."""
    scales: dict[str, float] = {}
    handles = []

    def keep(name: str, tensor_of: Callable[[Any, Any], torch.Tensor]) -> Callable:
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            scales[name] = tensor_of(module, (inputs, output)).detach().abs().float().mean().item()

        return hook

    def first(output: Any) -> torch.Tensor:
        return output[0] if isinstance(output, tuple) else output

    if getattr(model, "embedding", None) is not None:
        handles.append(
            model.embedding.register_forward_hook(keep("embedding", lambda m, io: first(io[1])))
        )
    for index, layer in enumerate(model.decoder.layers):
        number = layer.layer_number if hasattr(layer, "layer_number") else index + 1
        handles.append(
            layer.register_forward_hook(keep(f"layer{number}", lambda m, io: first(io[1])))
        )
        router = getattr(layer.mlp, "router", None)
        if router is not None:
            handles.append(
                router.register_forward_hook(
                    keep(f"router{number}", lambda m, io: io[0][0] @ m.weight.t())
                )
            )
            handles.append(
                layer.mlp.experts.register_forward_hook(
                    keep(f"experts{number}", lambda m, io: first(io[1]))
                )
            )
    if getattr(model, "output_layer", None) is not None:
        handles.append(
            model.output_layer.register_forward_hook(keep("logits", lambda m, io: first(io[1])))
        )
    return scales, handles


def coordinate_check(
    build: Callable[[int, int], tuple[torch.nn.Module, torch.optim.Optimizer]],
    widths: Sequence[int],
    seeds: Sequence[int],
    steps: int,
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> dict[str, dict[str, list[float]]]:
    """Mean |activation| per phase ("init", "trained"), module and width, averaged over seeds.

    ``build(width, seed)`` returns a model and its optimizer; ``batch(seed)`` returns
    (tokens, positions, attention_mask). Each model takes ``steps`` optimizer steps on
    its batch; "trained" is measured by a forward pass after them.
    """
    sums: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for width in widths:
        for seed in seeds:
            torch.manual_seed(seed)
            model, optimizer = build(width, seed)
            scales, handles = record_activation_scales(model)
            tokens, positions, mask = batch(seed)
            for step in range(steps):
                loss = model(tokens, positions, mask, labels=tokens).float().mean()
                if step == 0:
                    _accumulate(sums["init"], scales, width)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                model(tokens, positions, mask, labels=tokens)
            _accumulate(sums["trained"], scales, width)
            for handle in handles:
                handle.remove()
    return {
        phase: {
            module: [by_width[width] / len(seeds) for width in widths]
            for module, by_width in modules.items()
        }
        for phase, modules in sums.items()
    }


def _accumulate(target: dict[str, dict[int, float]], scales: dict[str, float], width: int) -> None:
    for module, value in scales.items():
        target[module][width] = target[module].get(width, 0.0) + value
