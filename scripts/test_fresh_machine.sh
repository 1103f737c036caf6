#!/usr/bin/env bash
# Runs scripts/setup.sh and the main demo on a fresh, minimal Debian system:
# a debootstrap chroot of the given release (bookworm = Debian 12, trixie =
# Debian 13), with nothing but Debian's minimal base installed. Slow (it
# downloads a base system and every package the setup installs), so it is
# not part of `make test`:
#
#     sudo bash scripts/test_fresh_machine.sh trixie
#     sudo bash scripts/test_fresh_machine.sh bookworm
#
# Needs root (debootstrap, chroot, mounts) and Debian's package mirror. It
# lends the chroot the host's local CA certificates (for a proxy that
# inspects TLS) and a Rust toolchain: rustup's download server
# may be out of reach (it is in the sandbox this project is developed in),
# so the host's ~/.rustup and ~/.cargo are bind-mounted read-only where
# rustup would put them; everything else the setup installs itself. Pass
# NO_HOST_RUST=1 to let the setup fetch Rust with rustup instead.
#
# Leaves the chroot in $BASE/<release> (default /tmp/snakepit-fresh) for
# inspection; a second run starts from a new one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RELEASE=${1:?usage: test_fresh_machine.sh bookworm|trixie}
BASE=${BASE:-/tmp/snakepit-fresh}
CHROOT=$BASE/$RELEASE
MIRROR=${MIRROR:-http://deb.debian.org/debian}

say() { printf '==> [%s] %s\n' "$RELEASE" "$*"; }

[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
case "$RELEASE" in bookworm | trixie) ;; *) echo "release: bookworm or trixie" >&2; exit 1 ;; esac

if ! command -v debootstrap >/dev/null 2>&1; then
  say "installing debootstrap on the host"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

mounts=()
cleanup() {
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { mkdir -p "$2"; mount --bind "$1" "$2"; mounts+=("$2"); }

rm -rf "$CHROOT"
mkdir -p "$BASE"
say "debootstrap --variant=minbase $RELEASE into $CHROOT"
debootstrap --variant=minbase "$RELEASE" "$CHROOT" "$MIRROR" >/dev/null

say "copying the working tree (tracked and untracked, not ignored files) to /root/snakepit"
mkdir -p "$CHROOT/root/snakepit"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$CHROOT/root/snakepit"

cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
# A proxy that inspects TLS (a sandbox's, a company's) signs with a CA of
# its own: the host's local CAs and pip settings go along, and the setup's
# install of ca-certificates trusts them.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  say "lending the host's local CA certificates"
  mkdir -p "$CHROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$CHROOT/usr/local/share/ca-certificates/"
fi
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$CHROOT/etc/pip.conf"
mount -t proc proc "$CHROOT/proc" && mounts+=("$CHROOT/proc")
bind /sys "$CHROOT/sys"
bind /dev "$CHROOT/dev"
mkdir -p "$CHROOT/dev/shm"
mount -t tmpfs tmpfs "$CHROOT/dev/shm" && mounts+=("$CHROOT/dev/shm")

if [ -z "${NO_HOST_RUST:-}" ] && [ -d "$HOME/.rustup" ] && [ -d "$HOME/.cargo" ]; then
  say "lending the host's Rust toolchain (read-only) in place of rustup's download"
  bind "$HOME/.rustup" "$CHROOT/root/.rustup"
  bind "$HOME/.cargo" "$CHROOT/root/.cargo"
  mount -o remount,bind,ro "$CHROOT/root/.rustup"
  # Cargo keeps its registry cache in CARGO_HOME: a writable one of its own.
  RUST_ENV="CARGO_HOME=/root/cargo-home RUSTUP_HOME=/root/.rustup PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
else
  RUST_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
fi

say "running scripts/setup.sh in the chroot"
chroot "$CHROOT" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 $RUST_ENV \
  bash -c 'cd /root/snakepit && bash scripts/setup.sh'

say "running the main demo (make demo) in the chroot"
chroot "$CHROOT" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 $RUST_ENV \
  bash -c 'cd /root/snakepit && make demo' | tee "$BASE/$RELEASE-demo.log"

say "setup and demo passed on a fresh $RELEASE"
