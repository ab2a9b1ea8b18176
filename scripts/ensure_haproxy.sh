#!/usr/bin/env bash
# Make sure HAProxy is installed for the gateway fleet tests (tests/serving/test_gateway_fleet.py):
# Debian's `haproxy` package, a real load balancer in front of the gateway replicas. Quiet and
# a no-op when haproxy is already there; without root it only says how to install it, so
# `make test` still runs and the fleet tests fail with that message.
set -euo pipefail

if command -v haproxy > /dev/null || [[ -x /usr/sbin/haproxy ]]; then
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get > /dev/null; then
    echo "ensure_haproxy: haproxy not found; the gateway fleet tests need it." >&2
    echo "ensure_haproxy: install it as root: apt-get update && apt-get install -y haproxy" >&2
    exit 0
fi

echo "ensure_haproxy: installing Debian's haproxy package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's service is not wanted: the tests start haproxy themselves on free ports.
apt-get install -y -qq --no-install-recommends haproxy > /dev/null
haproxy -v | head -1 >&2
