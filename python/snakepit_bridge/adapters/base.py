"""Older import path for the adapter base class: prefer ``snakepit_bridge``."""

from ..base_adapter import BaseAdapter, tool

__all__ = ["BaseAdapter", "tool"]
