# The two commands of the README:
#   make run   install everything, run tracerd in the foreground (built-in defaults)
#   make test  install everything, run lint, types and the whole test suite
# Both are safe to repeat; they install only what is missing.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := strace ltrace gdb gcc libc6-dev make binutils util-linux procps systemd postfix
STAMP := $(VENV)/.installed

.PHONY: run test deps apt venv lint bench clean

run: deps
	$(BIN)/tracerd $(ARGS)

test: deps
	$(BIN)/ruff check tracerd tests bench
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

deps: apt venv

# apt: only as root, only what is missing; postfix is preseeded so that its
# install neither asks questions nor configures a system mailer.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make: missing apt packages:$$missing (run as root to install)"; exit 1; fi; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

bench: deps
	$(BIN)/python bench/hook_latency.py
	$(BIN)/python bench/crash_latency.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/watch_scale.py
	$(BIN)/python bench/reliability.py
	$(BIN)/python bench/postfix.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
