# Unposed: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: demo test test-fast extension validate bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed
	$(PY) -m devtools.demo --out $(OUT)/demo

# Build the installable extension zip into dist/ (Blender's own extension tool, shipped in the bpy wheel).
extension: $(VENV)/.installed
	$(PY) -m devtools.extension build --out dist

validate: $(VENV)/.installed
	$(PY) -m devtools.extension validate

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf $(OUT) dist build
