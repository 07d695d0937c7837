"""Core pieces every other layer may use: errors and safe file I/O."""
