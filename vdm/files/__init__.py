"""Files vdm writes and reads back: videos, grids and arrays (PyAV), and checkpoints (written
atomically with a checksum, loaded as plain data)."""
