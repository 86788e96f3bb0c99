"""Protocol drivers: each reads and writes one device and turns its values into Samples."""
