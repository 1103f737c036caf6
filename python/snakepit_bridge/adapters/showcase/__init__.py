"""The default adapter, demonstrating every feature of the bridge."""

from .showcase_adapter import ShowcaseAdapter

__all__ = ["ShowcaseAdapter"]
