"""Shared by the e2e tests that bring up a `shoal mesh`: an unused address
base for it, and the bounds a weighted split must fall in."""

from __future__ import annotations

import math
import random
import subprocess

import pytest

BASE_TRIES = 50      # random picks of a /16 before giving up (the host uses few)


def free_base() -> int:
    """A 10.BASE.0.0/16 no interface on the host uses (meshes of parallel tests)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for _ in range(BASE_TRIES):
        base = random.randint(200, 243)
        if f" 10.{base}." not in used:
            return base
    pytest.skip("no free 10.BASE.0.0/16 for a mesh")


def binomial_bounds(n: int, p: float, alpha: float) -> tuple[int, int]:
    """The central interval holding a Binomial(n, p) count with probability >= 1 - alpha."""
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, tail = 0, 0.0
    while tail + pmf[lo] <= alpha / 2:
        tail += pmf[lo]
        lo += 1
    hi, tail = n, 0.0
    while tail + pmf[hi] <= alpha / 2:
        tail += pmf[hi]
        hi -= 1
    return lo, hi
