"""``python -m erasekit``: the same command line as ``erasekit``."""

from erasekit.cli import run

if __name__ == "__main__":
    run()
