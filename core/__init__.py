"""Shared, side-effect-free building blocks: states, types, settings."""
