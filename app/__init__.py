"""bridgelab: QEMU guests on one Linux bridge, configured over their serial consoles."""

__version__ = "0.1.0"
