#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test Snakepit, then builds
# it. Supported: Debian 12 (bookworm), Debian 13 (trixie) and Ubuntu 24.04,
# on Linux 5.9 or later (Snakepit uses pidfd_open, close_range and sealed
# memory files). Idempotent: each step checks before it acts, so a second run
# is a fast no-op.
#
# Every step that needs root says what it will do before it does it; as root
# it runs directly, otherwise through sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SNAKEPIT_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
# The crates' rust-version (native/*/Cargo.toml).
RUST_MIN=1.91

say() { printf '==> %s\n' "$*"; }
fail() { printf 'setup: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  else
    command -v sudo >/dev/null 2>&1 || fail "this step needs root and sudo is not installed: $*"
    say "(sudo) $*"
    sudo "$@"
  fi
}

# -- the platform -------------------------------------------------------------

[ "$(uname -s)" = Linux ] || fail "Snakepit runs on Linux only (found $(uname -s))"

kernel_ok() {
  local release major minor
  release=$(uname -r)
  major=${release%%.*}
  minor=${release#*.}
  minor=${minor%%[!0-9]*}
  [ "$major" -gt 5 ] || { [ "$major" -eq 5 ] && [ "$minor" -ge 9 ]; }
}
kernel_ok || fail "Snakepit needs Linux 5.9 or later (close_range, pidfd_open); this is $(uname -r)"

OS_ID=unknown
OS_VERSION=unknown
if [ -r /etc/os-release ]; then
  # shellcheck disable=SC1091
  . /etc/os-release
  OS_ID=${ID:-unknown}
  OS_VERSION=${VERSION_ID:-unknown}
fi
case "$OS_ID:$OS_VERSION" in
  debian:12 | debian:13 | ubuntu:24.04) say "platform: $OS_ID $OS_VERSION, Linux $(uname -r)" ;;
  *) say "platform $OS_ID $OS_VERSION is not one this script was tested on (Debian 12/13, Ubuntu 24.04); trying anyway" ;;
esac

APT_UPDATED=
apt_install() {
  command -v apt-get >/dev/null 2>&1 || fail "no apt-get: install these yourself: $*"
  if [ -z "$APT_UPDATED" ]; then
    say "refreshing the package lists (apt-get update)"
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  say "installing system packages: $*"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# -- system packages: a C toolchain (cargo links with cc), Python with venv,
#    curl and certificates (rustup), make -----------------------------------

missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
command -v "$PYTHON" >/dev/null 2>&1 || missing+=(python3)
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  # Debian's python3 ships without ensurepip; venv needs it.
  py_minor=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
  missing+=(python3-venv)
  [ -n "$py_minor" ] && missing+=("python$py_minor-venv")
fi
command -v git >/dev/null 2>&1 || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

# -- Elixir 1.18 / OTP 27 -------------------------------------------------------

elixir_ok() {
  command -v elixir >/dev/null 2>&1 &&
    elixir -e 'v = Version.parse!(System.version()); otp = String.to_integer(System.otp_release()); System.halt(if Version.match?(v, ">= 1.18.0") and otp >= 27, do: 0, else: 1)' >/dev/null 2>&1
}

dialyzer_ok() { command -v dialyzer >/dev/null 2>&1; }

ELIXIR_PKGS=(elixir erlang-dev erlang-src erlang-xmerl erlang-os-mon erlang-dialyzer erlang-parsetools erlang-tools)

install_elixir() {
  case "$OS_ID:$OS_VERSION" in
    debian:12)
      say "Debian 12's Elixir is too old: adding Debian trixie as a pinned source (priority 100: only what is named with -t trixie comes from it)"
      if [ ! -f /etc/apt/sources.list.d/snakepit-trixie.sources ]; then
        as_root tee /etc/apt/sources.list.d/snakepit-trixie.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
      fi
      as_root tee /etc/apt/preferences.d/snakepit-trixie >/dev/null <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
      APT_UPDATED=
      say "installing Elixir 1.18 / OTP 27 from Debian trixie"
      as_root apt-get update -qq
      DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq -t trixie "${ELIXIR_PKGS[@]}" >/dev/null
      ;;
    ubuntu:*)
      fail "Ubuntu's archive has no Elixir 1.18 / OTP 27: install them first (e.g. with asdf or your organization's Erlang packages; see README, 'Platforms'), then run this script again"
      ;;
    *)
      apt_install "${ELIXIR_PKGS[@]}"
      ;;
  esac
}

if elixir_ok && dialyzer_ok; then
  say "Elixir $(elixir -e 'IO.write(System.version())') / OTP $(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().') already present"
else
  install_elixir
  elixir_ok || fail "Elixir 1.18 / OTP 27 are still missing after installing them"
fi

# -- Rust (cargo and rustc at least $RUST_MIN, rustfmt, clippy) ---------------

export PATH="$HOME/.cargo/bin:$PATH"

rust_ok() {
  command -v cargo >/dev/null 2>&1 && command -v rustc >/dev/null 2>&1 || return 1
  local have
  have=$(rustc --version | awk '{print $2}')
  [ "$(printf '%s\n%s\n' "$RUST_MIN" "$have" | sort -V | head -n1)" = "$RUST_MIN" ]
}

if rust_ok; then
  say "Rust $(rustc --version | awk '{print $2}') already present"
else
  if command -v rustc >/dev/null 2>&1; then
    say "Rust $(rustc --version | awk '{print $2}') is older than the crates' rust-version $RUST_MIN: installing current stable with rustup into ~/.cargo (the system's stays where it is, later on PATH)"
  else
    say "installing Rust (stable, with rustup, into ~/.cargo)"
  fi
  if command -v rustup >/dev/null 2>&1; then
    rustup toolchain install stable --profile minimal --component rustfmt,clippy
    rustup default stable
  else
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy
  fi
  hash -r
  rust_ok || fail "Rust $RUST_MIN or later is still missing after rustup"
fi

# -- Python virtualenv with the worker's requirements -------------------------

if [ ! -x "$VENV/bin/python" ]; then
  say "creating Python virtualenv at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# The requirements come from python/pyproject.toml, the one list of them.
REQ=$(mktemp)
"$VENV/bin/python" scripts/python_requirements.py dev > "$REQ"
STAMP="$VENV/.snakepit-requirements"
if [ ! -f "$STAMP" ] || ! cmp -s "$REQ" "$STAMP"; then
  say "installing Python requirements into $VENV (from python/pyproject.toml; $(wc -l < "$REQ") packages, progress below)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  LOG=$(mktemp)
  set +e
  "$VENV/bin/python" -m pip install --progress-bar off -r "$REQ" 2>&1 | tee "$LOG" |
    grep --line-buffered -E '^(Collecting|Successfully installed)' | sed -u 's/^/    /'
  status=${PIPESTATUS[0]}
  set -e
  [ "$status" = 0 ] || { cat "$LOG" >&2; fail "pip could not install the requirements (above)"; }
  cp "$REQ" "$STAMP"
else
  say "Python requirements already installed in $VENV"
fi

say "building (mix compile builds the Rust NIF and mirrors the Python bridge into priv/)"
export MIX_ENV=${MIX_ENV:-test}
mix compile --warnings-as-errors
say "setup done"
