"""Scanner types by the name a policy gives in ``type:``."""

from __future__ import annotations

import typing

from guardrails._exceptions import ScannerError
from guardrails.scanners.base import Scanner

__all__ = ["register", "scanner_class", "scanner_types"]

_REGISTRY: dict[str, type[Scanner]] = {}


def register(cls: type[Scanner]) -> type[Scanner]:
    """Class decorator: make ``cls`` available to policies under its config's ``type`` literal."""
    annotation = cls.config_model.model_fields["type"].annotation
    names = typing.get_args(annotation)
    if typing.get_origin(annotation) is not typing.Literal or len(names) != 1:
        raise ScannerError(f"{cls.__name__}.config_model must declare `type: Literal['name']`, got {annotation!r}")
    name = names[0]
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ScannerError(f"scanner type {name!r} is already registered by {existing.__module__}.{existing.__name__}")
    _REGISTRY[name] = cls
    return cls


def scanner_class(name: str) -> type[Scanner]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ScannerError(f"unknown scanner type {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def scanner_types() -> dict[str, type[Scanner]]:
    return dict(_REGISTRY)
