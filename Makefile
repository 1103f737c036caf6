# The two commands that work on a fresh machine:
#   make demo   a pool of real Python workers doing real calls
#   make test   every test: cargo, ExUnit (with real workers) and pytest
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
VENV := $(CURDIR)/.venv

.PHONY: setup demo test test-rust test-elixir test-python lint bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	MIX_ENV=dev mix run examples/quickstart.exs

test: setup test-rust test-elixir test-python

test-rust:
	cargo test --release -p snakepit_core -p snakepit_native

# The integration suites whose calls, streams, cancellation, sessions, tool
# bridge calls and crashes go over the call transport run a second time over
# gRPC, so both call transports stay tested (the whole suite runs on the
# lane). Only files whose tests start workers and make calls: unit tests
# (crash barrier policy, pool state, error translation) do not depend on the
# transport, and the pool's start-up and registry tests make no calls.
GRPC_SUITES := test/snakepit/execute_test.exs test/snakepit/cancellation_test.exs \
	test/snakepit/tool_bridge_test.exs test/snakepit/limits_test.exs \
	test/snakepit/chaos_test.exs test/snakepit/telemetry_test.exs \
	test/snakepit/pool/affinity_test.exs test/snakepit/pool/crash_barrier_integration_test.exs \
	test/snakepit/pool/multi_pool_test.exs test/snakepit/pool/overload_test.exs \
	test/snakepit/pool/queue_test.exs test/snakepit/zero_copy_test.exs \
	test/snakepit/caller_isolation_test.exs \
	test/snakepit/value_limits_test.exs

# `mix test` alone leaves out the :network tests (they reach the package
# index); CI reaches it, so `make test` runs them too.
test-elixir:
	MIX_ENV=test mix test --include network
	SNAKEPIT_TEST_CALL_TRANSPORT=grpc MIX_ENV=test mix test $(GRPC_SUITES)

test-python:
	cd python && $(VENV)/bin/python -m pytest -q

lint: setup
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	python3 scripts/check_rust_cycles.py --self-test && python3 scripts/check_rust_cycles.py
	mix format --check-formatted
	MIX_ENV=test mix compile --warnings-as-errors --force
	cd python && $(VENV)/bin/ruff check snakepit_bridge tests && $(VENV)/bin/mypy
	$(VENV)/bin/python scripts/check_import_cycles.py
	bash scripts/dialyzer.sh

bench: setup
	ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" MIX_ENV=prod mix run bench/pool_throughput.exs
	ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" MIX_ENV=prod mix run bench/call_transport.exs
	MIX_ENV=prod mix run bench/startup.exs
	cargo run --release -q -p snakepit_core --example wakeup_floor


clean:
	rm -rf _build target priv/native priv/python
