"""bridgelab: QEMU guests on one Linux bridge, configured over their serial consoles."""

from importlib.metadata import version

__version__ = version("bridgelab")  # pyproject.toml is the one place it is written
