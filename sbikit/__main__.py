"""``python -m sbikit``: the same as the ``sbikit`` console script."""

from __future__ import annotations

from sbikit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
