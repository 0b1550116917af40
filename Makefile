# The two commands of the README. Both set up .venv first (scripts/setup.sh, idempotent).
.PHONY: setup quickstart test test-unit lint

setup:
	./scripts/setup.sh

quickstart: setup
	.venv/bin/python -m raysweep run search_spaces/quickstart.yaml

# two test processes, whole files each (module fixtures run once): the Ray tests wait on processes and
# start-ups half of the time, so two of them share 2 cores well (tests/conftest.py orders the files)
test: setup
	.venv/bin/python -m pytest tests -n 2 --dist loadfile

test-unit: setup
	.venv/bin/python -m pytest tests -m "not integration"

lint: setup
	.venv/bin/ruff check .
