"""Policies: YAML files validated by pydantic, with errors that name the file, line, column, key and the fix.

A policy says which scanners run on the input and output stages, with their thresholds, actions, roles, timeouts
and ``on_error``; what refusal text a blocked request gets; the limits on request size; and which named routes
(tenants) select other policy files. ``extends: other.yaml`` inherits another file: mappings merge key by key, the
child winning; scanner lists merge by scanner id (a child entry with an inherited id overrides that entry's keys,
``enabled: false`` switches it off, a new id is appended); other lists are replaced. ``routes`` are read from the
policy a pipeline is built from only.

Every loaded policy carries ``hash``: the SHA-256 of its resolved, validated content (after inheritance), so two
files that mean the same thing hash the same and any change that matters changes it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pydantic_core
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model, field_validator

from guardrails._exceptions import PolicyError
from guardrails.audit.settings import AuditSettings, JSONLSinkSettings, SQLiteSinkSettings
from guardrails.scanners import registry
from guardrails.scanners.base import ScannerConfig

__all__ = ["Policy", "load_policy", "load_routes", "resolve_policy_path", "builtin_policies", "policy_reference"]

MAX_POLICY_BYTES = 1_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Refusal(_Strict):
    """Text returned instead of a blocked exchange."""

    input: str = Field(default="Sorry, I can't help with that request.", description="Reply when the input is blocked.")
    output: str = Field(
        default="Sorry, I can't share that response.", description="Reply when the response is blocked."
    )


class Limits(_Strict):
    """Requests over these limits are blocked before any scanner runs."""

    max_input_chars: int = Field(default=200_000, gt=0, description="Total characters over all messages.")
    max_messages: int = Field(default=256, gt=0, description="Messages in one request.")
    max_output_chars: int = Field(default=1_000_000, gt=0, description="Characters of one response.")


class StreamSettings(_Strict):
    """How a streamed response is moderated as it arrives (each character is scanned a bounded number of times)."""

    check_every: int = Field(default=256, gt=0, description="Characters of new text that trigger a scan.")
    overlap: int = Field(default=128, ge=0, description="Characters of released text rescanned for context.")
    holdback: int = Field(
        default=64,
        ge=0,
        description="Characters kept unreleased after a scan, so a match still being written is "
        "never released half-way.",
    )
    max_held: int = Field(
        default=8192,
        gt=0,
        description="Most characters held for a match the window's end cuts short (a token, a "
        "key block) before text is released anyway; bounds the rescanning work.",
    )


class _StageBase(_Strict):
    mode: Literal["enforce", "shadow"] = Field(
        default="enforce", description="`shadow` decides and records but never blocks, redacts or warns."
    )

    @field_validator("scanners", check_fields=False)
    @classmethod
    def _unique_enabled(cls, scanners: list[ScannerConfig]) -> list[ScannerConfig]:
        """Ids must be unique; scanners switched off with ``enabled: false`` are dropped after validation."""
        seen: set[str] = set()
        for scanner in scanners:
            if scanner.scanner_id in seen:
                raise ValueError(f"two scanners share the id {scanner.scanner_id!r}; give each a distinct `id`")
            seen.add(scanner.scanner_id)
        return [s for s in scanners if s.enabled]


class _PolicyBase(_Strict):
    version: Literal[1] = Field(default=1, description="Policy format version.")
    name: str = Field(description="Name of the policy, carried on every result and audit record.")
    description: str = Field(default="", description="Free text for people.")
    extends: str | None = Field(
        default=None, description="Path of a policy to inherit from, relative to this file, or a built-in name."
    )
    refusal: Refusal = Field(default_factory=Refusal)
    limits: Limits = Field(default_factory=Limits)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    routes: dict[str, str] = Field(
        default_factory=dict,
        description="Named routes (tenants) and the policy file each selects, relative to this file.",
    )

    _source: str = PrivateAttr(default="<memory>")
    _hash: str = PrivateAttr(default="")

    @property
    def source(self) -> str:
        """The file this policy was loaded from."""
        return self._source

    @property
    def hash(self) -> str:
        """SHA-256 of the resolved policy (routes and the extends path left out)."""
        private = self.__pydantic_private__  # read directly: ``self._hash`` goes through pydantic's __getattr__
        if not private["_hash"]:
            content = self.model_dump(mode="json", exclude={"routes", "extends"})
            private["_hash"] = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        return private["_hash"]


@lru_cache(maxsize=8)
def _models(types: tuple[str, ...]) -> type[_PolicyBase]:
    configs = tuple(registry.scanner_class(t).config_model for t in types)
    # Union[...] of a runtime tuple has no `|` spelling.
    scanner_union: Any = Annotated[Union[configs], Field(discriminator="type")] if len(configs) > 1 else configs[0]  # noqa: UP007
    scanners_field = (list[scanner_union], Field(default_factory=list, description="Scanners of this stage."))
    stage = create_model("StageSettings", __base__=_StageBase, scanners=scanners_field)
    output = create_model(
        "OutputStageSettings", __base__=stage, stream=(StreamSettings, Field(default_factory=StreamSettings))
    )
    return create_model(
        "Policy",
        __base__=_PolicyBase,
        input=(stage, Field(default_factory=stage, description="Scanners run on the messages before generation.")),
        output=(output, Field(default_factory=output, description="Scanners run on the response.")),
    )


def policy_model() -> type[_PolicyBase]:
    """The pydantic model of a policy, built over the scanner types registered now."""
    return _models(tuple(sorted(registry.scanner_types())))


# The public name for type hints; instances come from policy_model().
Policy = _PolicyBase


# ---------------------------------------------------------------------------------------------------------------
# YAML with positions


@dataclass(frozen=True, slots=True)
class _Mark:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class _MDict(dict):
    """A mapping that remembers where each key was written."""

    def __init__(self, *args: Any, marks: dict[Any, _Mark] | None = None, here: _Mark | None = None) -> None:
        super().__init__(*args)
        self.marks: dict[Any, _Mark] = marks or {}
        self.here = here


class _MList(list):
    """A list that remembers where each item was written."""

    def __init__(self, *args: Any, marks: list[_Mark] | None = None, here: _Mark | None = None) -> None:
        super().__init__(*args)
        self.marks: list[_Mark] = marks or []
        self.here = here


def _mark(file: str, node: yaml.Node) -> _Mark:
    return _Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


class _Loader(yaml.SafeLoader):
    """SafeLoader that builds position-aware containers and rejects duplicate keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _MDict:
    file = loader.name
    out = _MDict(here=_mark(file, node))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise PolicyError(f"{_mark(file, key_node)}: keys must be plain names, got {key!r}")
        if key in out:
            raise PolicyError(
                f"{_mark(file, key_node)}: key {key!r} appears twice in the same mapping "
                f"(first at line {out.marks[key].line}); keep one"
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.marks[key] = _mark(file, key_node)
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _MList:
    file = loader.name
    items = [loader.construct_object(child, deep=True) for child in node.value]
    return _MList(items, marks=[_mark(file, child) for child in node.value], here=_mark(file, node))


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _read_yaml(path: Path) -> _MDict:
    display = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{display}: policy file not found") from None
    except OSError as exc:
        raise PolicyError(f"{display}: cannot read policy file: {exc.strerror or exc}") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(f"{display}: policy file is {len(raw)} bytes; the limit is {MAX_POLICY_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{display}: not UTF-8 text (byte {exc.start}); a policy is a YAML text file") from None
    loader = _Loader(text)
    loader.name = display
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{display}:{mark.line + 1}:{mark.column + 1}" if mark else display
        raise PolicyError(f"{where}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{display}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:
        raise PolicyError(f"{display}: policy file is empty; it needs at least `name:`")
    if not isinstance(data, _MDict):
        raise PolicyError(
            f"{display}:1:1: a policy is a mapping of keys (name, input, output, ...), not a {type(data).__name__}"
        )
    return data


# ---------------------------------------------------------------------------------------------------------------
# Inheritance

_SCANNER_LISTS = {("input", "scanners"), ("output", "scanners")}


def _scanner_key(entry: Any) -> Any:
    if isinstance(entry, Mapping):
        return entry.get("id") or entry.get("type")
    return None


def _merge(parent: Any, child: Any, path: tuple[str, ...] = ()) -> Any:
    """Child over parent, keeping the position marks of whichever side each value came from."""
    if isinstance(parent, _MDict) and isinstance(child, _MDict):
        merged = _MDict(parent, marks=dict(parent.marks), here=child.here)
        for key, value in child.items():
            merged[key] = _merge(parent[key], value, (*path, key)) if key in parent else value
            merged.marks[key] = child.marks[key]
        return merged
    if path in _SCANNER_LISTS and isinstance(parent, _MList) and isinstance(child, _MList):
        merged_list = _MList(parent, marks=list(parent.marks), here=child.here)
        index = {_scanner_key(entry): i for i, entry in enumerate(parent) if _scanner_key(entry)}
        for entry, mark in zip(child, child.marks, strict=True):
            i = index.get(_scanner_key(entry))
            same_type = i is not None and (
                not isinstance(entry, Mapping) or "type" not in entry or entry.get("type") == parent[i].get("type")
            )
            if i is not None and same_type:
                merged_list[i] = _merge(parent[i], entry, (*path, "*"))
                merged_list.marks[i] = mark
            elif i is not None:
                merged_list[i] = entry
                merged_list.marks[i] = mark
            else:
                merged_list.append(entry)
                merged_list.marks.append(mark)
        return merged_list
    return child


def _resolve(path: Path, chain: tuple[Path, ...]) -> _MDict:
    data = _read_yaml(path)
    parent_ref = data.get("extends")
    if parent_ref is None:
        return data
    if not isinstance(parent_ref, str):
        raise PolicyError(f"{data.marks['extends']}: extends: expected a file path or built-in policy name")
    parent_path = resolve_policy_path(parent_ref, relative_to=path.parent)
    if parent_path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, parent_path))
        raise PolicyError(f"{data.marks['extends']}: extends: inheritance cycle: {cycle}")
    parent = _resolve(parent_path, (*chain, parent_path))
    parent.pop("routes", None)  # routes belong to the file a pipeline is built from
    parent.pop("name", None)
    return _merge(parent, data)


# ---------------------------------------------------------------------------------------------------------------
# Validation errors that name the place and the fix


def _annotation_at(model: Any, loc: tuple[Any, ...]) -> Any:
    """The type expected at ``loc`` inside ``model`` (None when it cannot be followed)."""
    current: Any = model
    for part in loc:
        while True:
            origin = typing.get_origin(current)
            if origin is Annotated:
                current = typing.get_args(current)[0]
            elif origin is Union:
                args = [a for a in typing.get_args(current) if a is not type(None)]
                if len(args) == 1:
                    current = args[0]
                    break
                if isinstance(part, str):
                    matches = [
                        a
                        for a in args
                        if isinstance(a, type)
                        and issubclass(a, ScannerConfig)
                        and typing.get_args(a.model_fields["type"].annotation) == (part,)
                    ]
                    if matches:
                        current = matches[0]
                        part = None
                break
            else:
                break
        if part is None:
            continue
        origin = typing.get_origin(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
        elif origin is list and isinstance(part, int):
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        else:
            return None
    return current


def _location(data: _MDict, loc: tuple[Any, ...], tail: tuple[str, ...] = ()) -> tuple[_Mark | None, str]:
    """The closest mark for ``loc`` (then ``tail``, keys within it) and the dotted key path a person would write."""
    node: Any = data
    mark = data.here
    parts: list[str] = []
    for part in (*loc, *tail):
        if isinstance(node, _MDict) and part in node:
            mark = node.marks.get(part, mark)
            node = node[part]
            parts.append(str(part))
        elif isinstance(node, _MList) and isinstance(part, int) and part < len(node):
            mark = node.marks[part]
            node = node[part]
            label = node["id"] if isinstance(node, Mapping) and isinstance(node.get("id"), str) else part
            parts[-1:] = [f"{parts[-1]}[{label}]"] if parts else [f"[{label}]"]
        elif isinstance(node, _MDict) and isinstance(part, str) and node.get("type") == part:
            continue  # the union tag pydantic inserts into the location
        else:
            parts.append(str(part))
    return mark, ".".join(parts)


def _describe(error: Mapping[str, Any], model: Any, data: _MDict) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    mark, key_path = _location(data, loc, ("type",) if kind == "union_tag_invalid" else ())
    where = f"{mark}: " if mark else f"{data.here}: "
    if kind == "extra_forbidden":
        key = loc[-1]
        owner = _annotation_at(model, loc[:-1])
        allowed = sorted(owner.model_fields) if isinstance(owner, type) and issubclass(owner, BaseModel) else []
        hint = difflib.get_close_matches(str(key), allowed, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"{where}{key_path}: unknown key {key!r}{suggestion}; allowed keys: {', '.join(allowed)}"
    if kind == "union_tag_invalid":
        expected = error.get("ctx", {}).get("expected_tags", "")
        tag = error.get("ctx", {}).get("tag", "")
        names = [t.strip(" '") for t in str(expected).split(",")]
        hint = difflib.get_close_matches(str(tag), names, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"{where}{key_path}: unknown scanner type {tag!r}{suggestion}; registered types: {expected}"
    if kind == "missing":
        return f"{where}{key_path}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    got = repr(error.get("input"))
    return f"{where}{key_path}: {message} (got {got if len(got) <= 80 else got[:77] + '...'})"


def _validate(data: _MDict, source: Path) -> Policy:
    model = policy_model()
    try:
        policy = model.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, model, data) for err in exc.errors(include_url=False)]
        count = f"{len(lines)} problems" if len(lines) > 1 else "1 problem"
        raise PolicyError(f"invalid policy {source} ({count}):\n  " + "\n  ".join(lines)) from None
    policy._source = str(source)
    return policy


# ---------------------------------------------------------------------------------------------------------------
# Public entry points


def builtin_policies() -> dict[str, Path]:
    """The policies shipped with guardrails, by name (``default``, ``strict``, ...)."""
    return {p.stem: p for p in sorted(_builtin_dir().glob("*.yaml"))}


def _builtin_dir() -> Path:
    """The repository's ``policies/`` in a checkout; where the wheel installs them otherwise."""
    checkout = Path(__file__).resolve().parent.parent / "policies"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "guardrails" / "policies"


def resolve_policy_path(ref: str | Path, *, relative_to: Path | None = None) -> Path:
    """A path (relative to ``relative_to`` or the working directory), or the name of a built-in policy."""
    path = Path(ref)
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(ref):
        return path.resolve()
    builtins = builtin_policies()
    if str(ref) in builtins:
        return builtins[str(ref)].resolve()
    raise PolicyError(f"{ref}: no such policy file, nor a built-in policy (built-ins: {', '.join(builtins)})")


def load_policy(ref: str | Path) -> Policy:
    """Load, inherit and validate one policy file (its ``routes`` are checked but not loaded)."""
    path = resolve_policy_path(ref)
    data = _resolve(path, (path,))
    return _validate(data, path)


def load_routes(policy: Policy) -> dict[str, Policy]:
    """The policies that ``policy``'s routes select, loaded and validated."""
    base = Path(policy.source).parent
    routes: dict[str, Policy] = {}
    for name, ref in policy.routes.items():
        route_policy = load_policy(resolve_policy_path(ref, relative_to=base))
        if route_policy.routes:
            raise PolicyError(
                f"{route_policy.source}: declares routes, but it is the policy of route {name!r} in {policy.source}; "
                "routes are declared only in the policy a pipeline is built from"
            )
        routes[name] = route_policy
    return routes


def policy_from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> Policy:
    """Validate a policy given as a mapping (``extends`` is not followed)."""
    marked = _MDict(data, here=_Mark(source, 1, 1))
    if marked.get("extends"):
        raise PolicyError(f"{source}: extends is only followed for policy files; load it with load_policy")
    return _validate(marked, Path(source))


# ---------------------------------------------------------------------------------------------------------------
# Reference documentation, generated from the models so it cannot drift


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(repr(a).replace("'", '"') for a in args)
    if origin in (Union, types.UnionType):
        if all(isinstance(a, type) and issubclass(a, ScannerConfig) for a in args):
            return "scanner (by `type`, below)"
        if all(isinstance(a, type) and issubclass(a, BaseModel) for a in args):
            return "mapping (by `type`, below)"
        return " \\| ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map {_type_name(args[0])} → {_type_name(args[1])}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping" if not annotation.__name__.endswith("Spec") else annotation.__name__
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    value = pydantic_core.to_jsonable_python(value)
    return f"`{json.dumps(value, ensure_ascii=False, separators=(', ', ': '))}`"


def _table(model: type[BaseModel], keys: list[str] | None = None) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if keys is not None and name not in keys:
            continue
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
    return rows


def policy_reference() -> str:
    """Markdown reference of every policy key with its type, default and meaning."""
    model = policy_model()
    stage = model.model_fields["input"].annotation
    output = model.model_fields["output"].annotation
    common = set(ScannerConfig.model_fields)
    out = ["### Top level", "", *_table(model), ""]
    out += ["### `input` and `output`", "", *_table(stage), ""]
    out += ["### `output.stream`", "", *_table(output.model_fields["stream"].annotation), ""]
    out += ["### `refusal`", "", *_table(Refusal), "", "### `limits`", "", *_table(Limits), ""]
    out += ["### `audit`", "", *_table(AuditSettings), ""]
    for name, sink in (("sqlite", SQLiteSinkSettings), ("jsonl", JSONLSinkSettings)):
        out += [
            f"### `audit.sinks` entry `type: {name}`",
            "",
            *_table(sink, [k for k in sink.model_fields if k != "type"]),
            "",
        ]
    out += ["`type: stdout` takes no other keys: one JSON line per record on standard output.", ""]
    out += ["### Keys every scanner takes", "", *_table(ScannerConfig), ""]
    for name, cls in sorted(registry.scanner_types().items()):
        config = cls.config_model
        own = [
            k
            for k, f in config.model_fields.items()
            if k != "type" and (k not in common or f.default != ScannerConfig.model_fields[k].default)
        ]
        summary = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        out += [f"### Scanner `type: {name}`", "", summary, ""]
        out += [*_table(config, own), ""] if own else ["No keys beyond the common ones.", ""]
    return "\n".join(out).rstrip() + "\n"
