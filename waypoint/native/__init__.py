"""The waypoint's compiled HTTP/1.1 head path: `_h1` is built from `_h1.c` by
setup.py. Import it through waypoint/h1native.py, which decides whether it is
used (SHOAL_NATIVE, httptools' version, the build present, llhttp's ABI
proven at load) and keeps the pure-Python path otherwise.
"""
