"""Orchestration: the lab runner that owns the host side and the guests."""
