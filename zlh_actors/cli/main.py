"""Entry point of the `zlh` console script (being built: issue [7/7])."""

from __future__ import annotations


def main() -> int:
    print("zlh: not built yet")
    return 2
