#!/usr/bin/env bash
# Installs what tidings needs outside Python, idempotently and quietly:
#   - redis-server / redis-cli            (always)
#   - chromium                            (with --browser)
#   - wrk                                 (with --bench)
#   - the FerretDB launcher binary, built from scripts/ferretdb/ with Go into
#     .cache/bin/ferretdb-v1.24.2, only when missing or older than its sources.
# apt-get (and `apt-get update`) only run when something is missing.
#
# Usage: scripts/install-system.sh [--browser] [--bench]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FERRETDB_VERSION="v1.24.2"
FERRETDB_SRC="$ROOT/scripts/ferretdb"
FERRETDB_BIN="$ROOT/.cache/bin/ferretdb-$FERRETDB_VERSION"
GO_MIN_MINOR=24 # scripts/ferretdb/go.mod says `go 1.24`

want_browser=0
want_bench=0
for arg in "$@"; do
    case "$arg" in
        --browser) want_browser=1 ;;
        --bench) want_bench=1 ;;
        -h | --help)
            sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "install-system: unknown option '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

say() { echo "install-system: $*"; }
die() {
    echo "install-system: ERROR: $*" >&2
    exit 1
}

# Runs a command with its output in a log file; shows the tail only on failure.
quiet() {
    local log
    log="$(mktemp -t install-system.XXXXXX)"
    if ! "$@" >"$log" 2>&1; then
        echo "install-system: ERROR: '$*' failed; last lines:" >&2
        tail -n 30 "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}

# --- Debian packages ---------------------------------------------------------
# Each entry: "file-that-must-exist package [package...]".
checks=("/usr/bin/redis-server redis-server" "/usr/bin/redis-cli redis-tools")
if [ "$want_browser" = 1 ]; then
    checks+=("/usr/bin/chromium chromium fonts-liberation")
fi
if [ "$want_bench" = 1 ]; then
    checks+=("/usr/bin/wrk wrk")
fi

missing=()
for entry in "${checks[@]}"; do
    read -r file pkgs <<<"$entry"
    if [ ! -x "$file" ]; then
        # shellcheck disable=SC2206 # word splitting of the package list is intended
        missing+=($pkgs)
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: ${missing[*]}"
        SUDO=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing[*]}"
    APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq)
    say "apt-get update"
    quiet "${APT[@]}" update
    say "apt-get install ${missing[*]}"
    quiet "${APT[@]}" install -y --no-install-recommends "${missing[@]}"
fi

# --- FerretDB launcher (Go) ----------------------------------------------------
needs_build=0
if [ ! -x "$FERRETDB_BIN" ]; then
    needs_build=1
else
    for f in main.go go.mod go.sum; do
        if [ "$FERRETDB_SRC/$f" -nt "$FERRETDB_BIN" ]; then
            needs_build=1
        fi
    done
fi

if [ "$needs_build" = 1 ]; then
    GO="$(command -v go || true)"
    if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then
        GO=/usr/local/go/bin/go
    fi
    [ -n "$GO" ] || die "Go not found (looked in PATH and /usr/local/go/bin); Go >= 1.$GO_MIN_MINOR is needed to build the FerretDB launcher"
    go_version="$(GOTOOLCHAIN=local "$GO" env GOVERSION)" # e.g. go1.26.8
    go_minor="$(echo "$go_version" | sed -n 's/^go1\.\([0-9][0-9]*\).*/\1/p')"
    if [ -z "$go_minor" ] || [ "$go_minor" -lt "$GO_MIN_MINOR" ]; then
        die "$GO is $go_version; Go >= 1.$GO_MIN_MINOR is needed to build the FerretDB launcher"
    fi

    mkdir -p "$(dirname "$FERRETDB_BIN")"
    tmp="$FERRETDB_BIN.tmp.$$"
    trap 'rm -f "$tmp"' EXIT
    say "building FerretDB $FERRETDB_VERSION launcher with $go_version (first build takes 2-5 min)"
    # go.sum is committed: modules are checked against it; nothing is added to it here.
    (cd "$FERRETDB_SRC" && quiet env CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
        "$GO" build -trimpath -o "$tmp" .)
    mv -f "$tmp" "$FERRETDB_BIN"
    trap - EXIT
    say "built ${FERRETDB_BIN#"$ROOT"/}"
fi
