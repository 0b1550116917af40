# The two commands of the README. Both set up .venv first (scripts/setup.sh, idempotent).
.PHONY: setup quickstart test test-unit lint

setup:
	./scripts/setup.sh

quickstart: setup
	.venv/bin/python -m raysweep run search_spaces/quickstart.yaml

test: setup
	.venv/bin/python -m pytest tests

test-unit: setup
	.venv/bin/python -m pytest tests -m "not integration"

lint: setup
	.venv/bin/ruff check .
