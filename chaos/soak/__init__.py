"""``make soak``: a steady rate for a long time with retention on; memory and tables per window (docs/operations.md)."""
