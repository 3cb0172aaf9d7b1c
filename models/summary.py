"""Per-stage summary of a registered model.

python -m models.summary efficient_resnet
python -m models.summary --list
"""

from __future__ import annotations

import argparse
import sys

import torch

from models.budget import DEFAULT_BUDGET, count_params, trainable_params
from models.registry import MODELS, get_arch, list_models
from models.resnet import ResNet


def summary_rows(name: str) -> list[tuple[str, str, int]]:
    """(part, output shape, parameters) for the stem, each stage and the head."""
    arch = get_arch(name)
    with torch.device("meta"):
        model = ResNet(arch)
        x = torch.empty(1, arch.in_channels, 32, 32)
        rows = []
        x = model.stem(x)
        rows.append(("stem", tuple(x.shape[1:]), trainable_params(model.stem)))
        for i, (spec, stage) in enumerate(zip(arch.stages, model.stages, strict=True)):
            x = stage(x)
            label = f"stage {i} ({spec.blocks}x{spec.channels}, stride {spec.stride})"
            rows.append((label, tuple(x.shape[1:]), trainable_params(stage)))
        head_modules = [model.final_norm, model.transformer, model.classifier]
        logits = model(torch.empty(1, arch.in_channels, 32, 32))
        rows.append(
            ("head", tuple(logits.shape[1:]), sum(trainable_params(m) for m in head_modules))
        )
    return [(part, "x".join(map(str, shape)), params) for part, shape, params in rows]


def format_summary(name: str) -> str:
    rows = summary_rows(name)
    total = sum(p for _, _, p in rows)
    width = max(len(r[0]) for r in rows)
    lines = [f"{name}: {MODELS.describe(name)}", ""]
    lines.append(f"{'part':<{width}}  {'output':>10}  {'params':>11}")
    lines += [f"{part:<{width}}  {shape:>10}  {params:>11,}" for part, shape, params in rows]
    lines.append(f"{'total':<{width}}  {'':>10}  {total:>11,}")
    budget_note = "within" if total <= DEFAULT_BUDGET else "OVER"
    lines.append(f"{budget_note} the {DEFAULT_BUDGET:,}-parameter budget")
    return "\n".join(lines)


def format_model_list() -> str:
    names = list_models()
    width = max(map(len, names))
    return "\n".join(
        f"{n:<{width}}  {count_params(get_arch(n)):>10,}  {MODELS.describe(n)}" for n in names
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m models.summary", description=__doc__
    )
    parser.add_argument("name", nargs="?", help="registered model name")
    parser.add_argument("--list", action="store_true", help="list every registered model")
    args = parser.parse_args(argv)
    if args.list:
        print(format_model_list())
        return 0
    if not args.name:
        parser.error("give a model NAME or --list")
    if args.name not in list_models():
        print(
            f"error: unknown model {args.name!r}; registered models: {', '.join(list_models())}",
            file=sys.stderr,
        )
        return 2
    print(format_summary(args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
