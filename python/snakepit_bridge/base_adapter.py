"""The adapter base class and the ``@tool`` decorator.

An adapter is a class whose ``@tool`` methods Elixir can call by name::

    from snakepit_bridge import BaseAdapter, tool

    class MyAdapter(BaseAdapter):
        async def initialize(self):        # optional, once before the first call
            self.model = load_model()

        def cleanup(self):                 # optional, once at shutdown
            self.model = None

        @tool(description="Run inference")
        def predict(self, text: str) -> dict:
            return {"label": self.model(text)}

The worker makes one instance per process. Sync tools run in a thread pool,
async tools on the worker's event loop; generators (sync or async) and tools
with a ``stream`` parameter are streaming tools.
"""

from __future__ import annotations

from typing import Any

from .errors import ToolNotFoundError
from .session_context import SessionContext, current_context
from .tools import ToolInfo, discover_tools, tool

__all__ = ["BaseAdapter", "tool"]


class BaseAdapter:
    """Base class for adapters.

    Subclasses may define ``initialize()`` and ``cleanup()`` (sync or async);
    both are optional. ``__thread_safe__`` declares whether the adapter may
    serve calls from several threads at once (required by the threaded
    worker mode); see :class:`snakepit_bridge.ThreadSafeAdapter`.
    """

    __thread_safe__: bool = False

    def __init__(self) -> None:
        self._fallback_session_context: SessionContext | None = None

    # ------------------------------------------------------------ session

    @property
    def session_context(self) -> SessionContext | None:
        """The context of the tool call currently being served (None outside one)."""
        ctx = current_context()
        if ctx is not None:
            return ctx
        return getattr(self, "_fallback_session_context", None)

    @session_context.setter
    def session_context(self, context: SessionContext | None) -> None:
        self._fallback_session_context = context

    def set_session_context(self, context: SessionContext | None) -> None:
        """Set a context used outside tool calls (e.g. in tests)."""
        self._fallback_session_context = context

    @property
    def session_id(self) -> str | None:
        """The session id of the current call (``None`` outside calls)."""
        context = self.session_context
        return context.session_id if context is not None else None

    # ------------------------------------------------------------ tools

    def call_tool(self, tool_name: str, **kwargs: Any) -> Any:
        """Call this adapter's ``@tool`` ``tool_name`` with ``kwargs`` (as
        upstream Snakepit's adapters do from their ``execute_tool``)."""
        info = self.get_tools().get(tool_name)
        if info is None:
            raise ToolNotFoundError(tool_name, list(self.get_tools()))
        return info.func(**kwargs)

    def get_tools(self) -> dict[str, ToolInfo]:
        """The tools this adapter offers, by name."""
        return discover_tools(self)

    def list_tools(self) -> list[str]:
        return list(self.get_tools())

    def describe_tools(self) -> list[dict[str, Any]]:
        """Plain-dict descriptions of the tools (name, description, parameters, ...)."""
        return [info.to_spec_dict() for info in self.get_tools().values()]
