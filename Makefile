# Two commands: `make run` (dashboard) and `make test` (every test). Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: setup setup-dev run test test-fast lint system-packages bench train clean pacs-demo

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(DEV_STAMP)

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

run: $(STAMP)
	$(PY) -m streamlit run app.py

# Real components the tests start themselves, from Debian's packages: Chromium for the browser
# tests (Playwright cannot download its own browsers here), Orthanc + its DICOMweb plugin for the
# PACS tests, the sqlite3 shell for the tamper tests.
SYSTEM_PACKAGES := chromium orthanc orthanc-dicomweb sqlite3
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq $$missing >/dev/null) || echo "warning: could not install$$missing; their tests will skip"; fi

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .

test: $(DEV_STAMP) system-packages lint
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

train: $(STAMP)
	$(PY) -m pneumo_core train

bench: $(STAMP)
	$(PY) bench/run_all.py

# A local Orthanc with a few site films as DICOM, and the watcher scoring them (needs a model: make train).
pacs-demo: $(STAMP) system-packages
	$(PY) scripts/pacs_demo.py

clean:
	rm -rf $(VENV) .pneumo
