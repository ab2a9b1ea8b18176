#!/usr/bin/env bash
# Make sure etcd is installed for the multi-host rendezvous tests (tests/training/multihost):
# Debian's `etcd-server` package (etcd 3.4, which still serves the v2 API that torch's
# etcd-v2 rendezvous backend speaks when started with --enable-v2). Quiet and a no-op when
# etcd is already there; without root it only says how to install it, so `make test`
# still runs and the etcd test fails with that message.
set -euo pipefail

if command -v etcd > /dev/null; then
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get > /dev/null; then
    echo "ensure_etcd: etcd not found; the multi-host etcd rendezvous test needs it." >&2
    echo "ensure_etcd: install it as root: apt-get update && apt-get install -y etcd-server" >&2
    exit 0
fi

echo "ensure_etcd: installing Debian's etcd-server package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's service is not wanted: the tests start etcd themselves in a namespace.
apt-get install -y -qq --no-install-recommends etcd-server > /dev/null
etcd --version | head -1 >&2
