#!/usr/bin/env bash
# Installs what tidings needs outside Python, idempotently and quietly:
#   - redis-server / redis-cli            (always)
#   - redis-sentinel                      (always; the Sentinel tests start their own)
#   - chromium                            (with --browser)
#   - wrk                                 (with --bench)
#   - nginx and promtool (Debian's nginx and prometheus packages; with --ops:
#     the deployment tests run them; neither service is started or enabled)
#   - a PostgreSQL server from Debian      (unless FERRETDB_BACKEND=sqlite;
#     postgresql-15, or `postgresql` where there is no postgresql-15; the server
#     binaries only: no cluster is created, scripts/services.sh runs its own)
#   - the FerretDB launcher binary, built from scripts/ferretdb/ with Go into
#     .cache/bin/ferretdb-v1.24.2, only when missing or built from other sources.
# apt-get (and `apt-get update`) only run when something is missing.
#
# Usage: [FERRETDB_BACKEND=sqlite|postgresql] scripts/install-system.sh [--browser] [--bench] [--ops]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FERRETDB_VERSION="v1.24.2"
FERRETDB_SRC="$ROOT/scripts/ferretdb"
FERRETDB_BIN="$ROOT/.cache/bin/ferretdb-$FERRETDB_VERSION"
# What the binary was built from: a hash of the launcher's sources, next to it.
FERRETDB_STAMP="$FERRETDB_BIN.sources"
FERRETDB_BACKEND="${FERRETDB_BACKEND:-postgresql}"
GO_MIN_MINOR=24 # scripts/ferretdb/go.mod says `go 1.24`

want_browser=0
want_bench=0
want_ops=0
for arg in "$@"; do
    case "$arg" in
        --browser) want_browser=1 ;;
        --bench) want_bench=1 ;;
        --ops) want_ops=1 ;;
        -h | --help)
            sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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

case "$FERRETDB_BACKEND" in
    sqlite | postgresql) ;;
    *) die "FERRETDB_BACKEND must be sqlite or postgresql, not '$FERRETDB_BACKEND'" ;;
esac

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
checks=("/usr/bin/redis-server redis-server" "/usr/bin/redis-cli redis-tools" "/usr/bin/redis-sentinel redis-sentinel")
if [ "$want_browser" = 1 ]; then
    checks+=("/usr/bin/chromium chromium fonts-liberation")
fi
if [ "$want_bench" = 1 ]; then
    checks+=("/usr/bin/wrk wrk")
fi
if [ "$want_ops" = 1 ]; then
    checks+=("/usr/sbin/nginx nginx" "/usr/bin/promtool prometheus" "/usr/bin/openssl openssl")
fi

missing=()
for entry in "${checks[@]}"; do
    read -r file pkgs <<<"$entry"
    if [ ! -x "$file" ]; then
        # shellcheck disable=SC2206 # word splitting of the package list is intended
        missing+=($pkgs)
    fi
done

# Any Debian PostgreSQL server will do (scripts/services.sh prefers 15); which
# package provides one is only known after `apt-get update`.
want_postgresql=0
if [ "$FERRETDB_BACKEND" = postgresql ]; then
    want_postgresql=1
    for initdb in /usr/lib/postgresql/*/bin/initdb; do
        if [ -x "$initdb" ]; then
            want_postgresql=0
        fi
    done
fi

# no_main_cluster: Debian's PostgreSQL server package creates (and, where services
# start, starts) a cluster "main" on port 5432 when it is first installed, unless
# create_main_cluster is off. The setting goes in createcluster.d/, which Debian's
# createcluster.conf includes; it only affects clusters created by packages.
no_main_cluster() {
    local dir=/etc/postgresql-common/createcluster.d
    [ ! -e "$dir/tidings.conf" ] || return 0
    "${SUDO[@]}" mkdir -p "$dir"
    printf '%s\n' "# Written by tidings' scripts/install-system.sh: installing a PostgreSQL server" \
        "# package creates no cluster (tidings runs its own, see scripts/services.sh)." \
        "create_main_cluster = off" | "${SUDO[@]}" tee "$dir/tidings.conf" >/dev/null
}

if [ "${#missing[@]}" -gt 0 ] || [ "$want_postgresql" = 1 ]; then
    wanted="${missing[*]}"
    if [ "$want_postgresql" = 1 ]; then
        wanted="${wanted:+$wanted }postgresql-15 (or set FERRETDB_BACKEND=sqlite)"
    fi
    SUDO=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: $wanted"
        SUDO=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: $wanted"
    APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq)
    say "apt-get update"
    quiet "${APT[@]}" update
    if [ "$want_postgresql" = 1 ]; then
        no_main_cluster
        if [ -n "$(apt-cache policy postgresql-15 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '(none)' || true)" ]; then
            missing+=(postgresql-15)
        else
            missing+=(postgresql)
        fi
    fi
    say "apt-get install ${missing[*]}"
    # Installing nginx or prometheus would start their system services (port 80, port 9090) where the init system
    # runs them; the tests start their own on loopback, so package scripts may start nothing while this runs.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy"
        own_policy=1
    fi
    status=0
    "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >/tmp/install-system.apt.log 2>&1 || status=$?
    if [ "$own_policy" = 1 ]; then
        "${SUDO[@]}" rm -f "$policy"
    fi
    if [ "$status" != 0 ]; then
        echo "install-system: ERROR: apt-get install failed; last lines:" >&2
        tail -n 30 /tmp/install-system.apt.log >&2
        exit 1
    fi
fi

# --- FerretDB launcher (Go) ----------------------------------------------------
# Rebuilt whenever its sources differ from those the binary was built from
# (a hash, not file times: a checkout of older sources must rebuild too).
sources_hash="$(cd "$FERRETDB_SRC" && sha256sum go.mod go.sum ./*.go | sha256sum | cut -d' ' -f1)"
needs_build=0
if [ ! -x "$FERRETDB_BIN" ] || [ "$(cat "$FERRETDB_STAMP" 2>/dev/null || true)" != "$sources_hash" ]; then
    needs_build=1
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
    echo "$sources_hash" >"$FERRETDB_STAMP"
    say "built ${FERRETDB_BIN#"$ROOT"/}"
fi
