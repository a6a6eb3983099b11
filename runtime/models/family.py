"""Family descriptions from `configs/families/*.yaml`, validated when loaded.

A family YAML names the GGUF architecture strings it serves, where each hyperparameter lives in
the metadata, switches for the forward pass, and the expected tensors with shape expressions.
"""
from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import yaml

from ..paths import configs_dir

_SWITCH_CHOICES = {
    "norm": ("rms", "layer"),
    "activation": ("swiglu", "geglu", "gelu"),
    "rope_style": ("normal", "neox", "none"),
}
_BIN_OPS = {ast.Mult: operator.mul, ast.Add: operator.add, ast.Sub: operator.sub,
            ast.FloorDiv: operator.floordiv}


@dataclass(frozen=True)
class HParamSpec:
    name: str
    key: str
    default: Any = None
    default_from: str | None = None
    default_expr: str | None = None
    is_required: bool = True


@dataclass(frozen=True)
class TensorSpec:
    role: str  # e.g. "attn_q"
    name: str  # GGUF name, with "{i}" for the layer index in per-layer tensors
    shape: tuple[str, ...]  # expressions over hyperparameters (and `vocab`)
    is_optional: bool = False


@dataclass(frozen=True)
class FamilyConfig:
    family: str
    architectures: tuple[str, ...]
    module: str
    hparams: tuple[HParamSpec, ...]
    switches: Mapping[str, Any]
    global_tensors: tuple[TensorSpec, ...]
    layer_tensors: tuple[TensorSpec, ...]
    chat_template: str | None = None  # file in configs/chat_templates for GGUFs that carry none

    def __post_init__(self) -> None:
        if not self.architectures:
            raise ValueError(f"family {self.family}: no architectures listed")
        for switch, choices in _SWITCH_CHOICES.items():
            value = self.switches.get(switch)
            if value is not None and value not in choices:
                raise ValueError(f"family {self.family}: switch {switch}={value!r} not in {choices}")


def _parse_hparam(name: str, spec: Any) -> HParamSpec:
    if isinstance(spec, str):
        return HParamSpec(name=name, key=spec)
    has_default = any(k in spec for k in ("default", "default_from", "default_expr"))
    return HParamSpec(name=name, key=spec["key"], default=spec.get("default"),
                      default_from=spec.get("default_from"), default_expr=spec.get("default_expr"),
                      is_required=not has_default)


def _parse_tensors(section: Mapping[str, Any]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(role=role, name=spec["name"], shape=tuple(str(s) for s in spec["shape"]),
                   is_optional=bool(spec.get("optional", False)))
        for role, spec in section.items()
    )


def parse_family(data: Mapping[str, Any]) -> FamilyConfig:
    return FamilyConfig(
        family=data["family"],
        architectures=tuple(data["architectures"]),
        module=data.get("module", data["family"]),
        hparams=tuple(_parse_hparam(n, s) for n, s in data["hparams"].items()),
        switches=dict(data.get("switches", {})),
        global_tensors=_parse_tensors(data["tensors"].get("global", {})),
        layer_tensors=_parse_tensors(data["tensors"].get("layer", {})),
        chat_template=data.get("chat_template"),
    )


@lru_cache(maxsize=1)
def load_families() -> dict[str, FamilyConfig]:
    """All families keyed by the architecture strings they serve."""
    by_arch: dict[str, FamilyConfig] = {}
    for path in sorted((configs_dir() / "families").glob("*.yaml")):
        with open(path) as f:
            family = parse_family(yaml.safe_load(f))
        for arch in family.architectures:
            by_arch[arch] = family
    return by_arch


def family_for_architecture(architecture: str) -> FamilyConfig:
    families = load_families()
    if architecture not in families:
        supported = ", ".join(sorted(families))
        raise ValueError(f"unsupported model architecture {architecture!r}; supported: {supported}")
    return families[architecture]


def default_chat_template(architecture: str | None) -> str | None:
    """The family's own chat template (Jinja text) for a GGUF of `architecture` that carries no
    `tokenizer.chat_template`; None when the architecture is unknown or its family names none."""
    family = load_families().get(architecture or "")
    if family is None or not family.chat_template:
        return None
    return (configs_dir() / "chat_templates" / family.chat_template).read_text(encoding="utf-8")


def eval_expr(expr: str, names: Mapping[str, Any]) -> int:
    """Evaluate an integer expression over hyperparameter names (+ - * // and literals only)."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(f"unknown name {node.id!r} in expression {expr!r}")
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            return _BIN_OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"unsupported syntax in expression {expr!r}")

    return walk(ast.parse(expr, mode="eval"))


def resolve_hparams(family: FamilyConfig, architecture: str, metadata: Mapping[str, Any],
                    source: str) -> dict[str, Any]:
    """Read every hyperparameter from metadata, applying defaults in declaration order."""
    values: dict[str, Any] = {}
    for spec in family.hparams:
        key = spec.key.format(arch=architecture)
        if key in metadata:
            values[spec.name] = metadata[key]
        elif spec.default_from is not None:
            values[spec.name] = values[spec.default_from]
        elif spec.default_expr is not None:
            values[spec.name] = eval_expr(spec.default_expr, values)
        elif not spec.is_required:
            values[spec.name] = spec.default
        else:
            raise ValueError(f"{source}: metadata key {key!r} ({spec.name}) is missing")
    return values
