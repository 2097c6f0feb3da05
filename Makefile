# The two commands of the README:
#   make run   install everything, run tracerd in the foreground with a development config of
#              the checkout: .run/tracerd.toml, its socket, logs and crash reports under .run/
#              (never /etc/tracerd, /run/tracerd, /var/log/tracerd, /var/lib/tracerd)
#   make test  install everything, run lint, types and the whole test suite
# Both are safe to repeat; they install only what is missing.
#
#   make install    (root) tracerd as a system daemon: a venv in /opt/tracerd,
#                   commands linked into $(PREFIX)/sbin and $(PREFIX)/bin, unit,
#                   config (only if absent), man pages, completion, logrotate
#   make uninstall  removes exactly what install added (see README "Install")
# For packagers: make install DESTDIR=/tmp/stage PREFIX=/usr

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := strace ltrace gdb gdbserver linux-perf gcc libc6-dev make binutils util-linux procps systemd postfix groff-base man-db python3-venv rsyslog prometheus debuginfod elfutils bpftrace bpftool

# make install: the system's own interpreter, never one under a home directory
# (root's python3 may be a private build under /root that nobody else may run).
SYSTEM_PYTHON ?= /usr/bin/python3
DESTDIR ?=
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
OPTDIR ?= /opt/tracerd
SBINDIR := $(PREFIX)/sbin
BINDIR := $(PREFIX)/bin
MANDIR := $(PREFIX)/share/man
COMPLETIONDIR := $(PREFIX)/share/bash-completion/completions
UNITDIR := $(SYSCONFDIR)/systemd/system
CONFDIR := $(SYSCONFDIR)/tracerd
LOGROTATEDIR := $(SYSCONFDIR)/logrotate.d
MAN8 := pftrace-hook.8 tracerd.8 tracerctl.8
MAN5 := tracerd.toml.5
# the shipped files name /usr/local/{s,}bin; another PREFIX is written into the installed copies
PATHS_SED := sed -e 's|/usr/local/sbin/|$(SBINDIR)/|g' -e 's|/usr/local/bin/|$(BINDIR)/|g'
STAMP := $(VENV)/.installed
# pftrace-hook is compiled from hook/pftrace-hook.c (docs/performance.md "Hook latency": Postfix waits for it
# on every traced process start); with no C compiler, make writes the Python form instead, this
# stub (python -IS, the hook module alone), never pip's entry point.
# $(call hook_stub,INTERPRETER,DIRECTORY OF hook.py,OUTPUT)
HOOK_STUB := contrib/pftrace-hook.in
hook_stub = sed -e "s|@PYTHON@|$(1)|" -e "s|@HOOKDIR@|$(2)|" $(HOOK_STUB) > "$(3).new" && chmod 0755 "$(3).new" && mv -f "$(3).new" "$(3)"
HOOK_C := hook/pftrace-hook.c
HOOK_VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
HOOK_CFLAGS ?= -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE -pie -Wl,-z,relro,-z,now
# $(call hook_build,OUTPUT,INTERPRETER,DIRECTORY OF hook.py): compiled, else (no $(CC)) the stub
hook_build = if command -v $(CC) >/dev/null 2>&1; then \
	  $(CC) $(HOOK_CFLAGS) -DVERSION='"$(HOOK_VERSION)"' -o "$(1).new" $(HOOK_C) && chmod 0755 "$(1).new" && mv -f "$(1).new" "$(1)"; \
	else echo "make: no C compiler ($(CC)): $(1) is the Python form, slower to start (README \"Hook latency\")"; \
	  $(call hook_stub,$(2),$(3),$(1)); fi

.PHONY: run test deps apt venv lint bench clean install uninstall

# make run's development config, written on each run: every path under RUNDIR, so that neither
# TRACERD_CONFIG nor an installed /etc/tracerd/tracerd.toml nor root's defaults apply
RUNDIR ?= $(CURDIR)/.run
run: deps
	@install -d -m 0700 "$(RUNDIR)"
	@printf '%s\n' '# written by make run: the development config of this checkout' \
	  'socket = "$(RUNDIR)/tracerd.sock"' 'log_dir = "$(RUNDIR)/log"' 'state_dir = "$(RUNDIR)/state"' \
	  > "$(RUNDIR)/tracerd.toml"
	@echo "make run: tracerd --config $(RUNDIR)/tracerd.toml: socket $(RUNDIR)/tracerd.sock, logs $(RUNDIR)/log," \
	  "crash reports $(RUNDIR)/state/crashes; the rest built-in defaults (README \"The two commands\")"
	@echo "make run: TRACERD_SOCKET=$(RUNDIR)/tracerd.sock $(BIN)/tracerctl status"
	exec $(BIN)/tracerd --config "$(RUNDIR)/tracerd.toml" $(ARGS)

# pytest-xdist: 4 workers on 2 cores (the tests mostly wait on their processes); tests that share a
# system resource carry one @pytest.mark.xdist_group and run on one worker (README "Development").
# One file alone: .venv/bin/pytest tests/test_watch.py -q (or make test PYTEST_ARGS=tests/test_watch.py)
PYTEST_ARGS ?= -n 4 --dist loadgroup --durations=25
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
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing; \
	fi

venv: $(STAMP) $(BIN)/pftrace-hook

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# make run's hook: compiled (else the venv's interpreter and the checkout's tracerd/hook.py)
$(BIN)/pftrace-hook: $(HOOK_C) $(HOOK_STUB) $(STAMP) pyproject.toml
	@$(call hook_build,$@,$(abspath $(BIN))/python,$(CURDIR)/tracerd)

# The venv is built where it will run (DESTDIR + OPTDIR) by the system
# interpreter.  pip writes the absolute path of the venv's python into every
# script's #! line, and venv writes it into activate*: with a DESTDIR those
# name the staging directory, so they are rewritten to OPTDIR, and all the
# bytecode is compiled again with DESTDIR stripped; the venv then runs once moved
# to OPTDIR (its bin/python is a link to SYSTEM_PYTHON, pyvenv.cfg names
# only SYSTEM_PYTHON's directory).
install:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then echo "make install: run as root (or set DESTDIR)"; exit 1; fi
	@$(SYSTEM_PYTHON) -c 'import ensurepip, venv' 2>/dev/null || \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv)
	@[ -x "$(DESTDIR)$(OPTDIR)/bin/python" ] || $(SYSTEM_PYTHON) -m venv "$(DESTDIR)$(OPTDIR)"
	@# setuptools builds in ./build and would carry a module deleted since into the wheel
	rm -rf build
	"$(DESTDIR)$(OPTDIR)/bin/python" -m pip install -q --no-compile --no-cache-dir --force-reinstall --no-deps .
	"$(DESTDIR)$(OPTDIR)/bin/python" -m pip install -q --no-compile .
	@# the hook: compiled, else the system interpreter with -IS and the installed tracerd/hook.py alone
	@# (docs/performance.md "Hook latency")
	hookdir="$$("$(DESTDIR)$(OPTDIR)/bin/python" -I -c 'import tracerd; print(tracerd.__path__[0])')" && \
	  $(call hook_build,$(DESTDIR)$(OPTDIR)/bin/pftrace-hook,$(SYSTEM_PYTHON),$$hookdir)
	@if [ -n "$(DESTDIR)" ]; then \
	  grep -lrIF "$(DESTDIR)$(OPTDIR)" "$(DESTDIR)$(OPTDIR)/bin" "$(DESTDIR)$(OPTDIR)/pyvenv.cfg" 2>/dev/null \
	    | xargs -r sed -i "s|$(DESTDIR)$(OPTDIR)|$(OPTDIR)|g"; \
	fi
	@"$(DESTDIR)$(OPTDIR)/bin/python" -m compileall -q $(if $(DESTDIR),-f -s "$(DESTDIR)") "$(DESTDIR)$(OPTDIR)/lib" >/dev/null
	install -d "$(DESTDIR)$(SBINDIR)" "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(MANDIR)/man8" "$(DESTDIR)$(MANDIR)/man5" \
	  "$(DESTDIR)$(COMPLETIONDIR)" "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(LOGROTATEDIR)"
	ln -sfn "$(OPTDIR)/bin/pftrace-hook" "$(DESTDIR)$(SBINDIR)/pftrace-hook"
	ln -sfn "$(OPTDIR)/bin/tracerd" "$(DESTDIR)$(SBINDIR)/tracerd"
	ln -sfn "$(OPTDIR)/bin/tracerctl" "$(DESTDIR)$(BINDIR)/tracerctl"
	$(PATHS_SED) systemd/tracerd.service > "$(DESTDIR)$(UNITDIR)/tracerd.service"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/tracerd.service"
	@for unit in systemd/*.socket; do [ -f "$$unit" ] || continue; \
	  install -m 0644 "$$unit" "$(DESTDIR)$(UNITDIR)/"; done
	$(PATHS_SED) contrib/logrotate.tracerd > "$(DESTDIR)$(LOGROTATEDIR)/tracerd"
	chmod 0644 "$(DESTDIR)$(LOGROTATEDIR)/tracerd"
	install -m 0644 contrib/tracerctl.bash-completion "$(DESTDIR)$(COMPLETIONDIR)/tracerctl"
	for page in $(MAN8); do $(PATHS_SED) "man/$$page" > "$(DESTDIR)$(MANDIR)/man8/$$page"; done
	for page in $(MAN5); do $(PATHS_SED) "man/$$page" > "$(DESTDIR)$(MANDIR)/man5/$$page"; done
	chmod 0644 $(foreach page,$(MAN8),"$(DESTDIR)$(MANDIR)/man8/$(page)") $(foreach page,$(MAN5),"$(DESTDIR)$(MANDIR)/man5/$(page)")
	@# the config only if absent; then a copy of what was put there, OPTDIR/share/tracerd.toml.installed,
	@# tells uninstall that install created it and whether the admin changed it since
	@install -d "$(DESTDIR)$(OPTDIR)/share"
	@if [ ! -e "$(DESTDIR)$(CONFDIR)/tracerd.toml" ]; then \
	  install -d -m 0755 "$(DESTDIR)$(CONFDIR)"; \
	  install -m 0644 contrib/tracerd.toml.example "$(DESTDIR)$(CONFDIR)/tracerd.toml"; \
	  install -m 0644 contrib/tracerd.toml.example "$(DESTDIR)$(OPTDIR)/share/tracerd.toml.installed"; \
	  echo "installed $(DESTDIR)$(CONFDIR)/tracerd.toml"; \
	else echo "kept $(DESTDIR)$(CONFDIR)/tracerd.toml"; fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi

# Removes what install added.  /etc/tracerd/tracerd.toml goes only if install
# created it and it is still byte for byte what install put there; a changed
# one, or one that was there before, stays.
# Logs, crash reports and the socket (/var/log/tracerd, /var/lib/tracerd,
# /run/tracerd) are tracerd's data, not installed files: they stay, and uninstall lists them.
# First (not for a DESTDIR: a staged tree runs nothing), contrib/uninstall.py: every Postfix instance
# whose debugger_command runs this install's hook gets `tracerctl postfix disable` for each service
# enabled (else it refuses, says how, and nothing is removed); then it lists the data that stays.
# POSTFIX_CONFIG_DIRS: more instances to check than the default one, postmulti's and running masters'.
POSTFIX_CONFIG_DIRS ?=
uninstall:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then echo "make uninstall: run as root (or set DESTDIR)"; exit 1; fi
	@if [ -z "$(DESTDIR)" ]; then $(SYSTEM_PYTHON) -I contrib/uninstall.py --sbindir "$(SBINDIR)" --optdir "$(OPTDIR)" \
	  --config "$(CONFDIR)/tracerd.toml" $(foreach dir,$(POSTFIX_CONFIG_DIRS),--postfix "$(dir)"); fi
	@if [ -f "$(DESTDIR)$(CONFDIR)/tracerd.toml" ] && [ -f "$(DESTDIR)$(OPTDIR)/share/tracerd.toml.installed" ] && \
	  cmp -s "$(DESTDIR)$(CONFDIR)/tracerd.toml" "$(DESTDIR)$(OPTDIR)/share/tracerd.toml.installed"; then \
	  rm -f "$(DESTDIR)$(CONFDIR)/tracerd.toml"; rmdir "$(DESTDIR)$(CONFDIR)" 2>/dev/null || true; \
	elif [ -e "$(DESTDIR)$(CONFDIR)/tracerd.toml" ]; then echo "kept $(DESTDIR)$(CONFDIR)/tracerd.toml (changed since install)"; fi
	for link in "$(SBINDIR)/pftrace-hook" "$(SBINDIR)/tracerd" "$(BINDIR)/tracerctl"; do \
	  if [ -L "$(DESTDIR)$$link" ] && [ "$$(readlink "$(DESTDIR)$$link")" = "$(OPTDIR)/bin/$${link##*/}" ]; then \
	    rm -f "$(DESTDIR)$$link"; fi; done
	rm -f "$(DESTDIR)$(UNITDIR)/tracerd.service" "$(DESTDIR)$(LOGROTATEDIR)/tracerd" "$(DESTDIR)$(COMPLETIONDIR)/tracerctl"
	@for unit in systemd/*.socket; do [ -f "$$unit" ] || continue; rm -f "$(DESTDIR)$(UNITDIR)/$${unit##*/}"; done
	for page in $(MAN8); do rm -f "$(DESTDIR)$(MANDIR)/man8/$$page"; done
	for page in $(MAN5); do rm -f "$(DESTDIR)$(MANDIR)/man5/$$page"; done
	rm -rf "$(DESTDIR)$(OPTDIR)"
	@# the directories install may have created, once empty (PREFIX/sbin, PREFIX/bin, SYSCONFDIR's stay)
	@for dir in "$(MANDIR)/man8" "$(MANDIR)/man5" "$(COMPLETIONDIR)" "$(dir $(COMPLETIONDIR))"; do \
	  rmdir "$(DESTDIR)$$dir" 2>/dev/null || true; done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi

bench: deps
	$(BIN)/python bench/hook_latency.py
	$(BIN)/python bench/crash_latency.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/watch_scale.py
	$(BIN)/python bench/reliability.py
	$(BIN)/python bench/postfix.py
	$(BIN)/python bench/metrics_cost.py

clean:
	rm -rf $(VENV) .run build *.egg-info .pytest_cache .mypy_cache .ruff_cache
