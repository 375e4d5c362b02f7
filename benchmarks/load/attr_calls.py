"""Calls into CPython's attribute machinery per unit, from two callgrind runs.

    python -m shoal.benchmarks.load.attr_calls OUT_SMALL OUT_LARGE UNITS

OUT_SMALL and OUT_LARGE are callgrind.out files of the same benchmark with
N and N + UNITS units (e.g. `bench_ztunnel_relay c 20` and `c 220`, UNITS
200): the difference cancels start-up. Prints, per unit, the calls made to
each attribute function from the C module (`_native`) and from anywhere
(docs/bench/profiles/README.md). Reads callgrind's compressed names
(`fn=(id) name`, later `(id)`).
"""

from __future__ import annotations

import collections
import re
import sys

# CPython's entry points for reading, writing and calling attributes.
ATTR_FUNCTIONS = frozenset({
    "PyObject_GetAttr", "PyObject_SetAttr", "_PyObject_LookupAttr", "PyObject_GenericGetAttr",
    "PyObject_GenericSetAttr", "_PyObject_GenericGetAttrWithDict",
    "_PyObject_GenericSetAttrWithDict", "_PyObject_GetMethod", "PyObject_VectorcallMethod",
    "PyObject_CallMethodObjArgs", "_PyType_Lookup"})
_NAME = re.compile(r"\((\d+)\)(.*)")


def count(path: str) -> tuple[collections.Counter, collections.Counter]:
    """(calls from _native, calls from anywhere) to each ATTR_FUNCTIONS entry."""
    fns: dict[str, str] = {}
    objs: dict[str, str] = {}
    current_obj = caller_obj = callee = None
    native: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()

    def name(table: dict[str, str], rest: str) -> str | None:
        m = _NAME.match(rest)
        if m is None:
            return rest.strip()
        if m.group(2).strip():
            table[m.group(1)] = m.group(2).strip()
        return table.get(m.group(1))

    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("ob="):
                current_obj = name(objs, line[3:])
            elif line.startswith("fn="):
                name(fns, line[3:])
                caller_obj = current_obj
            elif line.startswith("cob="):
                name(objs, line[4:])
            elif line.startswith("cfn="):
                callee = name(fns, line[4:])
            elif line.startswith("calls=") and callee in ATTR_FUNCTIONS:
                n = int(line[6:].split()[0])
                total[callee] += n
                if caller_obj is not None and "_native" in caller_obj:
                    native[callee] += n
    return native, total


def main() -> None:
    small, large, units = sys.argv[1], sys.argv[2], int(sys.argv[3])
    (ns, ts), (nl, tl) = count(small), count(large)
    print(f"{'function':36s} {'from _native':>12s} {'anywhere':>10s}   (per unit)")
    for fn in sorted(ATTR_FUNCTIONS):
        a, b = (nl[fn] - ns[fn]) / units, (tl[fn] - ts[fn]) / units
        if a or b:
            print(f"{fn:36s} {a:12.1f} {b:10.1f}")
    print(f"{'all':36s} {(sum(nl.values()) - sum(ns.values())) / units:12.1f} "
          f"{(sum(tl.values()) - sum(ts.values())) / units:10.1f}")


if __name__ == "__main__":
    main()
