"""HBONE's compiled data-path calls: `_native` is built from `_native.c` by
setup.py. Import it through core/hbone/fastpath.py, which decides whether it
is used (SHOAL_NATIVE, build present) and keeps the pure-Python path otherwise.
"""
