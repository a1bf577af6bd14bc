# Two commands: `make run` (dashboard) and `make test` (every test). Both set up .venv first.
# `make test-fast` runs the unit tier alone (tests/unit).
# The environment is pinned whole: `make` installs the lock files (every transitive package, with
# hashes) made by `make lock` from the hand-edited requirements*.txt. `make setup GPU=1` on a GPU
# server installs tensorflow[and-cuda] of the same version instead of tensorflow-cpu.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Once set up with GPU=1, later commands keep the GPU build (no reinstall of the CPU one over it).
GPU ?= $(if $(wildcard $(VENV)/.installed-gpu),1,)
LOCK := $(if $(GPU),requirements-gpu.lock,requirements.lock)
STAMP := $(VENV)/.installed$(if $(GPU),-gpu)
DEV_STAMP := $(VENV)/.installed-dev
PIP_COMPILE := $(VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links

.PHONY: setup setup-dev run test test-fast lint docs lock system-packages bench train clean pacs-demo

# uv (pinned with its hashes in requirements-uv.lock) installs the locks: the same hash-checked files pip would,
# fetched and unpacked in parallel, where pip took ~85 s on the 2-core CI machine. pip is the fallback where uv
# cannot reach the package index (uv does not read pip.conf, e.g. a hospital's own index).
install_lock = $(VENV)/bin/uv pip install --quiet --python $(PY) --require-hashes -r $(1) || \
	{ echo "uv could not install $(1); pip will"; $(PY) -m pip install --quiet --require-hashes -r $(1); }
# Then the installed modules are compiled to .pyc once: where PYTHONDONTWRITEBYTECODE is set (as on CI) nothing else
# writes them, and every process would compile TensorFlow again (import 13.5 s of CPU instead of 5.4 s). The packages'
# own tests/ folders and pip/setuptools are left out (nothing here imports them; a fifth of the 197 MB of source),
# and two compileall processes take batches of packages. On the 2-core CI machine: uv's --compile-bytecode ~19 s, and
# compileall -j0 17 s for all of it, 13 s without the tests (its pool costs ~0.6 ms a file: 7 s even when everything is
# compiled already); this 11 s, and 0.5 s when all is compiled. A module that fails to compile does when imported.
# The pattern starts at site-packages/: a clone under a folder named tests/ still gets everything compiled.
SITE_PACKAGES = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
compile_installed = ls -d $(SITE_PACKAGES)/* | xargs -P2 -n 16 $(PY) -m compileall -q \
	-x 'site-packages/(pip|setuptools|.*/(tests?|testing))/' > /dev/null || echo "some modules did not compile; they will on import"

$(STAMP): $(LOCK) pyproject.toml requirements-uv.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-uv.lock
	$(call install_lock,$(LOCK))
	$(compile_installed)
	@# pneumo_core itself, editable and without dependencies (the lock holds them), so scripts outside
	@# the repository root (bench/) import it without path edits.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.lock
	$(if $(GPU),$(error the test tools are locked with the CPU build (requirements-dev.lock); run the tests in \
		a venv of their own: make test VENV=.venv-test),)
	$(call install_lock,requirements-dev.lock)
	$(compile_installed)
	touch $(DEV_STAMP)

# Regenerate the locks after editing requirements*.txt (needs the package index; a few minutes).
# The GPU lock is requirements.txt with tensorflow-cpu swapped for tensorflow[and-cuda] of the same version.
lock:
	$(PY) -m pip install --quiet pip-tools==7.6.2
	$(PIP_COMPILE) -o requirements.lock requirements.txt
	$(PIP_COMPILE) -o requirements-dev.lock requirements.txt requirements-dev.txt
	$(PIP_COMPILE) -o requirements-uv.lock requirements-uv.txt
	sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' requirements.txt > requirements-gpu.in
	$(PIP_COMPILE) -o requirements-gpu.lock requirements-gpu.in
	rm requirements-gpu.in

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

# The address and, on a fresh server, the one-time setup code are printed before any browser visits.
# Another port: STREAMLIT_SERVER_PORT=8502 make run (Streamlit reads it).
run: $(STAMP)
	$(PY) -m pneumo_core users first-start --url http://localhost:$${STREAMLIT_SERVER_PORT:-8501}
	$(PY) -m streamlit run app.py

# Real components the tests start themselves, from Debian's packages: Chromium for the browser
# tests (Playwright cannot download its own browsers here), Orthanc + its DICOMweb plugin for the
# PACS tests, the sqlite3 shell for the tamper tests, PostgreSQL for the shared-records tests. Without the
# packages they only recommend (printing, sound, Samba, Perl's web stack: 88 packages more for Chromium alone):
# 16 -> 10 s to install here, and fewer to download.
SYSTEM_PACKAGES := chromium orthanc orthanc-dicomweb nginx-light sqlite3 fonts-dejavu-core postgresql
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $$missing >/dev/null) || echo "warning: could not install$$missing; their tests will skip"; fi

# The documentation site (mkdocs.yml): its reference pages are generated from the code at build time
# (docs/gen_reference.py), so a build with --strict also checks that the docs match the code; nothing is
# downloaded. NO_MKDOCS_2_WARNING quiets mkdocs-material's end-of-life banner.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs

# ruff, then the import contracts of pyproject.toml's [tool.importlinter] (layers, no TensorFlow where it
# must not load, no Streamlit in the library), then the documentation build.
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(MKDOCS) build --strict

# Serves the documentation on http://127.0.0.1:8000 (reloads as pages change).
docs: $(DEV_STAMP)
	$(MKDOCS) serve -a 127.0.0.1:8000

# Three tiers (pytest.ini): tests/unit (make test-fast), tests/integration and tests/e2e. Two workers
# (pytest-xdist); --dist loadfile keeps each file on one worker, so a module's dashboard or archive starts once
# (--dist loadgroup would group by xdist_group mark, but pytest 9.2 ignores those marks: pytest-xdist issue 1386);
# tests/conftest.py orders the files for two workers, and --no-loadscope-reorder keeps that order (xdist would hand
# out the files with the most tests first). The 15 slowest tests are printed to see where the time goes.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -n $(or $(WORKERS),2)

# On a fresh machine the Debian packages (~15 s: downloads, unpacking) are installed beside the Python environment
# (~30 s), not after it; the lint waits for the environment alone.
test:
	@$(MAKE) --no-print-directory -j2 --output-sync=target system-packages lint
	$(PYTEST) --dist loadfile --no-loadscope-reorder --durations=15 tests

test-fast: $(DEV_STAMP)
	$(PYTEST) tests/unit

train: $(STAMP)
	$(PY) -m pneumo_core train

bench: $(STAMP)
	$(PY) bench/run_all.py

# A local Orthanc with a few site films as DICOM, and the watcher scoring them (needs a model: make train).
pacs-demo: $(STAMP) system-packages
	$(PY) scripts/pacs_demo.py

clean:
	rm -rf $(VENV) .pneumo
