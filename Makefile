# Set-up is two commands on a fresh Debian/Ubuntu machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get
# Debian packages the tests and the demo use (npm fetches the OHIF viewer's prebuilt
# package; chromium runs the viewer tests headless; haproxy is the scale-out balancer of
# the fleet test, and nginx -t checks the reference nginx balancer config).  npm counts
# as present when the command exists (a NodeSource nodejs ships its own).
OS_PACKAGES := orthanc orthanc-dicomweb python3-venv chromium haproxy nginx
# Only `make bench` needs this one more: the load generator.
BENCH_PACKAGES := wrk
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: test lint docs demo os-packages bench-packages bench venv clean chaos fleet

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { $(APT) update && $(APT) install -y python3 python3-venv; }
	$(PYTHON) -m venv $(VENV) || { $(APT) update && $(APT) install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

os-packages:
	@missing=""; for p in $(OS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(APT) update && $(APT) install -y --no-install-recommends $$missing; \
	fi

bench-packages:
	@$(MAKE) --no-print-directory os-packages OS_PACKAGES="$(OS_PACKAGES) $(BENCH_PACKAGES)"

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

# The side-by-side benchmark of SPEC section 8 (about 12 minutes; BENCH_ARGS=--quick: 1).
bench: bench-packages $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Scale-out measured (issue #17, docs/how-to/scale-out.md): HAProxy on deploy/balancers/haproxy.cfg,
# 3 replicas and Orthanc on loopback, three runs with study hashing and with round robin,
# then the simulation; writes bench/results/fleet.md and docs/how-to/scale-out.png (about 4 min;
# FLEET_ARGS=--quick: 1).  `make test` runs the short form (tests/test_fleet.py).
fleet: os-packages $(BENCH_STAMP)
	$(BIN)/python -m bench.fleet $(FLEET_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check proxy harness tests bench demo
	$(BIN)/ruff format --check proxy harness tests bench demo
	$(BIN)/mypy

# The configuration reference, generated from the option table (proxy/options.py);
# tests/test_docs.py fails when the checked-in copy is stale.
docs: $(STAMP)
	$(BIN)/python -m harness.configref

test: os-packages $(STAMP) lint
	$(BIN)/pytest

# The long chaos run: five minutes of faults (override CHAOS_SECONDS / CHAOS_SEED).
chaos: os-packages $(STAMP)
	CHAOS_SECONDS=$${CHAOS_SECONDS:-300} CHAOS_REQUESTS=$${CHAOS_REQUESTS:-10000000} \
		$(BIN)/pytest -s -p no:cacheprovider tests/test_chaos.py

demo: os-packages $(STAMP)
	$(BIN)/python -m demo

clean:
	rm -rf $(VENV) .dicomweb-proxy .pytest_cache .mypy_cache .ruff_cache
