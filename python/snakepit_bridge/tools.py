"""Tool declaration (``@tool``), discovery on adapter classes, argument binding
and ToolSpec generation.

Binding rules (applied to the decoded JSON arguments merged with the binary
parameters):

1. A parameter named ``stream`` receives the stream object (streaming calls
   only); it is never filled from the arguments.
2. Arguments are matched to parameters by name. ``**kwargs`` collects the
   rest; without it, an argument no parameter accepts is an error.
3. If the tool has exactly one other parameter, no argument has its name, and
   that parameter is required (or annotated as a dict/mapping/Any), it receives
   the whole argument dict. This serves ``def run(self, params)`` style tools.
4. A required parameter without a matching argument is an error.

Errors are :class:`~snakepit_bridge.errors.ArgumentBindingError` (a
``TypeError``) whose message names the tool and the parameter(s).
"""

from __future__ import annotations

import inspect
import json
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar, overload

from . import serialization
from .errors import ArgumentBindingError

__all__ = [
    "tool",
    "ToolMeta",
    "BATCH_KEY",
    "MAX_BATCH_SIZE_KEY",
    "MAX_BATCH_DELAY_KEY",
    "ToolInfo",
    "discover_tools",
    "prepare_tools",
    "TOOL_ATTR",
    "STREAM_PARAM",
]

TOOL_ATTR = "__snakepit_tool__"
STREAM_PARAM = "stream"
LEGACY_PREFIX = "execute_"

# The metadata keys that tell Elixir a tool is batched (see ``tool``).
BATCH_KEY = "batch"
MAX_BATCH_SIZE_KEY = "max_batch_size"
MAX_BATCH_DELAY_KEY = "max_batch_delay_ms"
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_BATCH_DELAY_MS = 2
# Bounds Elixir applies too (Snakepit.Pool.Batching).
MAX_BATCH_SIZE_LIMIT = 10_000
MAX_BATCH_DELAY_LIMIT_MS = 10_000

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ToolMeta:
    """What ``@tool`` records on a function."""

    name: str | None = None
    description: str | None = None
    supports_streaming: bool | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    batch: bool = False
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_batch_delay_ms: int = DEFAULT_MAX_BATCH_DELAY_MS


@overload
def tool(func: F) -> F: ...


@overload
def tool(
    func: None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    supports_streaming: bool | None = None,
    metadata: Mapping[str, Any] | None = None,
    required_variables: Sequence[str] | None = None,
    batch: bool = False,
    max_batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
) -> Callable[[F], F]: ...


def tool(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    supports_streaming: bool | None = None,
    metadata: Mapping[str, Any] | None = None,
    required_variables: Sequence[str] | None = None,
    batch: bool = False,
    max_batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
) -> Any:
    """Mark an adapter method as a tool callable from Elixir.

    Usable bare (``@tool``) or with options (``@tool(description=...,
    supports_streaming=True)``). ``description`` defaults to the first
    paragraph of the docstring; ``name`` defaults to the method name;
    ``supports_streaming`` defaults to whether the method is a (sync or async)
    generator or takes a ``stream`` parameter. ``required_variables``
    (upstream Snakepit's session variables a tool needs) is kept in the
    tool's metadata as a list of names.

    ``batch=True`` makes a *batched* tool: it takes one list of argument
    dicts (one per call) and returns one result per item, in order; a result
    slot holding an exception instance fails that item alone::

        @tool(batch=True, max_batch_size=64, max_batch_delay_ms=2)
        def embed(self, batch):
            return [self.model(item["text"]) for item in batch]

    Elixir callers still call it one item at a time
    (``Snakepit.execute("embed", %{text: ...})``); the pool gathers
    concurrent calls into one list of up to ``max_batch_size`` items, waiting
    at most ``max_batch_delay_ms`` for more to arrive. A batched tool is
    stateless: it sees no session, and may not stream.
    """

    if not batch and (max_batch_size is not None or max_batch_delay_ms is not None):
        raise ValueError("max_batch_size and max_batch_delay_ms need batch=True")
    size = _bounded("max_batch_size", max_batch_size, DEFAULT_MAX_BATCH_SIZE, 1, MAX_BATCH_SIZE_LIMIT)
    delay = _bounded("max_batch_delay_ms", max_batch_delay_ms, DEFAULT_MAX_BATCH_DELAY_MS, 0, MAX_BATCH_DELAY_LIMIT_MS)

    def mark(fn: F) -> F:
        extra = dict(metadata or {})
        if required_variables is not None:
            extra["required_variables"] = [str(v) for v in required_variables]
        if batch:
            _check_batchable(fn, supports_streaming)
            extra.update({BATCH_KEY: "true", MAX_BATCH_SIZE_KEY: str(size), MAX_BATCH_DELAY_KEY: str(delay)})
        meta = ToolMeta(
            name=name,
            description=description,
            supports_streaming=supports_streaming,
            metadata=extra,
            batch=bool(batch),
            max_batch_size=size,
            max_batch_delay_ms=delay,
        )
        target = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
        setattr(target, TOOL_ATTR, meta)
        return fn

    if func is not None:
        return mark(func)  # type: ignore[arg-type]
    return mark


def _bounded(what: str, value: Any, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value


def _check_batchable(fn: Any, supports_streaming: bool | None) -> None:
    """A batched tool takes a list and returns a list: no stream."""
    raw = inspect.unwrap(fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn)
    streams = inspect.isgeneratorfunction(raw) or inspect.isasyncgenfunction(raw) or bool(supports_streaming)
    try:
        streams = streams or STREAM_PARAM in inspect.signature(raw).parameters
    except (TypeError, ValueError):
        pass
    if streams:
        raise ValueError(f"tool '{getattr(raw, '__name__', raw)}' cannot be both batched and streaming")


# ------------------------------------------------------------------ inspection


def _annotation_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    text = repr(annotation)
    return text.replace("typing.", "")


_MAPPING_ANNOTATION = re.compile(
    r"^(?:typing\.)?(?:dict|Dict|Mapping|MutableMapping|Any|object)(?:\[.*\])?$|^(?:Optional\[)?(?:dict|Dict)"
)


def _is_mapping_annotation(annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty:
        return False
    if annotation in (dict, Mapping, Any, object):
        return True
    origin = getattr(annotation, "__origin__", None)
    if origin in (dict,) or origin is Mapping:
        return True
    return bool(_MAPPING_ANNOTATION.match(_annotation_text(annotation).strip()))


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    text = inspect.cleandoc(doc)
    return text.split("\n\n", 1)[0].strip().replace("\n", " ")


_ARG_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params)\s*:?\s*$")
_ARG_LINE = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _param_docs(doc: str | None) -> dict[str, str]:
    """Pull ``name: description`` entries out of a Google-style Args section."""
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    for index, line in enumerate(lines):  # noqa: B007 - index is used after the loop
        if _ARG_SECTION.match(line):
            break
    else:
        return {}
    result: dict[str, str] = {}
    base_indent: int | None = None
    current: str | None = None
    for line in lines[index + 1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break
        if base_indent is None:
            base_indent = indent
        match = _ARG_LINE.match(line)
        if indent == base_indent and match:
            current = match.group(1)
            result[current] = match.group(2).strip()
        elif current is not None and indent > base_indent:
            result[current] = (result[current] + " " + line.strip()).strip()
    return result


# ------------------------------------------------------------------ ToolInfo


# What ToolInfo worked out about the methods of the classes given to
# prepare_tools, by tool name and function.
_PREPARED: dict[tuple[str, Callable[..., Any]], dict[str, Any]] = {}


def _prepared(name: str, func: Callable[..., Any], meta: ToolMeta | None) -> dict[str, Any] | None:
    # A method's facts are its function's: the same whatever it is bound to.
    if not isinstance(func, types.MethodType):
        return None
    facts = _PREPARED.get((name, func.__func__))
    return facts if facts is not None and facts["meta"] is meta else None


def _work_out(func: Callable[..., Any], given_meta: ToolMeta | None) -> dict[str, Any]:
    meta = given_meta or ToolMeta()
    raw = inspect.unwrap(getattr(func, "__func__", func))
    is_async_generator = inspect.isasyncgenfunction(raw)
    is_generator = inspect.isgeneratorfunction(raw)
    try:
        signature: inspect.Signature | None = inspect.signature(func)
    except (TypeError, ValueError):
        signature = None

    params: list[inspect.Parameter] = []
    var_keyword = False
    wants_stream = False
    if signature is None:
        var_keyword = True
    else:
        for p in signature.parameters.values():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                var_keyword = True
            elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            elif p.name == STREAM_PARAM:
                wants_stream = True
            else:
                params.append(p)

    doc = inspect.getdoc(raw) or ""
    if meta.supports_streaming is not None:
        supports_streaming = bool(meta.supports_streaming)
    else:
        supports_streaming = is_generator or is_async_generator or wants_stream
    return {
        "meta": given_meta,
        "is_async_generator": is_async_generator,
        "is_generator": is_generator,
        "is_coroutine": inspect.iscoroutinefunction(raw) or inspect.iscoroutinefunction(func),
        "signature": signature,
        "var_keyword": var_keyword,
        "wants_stream": wants_stream,
        "params": params,
        "names": {p.name for p in params},
        "description": meta.description if meta.description is not None else _first_paragraph(doc),
        "param_docs": _param_docs(doc),
        "supports_streaming": supports_streaming,
        # Strings as they are, anything else (lists such as
        # required_variables) as JSON.
        "metadata": {
            str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in meta.metadata.items()
        },
    }


class ToolInfo:
    """A discovered tool: the bound callable plus what we know about it.

    What is known about it depends on the function and its ``@tool``
    settings, not on the instance a method is bound to: for the classes
    given to :func:`prepare_tools` it is worked out once and shared
    (read-only) by every ToolInfo of their methods.
    """

    def __init__(
        self,
        name: str,
        func: Callable[..., Any],
        meta: ToolMeta | None = None,
        *,
        legacy: bool = False,
    ):
        self.name = name
        self.func = func
        self.meta = meta or ToolMeta()
        self.legacy = legacy
        facts = _prepared(name, func, meta) or _work_out(func, meta)
        self._facts = facts
        self.is_async_generator: bool = facts["is_async_generator"]
        self.is_generator: bool = facts["is_generator"]
        self.is_coroutine: bool = facts["is_coroutine"]
        self.signature: inspect.Signature | None = facts["signature"]
        self.var_keyword: bool = facts["var_keyword"]
        self.wants_stream: bool = facts["wants_stream"]
        self.params: list[inspect.Parameter] = facts["params"]
        self._names: set[str] = facts["names"]
        self.description: str = facts["description"]
        self._param_docs: dict[str, str] = facts["param_docs"]
        self.supports_streaming: bool = facts["supports_streaming"]
        self.batch = self.meta.batch
        self.max_batch_size = self.meta.max_batch_size
        self.metadata: dict[str, str] = facts["metadata"]

    @property
    def produces_stream(self) -> bool:
        """True when calling the tool yields a stream rather than one value."""
        return self.is_generator or self.is_async_generator or self.wants_stream

    # -------------------------------------------------------------- binding

    def _whole_dict_param(self, args: Mapping[str, Any]) -> inspect.Parameter | None:
        if len(self.params) != 1 or self.var_keyword:
            return None
        (param,) = self.params
        if param.name in args:
            return None
        if param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is not inspect.Parameter.empty:
            return None
        required = param.default is inspect.Parameter.empty
        if required or (args and _is_mapping_annotation(param.annotation)):
            return param
        return None

    def bind(self, args: Mapping[str, Any], stream: Any = None) -> tuple[list[Any], dict[str, Any]]:
        """Return ``(positional, keyword)`` arguments for calling the tool."""
        positional: list[Any] = []
        keywords: dict[str, Any] = {}

        whole = self._whole_dict_param(args)
        if whole is not None:
            value = dict(args)
            if whole.kind is inspect.Parameter.POSITIONAL_ONLY:
                positional.append(value)
            else:
                keywords[whole.name] = value
        else:
            missing = [
                p.name
                for p in self.params
                if p.default is inspect.Parameter.empty and p.name not in args
            ]
            unexpected = [] if self.var_keyword else [k for k in args if k not in self._names]
            if missing or unexpected:
                raise ArgumentBindingError(self._binding_message(missing, unexpected))
            for p in self.params:
                if p.name not in args:
                    continue
                if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                    positional.append(args[p.name])
                else:
                    keywords[p.name] = args[p.name]
            if self.var_keyword:
                for key, value in args.items():
                    if key not in self._names:
                        keywords[key] = value

        if self.wants_stream:
            keywords[STREAM_PARAM] = stream
        return positional, keywords

    def _binding_message(self, missing: list[str], unexpected: list[str]) -> str:
        parts = []
        if missing:
            noun = "argument" if len(missing) == 1 else "arguments"
            parts.append(
                f"tool '{self.name}' is missing required {noun} " + ", ".join(f"'{m}'" for m in missing)
            )
        if unexpected:
            noun = "argument" if len(unexpected) == 1 else "arguments"
            accepted = ", ".join(p.name for p in self.params) or "none"
            text = f"got unexpected {noun} " + ", ".join(f"'{u}'" for u in unexpected)
            text += f" (accepted: {accepted})"
            parts.append(text if parts else f"tool '{self.name}' {text}")
        return "; ".join(parts)

    # -------------------------------------------------------------- specs

    def parameter_specs(self) -> list[dict[str, Any]]:
        specs = []
        for p in self.params:
            entry: dict[str, Any] = {
                "name": p.name,
                "type": _annotation_text(p.annotation),
                "required": p.default is inspect.Parameter.empty,
                "description": self._param_docs.get(p.name, ""),
            }
            if p.default is not inspect.Parameter.empty:
                entry["default_json"] = serialization.dumps(p.default).decode("utf-8")
            else:
                entry["default_json"] = ""
            specs.append(entry)
        return specs

    def to_spec_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameter_specs(),
            "supports_streaming": self.supports_streaming,
            "metadata": dict(self.metadata),
            "batch": self.batch,
        }

    def to_proto(self) -> Any:
        """The ToolSpec message (a copy of the one made once per function)."""
        spec = self._facts.get("spec")
        if spec is None:
            spec = self._facts["spec"] = self._new_proto()
        copy = type(spec)()
        copy.CopyFrom(spec)
        return copy

    def _new_proto(self) -> Any:
        from .generated import snakepit_bridge_pb2 as pb

        spec = pb.ToolSpec(
            name=self.name,
            description=self.description,
            supports_streaming=self.supports_streaming,
        )
        for entry in self.parameter_specs():
            spec.parameters.add(
                name=entry["name"],
                type=entry["type"],
                required=entry["required"],
                default_json=entry["default_json"],
                description=entry["description"],
            )
        for key, value in self.metadata.items():
            spec.metadata[key] = value
        return spec

    def __repr__(self) -> str:
        kind = " streaming" if self.supports_streaming else " batched" if self.batch else ""
        return f"<ToolInfo {self.name}{kind}>"


# ------------------------------------------------------------------ discovery


def _tool_meta_of(attr: Any) -> ToolMeta | None:
    target = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
    meta = getattr(target, TOOL_ATTR, None)
    return meta if isinstance(meta, ToolMeta) else None


def _class_attributes(cls: type) -> Iterable[tuple[str, Any]]:
    seen: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, attr in vars(klass).items():
            if name in seen:
                continue
            seen.add(name)
            yield name, attr


def _tool_attributes(cls: type) -> list[tuple[str, str, Any, ToolMeta | None]]:
    """(tool name, attribute name, class attribute, ToolMeta or None for a
    legacy tool) of each tool of ``cls``; see discover_tools."""
    tools: list[tuple[str, str, Any, ToolMeta | None]] = []
    legacy: list[tuple[str, str, Any, ToolMeta | None]] = []
    for attr_name, attr in _class_attributes(cls):
        if isinstance(attr, property):
            continue
        meta = _tool_meta_of(attr)
        if meta is not None:
            tools.append((meta.name or attr_name, attr_name, attr, meta))
        elif (
            attr_name.startswith(LEGACY_PREFIX)
            and attr_name != "execute_tool"
            and len(attr_name) > len(LEGACY_PREFIX)
            and callable(attr)
        ):
            legacy.append((attr_name[len(LEGACY_PREFIX):], attr_name, attr, None))
    return tools or legacy


def discover_tools(adapter: Any) -> dict[str, ToolInfo]:
    """Find the tools an adapter instance offers.

    Methods marked with ``@tool`` anywhere in the class hierarchy are tools.
    Adapters written in the older style, with no ``@tool`` at all, expose their
    ``execute_<name>(self, args)`` methods as tool ``<name>``.
    """
    tools = {
        name: ToolInfo(name, getattr(adapter, attr_name), meta, legacy=meta is None)
        for name, attr_name, _attr, meta in _tool_attributes(type(adapter))
    }
    return dict(sorted(tools.items()))


class _Unbound:
    """Stands in for an instance: a method's facts do not depend on it."""


def prepare_tools(cls: type) -> None:
    """Work out what :func:`discover_tools` will find on instances of
    ``cls`` before there is one, so that a fork server does it once for all
    the workers it forks. Methods only (the usual tools); anything else is
    worked out per instance as before."""
    for name, _attr_name, attr, meta in _tool_attributes(cls):
        if isinstance(attr, types.FunctionType):
            info = ToolInfo(name, types.MethodType(attr, _Unbound()), meta, legacy=meta is None)
            info.to_proto()
            _PREPARED[(name, attr)] = info._facts
