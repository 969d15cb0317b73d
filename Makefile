# The two commands of the README: `make demo` and `make test`. Both prepare the machine first.
.PHONY: setup demo test lint bench golden proto conformance

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python examples/quickstart/demo.py

test: setup
	.venv/bin/ruff check src tests $(wildcard bench)
	.venv/bin/mypy
	.venv/bin/python -m pytest -q -p no:cacheprovider

lint: setup
	.venv/bin/ruff check src tests $(wildcard bench)
	.venv/bin/mypy

bench: setup
	.venv/bin/python -m bench

golden: setup
	.venv/bin/python -m pytest -q tests/unit/test_golden.py --update-golden

# Regenerate src/cilia/api/ from proto/ with grpcio-tools' protoc (tests check the checked-in code is fresh).
proto: setup
	.venv/bin/python scripts/gen_proto.py

# Replays the upstream Gateway API conformance scenarios through cilia serve + Envoy (as root: it binds
# ports 80, 443 and 8080 on loopback addresses) and rewrites docs/conformance/.
conformance: setup
	PYTHONPATH=src .venv/bin/python tests/conformance/run.py --report
