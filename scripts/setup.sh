#!/usr/bin/env bash
# Installs what a fresh Debian (bookworm) machine lacks to build and test
# Snakepit, then builds it. Idempotent: each step checks before it acts, so a
# second run is a fast no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SNAKEPIT_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

say() { printf '==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

elixir_ok() {
  command -v elixir >/dev/null 2>&1 &&
    elixir -e 'v = Version.parse!(System.version()); otp = String.to_integer(System.otp_release()); System.halt(if Version.match?(v, ">= 1.18.0") and otp >= 27, do: 0, else: 1)' >/dev/null 2>&1
}

install_elixir() {
  say "installing Elixir 1.18 / OTP 27 from Debian trixie (pinned: nothing else comes from it)"
  if [ ! -f /etc/apt/sources.list.d/snakepit-trixie.sources ]; then
    as_root tee /etc/apt/sources.list.d/snakepit-trixie.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  # Default priority for trixie is below bookworm's, so only the packages we
  # name with -t trixie (and what they strictly need) come from it.
  as_root tee /etc/apt/preferences.d/snakepit-trixie >/dev/null <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq -t trixie \
    elixir erlang-dev erlang-src erlang-xmerl erlang-os-mon erlang-dialyzer >/dev/null
}

dialyzer_ok() { command -v dialyzer >/dev/null 2>&1; }

if elixir_ok && dialyzer_ok; then
  say "Elixir $(elixir -e 'IO.write(System.version())') / OTP $(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().') already present"
else
  install_elixir
fi

if ! command -v cargo >/dev/null 2>&1; then
  say "installing Rust (rustup, stable)"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
fi
export PATH="$HOME/.cargo/bin:$PATH"

if [ ! -x "$VENV/bin/python" ]; then
  say "creating Python virtualenv at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# The requirements come from python/pyproject.toml, the one list of them.
REQ=$(mktemp)
"$VENV/bin/python" scripts/python_requirements.py dev > "$REQ"
STAMP="$VENV/.snakepit-requirements"
if [ ! -f "$STAMP" ] || ! cmp -s "$REQ" "$STAMP"; then
  say "installing Python requirements into $VENV (from python/pyproject.toml)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$REQ"
  cp "$REQ" "$STAMP"
else
  say "Python requirements already installed in $VENV"
fi

say "building (mix compile builds the Rust NIF and mirrors the Python bridge into priv/)"
export MIX_ENV=${MIX_ENV:-test}
mix compile --warnings-as-errors
say "setup done"
