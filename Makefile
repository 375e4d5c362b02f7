# shoal: two commands matter, `make demo` and `make test`. Each sets up
# what it needs (Debian packages when we are root, a .venv with shoal in it).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# Debian packages: real peers and tools the tests, demo and benchmarks run;
# gcc and libc6-dev build the static CNI plugin binary, python3-dev the HBONE
# data path's C extension (setup.py).
DEB_PKGS := iperf3 stunnel4 haproxy nginx-light socat nghttp2-client nghttp2-proxy \
            tinyproxy wrk nftables iproute2 containernetworking-plugins podman runc \
            busybox-static curl openssl tcpdump procps \
            gcc libc6-dev python3-dev
# One binary per package, to tell whether it is already installed.
DEB_PROBES := iperf3 stunnel4 haproxy nginx socat h2load nghttpx tinyproxy wrk nft ip \
              /usr/lib/cni/bridge podman runc busybox curl openssl tcpdump ps \
              gcc /usr/include/stdio.h python3-config

.PHONY: bytecode demo test test-python-path test-unit test-integration test-e2e bench bench-load host-deps venv clean

$(VENV)/.installed: pyproject.toml setup.py cni/native/shoal_cni.c $(wildcard core/hbone/native/*.c core/hbone/native/*.h waypoint/native/*.c waypoint/native/*.h)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,bench]'
	@touch $@

venv: $(VENV)/.installed

host-deps:
	@missing=""; for p in $(DEB_PROBES); do \
	  command -v $$p >/dev/null 2>&1 || test -e $$p || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PKGS) >/dev/null; \
	  else \
	    echo "missing tools:$$missing; as root run: apt-get install $(DEB_PKGS)" >&2; exit 1; \
	  fi; \
	fi

demo: host-deps venv
	$(VENV)/bin/shoal mesh demo

# The folders as the wheel installs them (shoal.<folder>), for mypy, which
# cannot follow setuptools' package-dir mapping. Checked: [tool.mypy] modules.
TYPECHECK_ROOT := build/typecheck
PACKAGE_DIRS := core routing shards controlplane ztunnel waypoint cni benchmarks

typecheck: venv
	@rm -rf $(TYPECHECK_ROOT) && mkdir -p $(TYPECHECK_ROOT)/shoal
	@for d in $(PACKAGE_DIRS); do ln -s ../../../$$d $(TYPECHECK_ROOT)/shoal/$$d; done
	@for f in shoal/*.py; do ln -s ../../../$$f $(TYPECHECK_ROOT)/shoal/; done
	$(PY) -m mypy

# The machines run with PYTHONDONTWRITEBYTECODE=1: without this step every
# shoal process a test starts compiles its ~100 modules from source again.
bytecode: venv
	@$(PY) -m compileall -q -j 0 $(PACKAGE_DIRS) shoal tests >/dev/null

test: host-deps venv typecheck bytecode
	$(PY) -m pytest -q -n 2 tests
	$(MAKE) test-python-path

# The pure-Python fallbacks of the C paths (HBONE's data path,
# core/hbone/fastpath.py; the waypoint's HTTP/1.1 heads, waypoint/h1native.py),
# which every other test run skips while the C modules load: their own pass.
test-python-path: venv
	SHOAL_NATIVE=0 $(PY) -m pytest -q -n 2 tests/unit/hbone tests/integration/hbone \
	    tests/unit/waypoint tests/integration/waypoint

test-unit: venv
	$(PY) -m pytest -q tests/unit

bench: host-deps venv
	@mkdir -p benchmarks/out
	$(VENV)/bin/shoal bench --json benchmarks/out/results.json
	$(PY) -m shoal.benchmarks.report benchmarks/out

# The headline load runs, REPEAT times each (same-run ratios against stunnel
# and nginx), then docs/benchmarks.md's headline table and docs/img/headline.png.
# Run on a quiet machine: about 4 minutes per repeat.
REPEAT ?= 3
RUNS := benchmarks/out/runs
bench-load: host-deps venv
	@rm -rf $(RUNS) && mkdir -p $(RUNS)
	@for i in $$(seq 1 $(REPEAT)); do \
	  $(PY) -m shoal.benchmarks.load.hbone --seconds 5 --rounds 3 --short-seconds 5 --processes 1,2 --out $(RUNS)/hbone-$$i.json >/dev/null && \
	  $(PY) -m shoal.benchmarks.load.ztunnel --seconds 5 --idle-conns 1000 --plot '' --out $(RUNS)/ztunnel-$$i.json >/dev/null && \
	  $(PY) -m shoal.benchmarks.load.waypoint --duration 5 --repeat 1 --out $(RUNS)/waypoint-$$i.json >/dev/null \
	  || exit 1; echo "bench-load: run $$i of $(REPEAT) done"; done
	$(PY) -m shoal.benchmarks.load.headline $(RUNS)

clean:
	rm -rf $(VENV) benchmarks/out .pytest_cache $(TYPECHECK_ROOT)
