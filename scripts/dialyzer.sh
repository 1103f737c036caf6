#!/usr/bin/env bash
# Runs OTP's own dialyzer (no hex tools) over Snakepit's compiled modules.
# The PLT (OTP, Elixir, Logger, Mix, EEx) is built once into _build/ and
# reused; the first run takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '==> %s\n' "$*"; }

LIB=$(elixir -e 'IO.write(Path.expand(Path.join(:code.lib_dir(:elixir), "..")))')
PLT=_build/snakepit-v2.plt
if [ ! -f "$PLT" ]; then
  say "building the PLT $PLT (once)"
  # Warnings about OTP/Elixir's own unknown calls are not ours: logged aside.
  dialyzer -pa "$LIB/elixir/ebin" --build_plt --output_plt "$PLT" \
    --apps erts kernel stdlib crypto compiler \
    -r "$LIB/elixir/ebin" "$LIB/logger/ebin" "$LIB/mix/ebin" "$LIB/eex/ebin" "$LIB/iex/ebin" \
    > _build/dialyzer_plt.log 2>&1 || true
  [ -f "$PLT" ] || { echo "PLT build failed: see _build/dialyzer_plt.log"; exit 1; }
fi
MIX_ENV=dev mix compile >/dev/null
# The native compiler (mix_native.exs) lives outside lib/: compiled aside so
# that it is checked too, and the tasks that call it resolve.
NATIVE=_build/dialyzer_native
rm -rf "$NATIVE" && mkdir -p "$NATIVE"
elixirc --ignore-module-conflict -o "$NATIVE" mix_native.exs >/dev/null
say "dialyzer over _build/dev/lib/snakepit/ebin and mix_native.exs"
dialyzer -pa "$LIB/elixir/ebin" --plt "$PLT" --no_check_plt \
  -Wno_improper_lists \
  _build/dev/lib/snakepit/ebin "$NATIVE"
