"""Adapters shipped with snakepit_bridge (the default is ShowcaseAdapter)."""
