# Two entry points (see README): `make book` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PROFILE ?= cpu

.PHONY: book test install clean-book

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(BIN)/.installed

# Regenerates stale chapters (content hashes decide), then builds the HTML book (warnings = errors).
book: $(BIN)/.installed
	$(BIN)/bus-paper run --profile $(PROFILE)
	$(BIN)/bus-paper book
	@echo "book: file://$(CURDIR)/book/_build/html/index.html"

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n auto --dist worksteal

clean-book:
	rm -rf book/_build
