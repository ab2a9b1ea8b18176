#!/usr/bin/env bash
# Make sure headless Chromium is at /usr/bin/chromium for the UI tests (tests/ui).
# Uses Debian's `chromium` package: browser downloads from elsewhere (Playwright's
# own) need network access the test machines do not have. Quiet and a no-op when
# Chromium is already there; without root it only says how to install it, so
# `make test` still runs and the UI test fails with that message.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get > /dev/null; then
    echo "ensure_chromium: $CHROMIUM not found; the UI tests (tests/ui) need it." >&2
    echo "ensure_chromium: install it as root: apt-get update && apt-get install -y chromium" >&2
    exit 0
fi

echo "ensure_chromium: installing Debian's chromium package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium > /dev/null
"$CHROMIUM" --version >&2
