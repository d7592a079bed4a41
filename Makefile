# Everything a fresh machine needs (Python 3.11, git, Node/npm and the package registries) is set up here.
PYTHON ?= python3.11
TOOLS := .tools
VENV := .venv
UV := $(TOOLS)/bin/uv
UV_VERSION := 0.13.9
CONFIG ?= examples/demo.yaml
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)

.PHONY: setup cluster-deps run test lint typecheck check bench soak clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) pyproject.toml uv.lock runtime/pyodide/package.json runtime/pyodide/package-lock.json
	$(UV) sync --frozen --python $(PYTHON)
	mkdir -p $(VENV)/pyodide
	cp runtime/pyodide/package.json runtime/pyodide/package-lock.json $(VENV)/pyodide/
	cd $(VENV)/pyodide && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	$(VENV)/bin/conduit doctor --quiet
	touch $@

# The official TypeScript MCP SDK, a second independent client for the tests.
$(VENV)/.ts-client: $(VENV)/.synced tests/clients/typescript/package.json tests/clients/typescript/package-lock.json
	mkdir -p $(VENV)/mcp-ts-client
	cp tests/clients/typescript/package.json tests/clients/typescript/package-lock.json $(VENV)/mcp-ts-client/
	cd $(VENV)/mcp-ts-client && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

# The published MCP servers the code-mode surface is measured against (bench/surface.py, tests/e2e/test_surface.py).
$(VENV)/.reference-upstreams: $(VENV)/.synced tests/servers/reference/package.json tests/servers/reference/package-lock.json
	mkdir -p $(VENV)/reference-upstreams
	cp tests/servers/reference/package.json tests/servers/reference/package-lock.json $(VENV)/reference-upstreams/
	cd $(VENV)/reference-upstreams && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

# MCP clients' own command-line tools (the MCP Inspector, Claude Code), pinned: tests run the set-up commands
# docs/CLIENTS.md gives with them (tests/cli/test_client_snippets.py). Install scripts run: Claude Code's puts
# its native binary in place.
$(VENV)/.client-clis: $(VENV)/.synced tests/clients/cli/package.json tests/clients/cli/package-lock.json
	mkdir -p $(VENV)/client-clis
	cp tests/clients/cli/package.json tests/clients/cli/package-lock.json $(VENV)/client-clis/
	cd $(VENV)/client-clis && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The native sandbox launcher (~1 ms per sandbox start instead of ~12 ms for its Python twin). Optional:
# without a C compiler Conduit uses the Python launcher, with the same walls.
$(VENV)/bin/conduit-confine: src/conduit/sandbox/walls/native/conduit_confine.c $(VENV)/.synced
	@if command -v $(CC) >/dev/null 2>&1 && $(CC) -O2 -Wall -Wextra -o $@ $<; then echo "built $@"; \
	else echo "note: no working C compiler ($(CC)): sandboxes start through the Python launcher"; fi

# The cluster tests' Redis server, load balancer and PostgreSQL (the state store's tests), from Debian's
# packages: installed when this runs as root with apt (CI does); elsewhere the tests that need them say so and
# skip. Debian keeps PostgreSQL's programs off PATH, in /usr/lib/postgresql/<version>/bin.
CLUSTER_PROGRAMS := redis-server haproxy
cluster-deps:
	@missing=""; for p in $(CLUSTER_PROGRAMS); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then missing="$$missing postgresql"; fi; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing$$missing (Debian packages) for the cluster tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends$$missing >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends$$missing >/dev/null; }; \
	else echo "note:$$missing not installed (needs root and apt): the cluster tests will skip"; fi

setup: $(VENV)/.synced $(VENV)/bin/conduit-confine cluster-deps ## virtualenv, Python deps, Deno (PyPI `deno`), Pyodide (npm), native launcher

run: setup ## start Conduit over Streamable HTTP with the demo upstreams
	$(VENV)/bin/conduit serve --config $(CONFIG)

test: setup $(VENV)/.ts-client $(VENV)/.reference-upstreams $(VENV)/.client-clis ## lint, type-check and run the whole test suite
	$(VENV)/bin/ruff check src tests examples bench
	$(VENV)/bin/ruff format --check src tests examples bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check src tests examples bench
	$(VENV)/bin/ruff format --check src tests examples bench

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(VENV)/bin/python bench/run.py

soak: setup
	$(VENV)/bin/python bench/soak.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
