#!/usr/bin/env bash
# Starts, stops and checks the services tidings needs: a MongoDB-compatible server
# (FerretDB v1.24.2 on PostgreSQL, built by scripts/install-system.sh) and Redis.
#
# Usage: scripts/services.sh start|stop|status
#        scripts/services.sh postgresql-database create|drop NAME
#
# MONGODB_URL (default mongodb://127.0.0.1:27017) and REDIS_URL (default
# redis://127.0.0.1:6379/0) say where they are. A service whose URL points at
# 127.0.0.1 or localhost is managed here: `start` launches it in the background
# (data, logs and pid files under .data/) unless something already answers on its
# port; `stop` stops only what `start` launched. A service elsewhere is only checked.
#
# FERRETDB_BACKEND (default postgresql) says where FerretDB stores its data. With
# postgresql, `start` also runs a PostgreSQL cluster in .data/postgresql/ on
# 127.0.0.1:POSTGRESQL_PORT (default 5433), as the system user tidings-pg (created
# if missing) when run as root, else as the current user. When tidings-pg cannot
# reach .data/ (a parent folder such as /root is closed to others), the cluster
# goes in /var/lib/tidings-pg/<hash of the checkout's path>/ and .data/postgresql
# links to it. With sqlite, FerretDB keeps SQLite files in .data/ferretdb/.
#
# `postgresql-database create NAME` creates a database in that cluster (it must
# be running) and prints FerretDB's URL for it; `drop NAME` drops it, closing its
# connections. tests/launcher.py uses them for a FerretDB of a test's own.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/.data"
FERRETDB_BIN="$ROOT/.cache/bin/ferretdb-v1.24.2"
MONGODB_URL="${MONGODB_URL:-mongodb://127.0.0.1:27017}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
WAIT_SECONDS="${SERVICES_WAIT_SECONDS:-30}"
FERRETDB_BACKEND="${FERRETDB_BACKEND:-postgresql}"
POSTGRESQL_PORT="${POSTGRESQL_PORT:-5433}"
PG_LINK="$DATA/postgresql" # the cluster's folder, or a link to it (see pg_paths)
PG_DATABASE=ferretdb
# PostgreSQL refuses to run as root: root runs it as this system user.
PG_SYSTEM_USER=tidings-pg
# Where root puts the cluster when PG_SYSTEM_USER cannot reach .data/.
PG_OUTSIDE=/var/lib/tidings-pg

# pg_paths DIR: the cluster's folder (owned by the PostgreSQL user, mode 0700) and
# what is in it.
pg_paths() {
    PG_DIR="$1"
    PG_DATA="$PG_DIR/data"          # the cluster
    PG_RUN="$PG_DIR/run"            # its unix socket
    PG_LOG="$PG_DIR/postgresql.log" # its log
}
if [ -L "$PG_LINK" ]; then
    pg_paths "$(readlink -f "$PG_LINK")"
else
    pg_paths "$PG_LINK"
fi

say() { echo "services: $*"; }
die() {
    echo "services: ERROR: $*" >&2
    exit 1
}

# parse_url URL DEFAULT_PORT -> sets U_HOST, U_PORT.
# Handles scheme://[user[:pass]@]host[:port][/path][?query]; several hosts
# (host1,host2) and unix sockets leave U_HOST set to something not local.
parse_url() {
    local rest="${1#*://}"
    rest="${rest%%/*}"
    rest="${rest%%\?*}"
    rest="${rest##*@}"
    if [[ "$rest" == \[*\]* ]]; then # [ipv6]:port
        U_HOST="${rest%%]*}]"
        rest="${rest#"$U_HOST"}"
        U_PORT="${rest#:}"
    elif [[ "$rest" == *:* ]]; then
        U_HOST="${rest%%:*}"
        U_PORT="${rest#*:}"
    else
        U_HOST="$rest"
        U_PORT=""
    fi
    U_PORT="${U_PORT:-$2}"
}

is_local() { [ "$1" = 127.0.0.1 ] || [ "$1" = localhost ]; }

case "$FERRETDB_BACKEND" in
    sqlite | postgresql) ;;
    *) die "FERRETDB_BACKEND must be sqlite or postgresql, not '$FERRETDB_BACKEND'" ;;
esac
[[ "$POSTGRESQL_PORT" =~ ^[0-9]+$ ]] || die "POSTGRESQL_PORT must be a port number, not '$POSTGRESQL_PORT'"

# mongo_ping HOST PORT: exit 0 = answered a MongoDB `ping` with ok: 1,
# 1 = nothing listens there, 2 = something listens but did not answer the ping.
mongo_ping() {
    python3 - "$1" "$2" <<'PY'
import socket, struct, sys

host, port = sys.argv[1].strip("[]"), int(sys.argv[2])

def bson(*elems):
    body = b"".join(elems)
    return struct.pack("<i", len(body) + 5) + body + b"\x00"

doc = bson(
    b"\x10ping\x00" + struct.pack("<i", 1),
    b"\x02$db\x00" + struct.pack("<i", 6) + b"admin\x00",
)
payload = struct.pack("<I", 0) + b"\x00" + doc  # OP_MSG: flagBits, section kind 0
msg = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload

try:
    s = socket.create_connection((host, port), timeout=2)
except OSError:
    sys.exit(1)
try:
    s.settimeout(3)
    s.sendall(msg)
    data = b""
    while len(data) < 4 or len(data) < struct.unpack("<i", data[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    i = data.find(b"\x01ok\x00")  # double field "ok"
    ok = i >= 0 and struct.unpack("<d", data[i + 4:i + 12])[0] == 1.0
    sys.exit(0 if ok else 2)
except (OSError, struct.error):
    sys.exit(2)
finally:
    s.close()
PY
}

# redis_ping HOST PORT: exit 0 = a Redis answers (PONG, or NOAUTH when it wants a
# password), 1 = nothing listens there, 2 = something else listens there.
redis_ping() {
    local out
    out="$(timeout 5 redis-cli -h "${1//[\[\]]/}" -p "$2" ping 2>&1 || true)"
    if [ "$out" = PONG ] || [[ "$out" == NOAUTH* ]]; then
        return 0
    elif [[ "$out" == *"Connection refused"* ]]; then
        return 1
    fi
    return 2
}

# alive PID: the process runs (a zombie waiting for init to reap it does not count;
# init can take a couple of seconds to do so).
alive() {
    local stat
    kill -0 "$1" 2>/dev/null || return 1
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat:0:1}" != Z ]
}

# pid_of NAME PROGRAM [PORT]: prints the pid from .data/NAME.pid when that process
# is alive and is the program we started (its command line contains PROGRAM), and,
# with PORT, listens on that port. A pid file whose process is gone (or is some
# other program now) is removed.
pid_of() {
    local file="$DATA/$1.pid" prog="$2" port="${3:-}" pid cmd
    [ -f "$file" ] || return 0
    pid="$(cat "$file" 2>/dev/null || true)"
    cmd=""
    if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid"; then
        cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    fi
    if [[ "$cmd" != *"$prog"* ]]; then
        rm -f "$file"
    elif [ -z "$port" ] || [[ "$cmd " == *":$port "* ]] || [[ "$cmd " == *" -p $port "* ]]; then
        echo "$pid"
    fi
}

# FerretDB and PostgreSQL run under SCHED_BATCH, which never preempts on wakeup:
# where they share a few cores with the server, a query's arrival must not take
# the core from the server's event loop in the middle of a burst (a reconnect
# storm); they run on an idle core, or once the loop's slice ends
# (docs/scaling.md). Any user may choose it for their own processes.
BATCH=()
if command -v chrt >/dev/null 2>&1; then
    BATCH=(chrt --batch 0)
fi

# FerretDB allocates per command, and at Go's default (GOGC=100) its collector
# took about a third of its CPU in a reconnect storm; at 400 it collects a
# quarter as often, for a heap still in the tens of MB (docs/scaling.md). A
# GOGC set in the environment is kept.
FERRETDB_ENV=(env "GOGC=${GOGC:-400}")

# detached LOG CMD...: runs CMD in a new session (it survives this shell and its
# terminal), stdin from /dev/null, output appended to LOG, and without any other
# file descriptor inherited from the caller (an inherited pipe would keep e.g.
# `make test | tee` or a CI runner waiting). Exec'd, so `detached ... &` gives $!
# = CMD's pid (setsid does not fork: a background job is no process group leader).
detached() {
    local log="$1" fd n
    shift
    exec </dev/null >>"$log" 2>&1
    for fd in /proc/"$BASHPID"/fd/*; do
        n="${fd##*/}"
        if [ "$n" -gt 2 ]; then
            eval "exec $n>&-"
        fi
    done
    exec setsid "$@"
}

# wait_ready NAME PING_FN HOST PORT PID LOG
wait_ready() {
    local name="$1" ping="$2" host="$3" port="$4" pid="$5" log="$6" i rc
    for ((i = 0; i < WAIT_SECONDS * 5; i++)); do
        rc=0
        "$ping" "$host" "$port" || rc=$?
        if [ "$rc" = 0 ]; then
            return 0
        fi
        if ! alive "$pid"; then
            echo "services: ERROR: $name exited during startup; last lines of ${log#"$ROOT"/}:" >&2
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    echo "services: ERROR: $name did not answer on $host:$port within ${WAIT_SECONDS}s; last lines of ${log#"$ROOT"/}:" >&2
    tail -n 20 "$log" >&2 || true
    exit 1
}

start_mongodb() {
    parse_url "$MONGODB_URL" 27017
    local host="$U_HOST" port="$U_PORT" rc=0 pid other log="$DATA/ferretdb.log"
    if [[ "$MONGODB_URL" == mongodb+srv://* ]] || [[ "$host" == *,* ]]; then
        say "mongodb: $MONGODB_URL is not a single host; not checked"
        return 0
    fi
    mongo_ping "$host" "$port" || rc=$?
    if [ "$rc" = 0 ]; then
        say "mongodb: already answering on $host:$port"
        if is_local "$host"; then
            check_running_backend "$port"
        fi
        return 0
    fi
    if ! is_local "$host"; then
        die "mongodb: nothing answers at $host:$port (MONGODB_URL is not local, so it is not started here)"
    fi
    if [ "$rc" = 2 ]; then
        die "mongodb: port $port is in use by something that does not answer a MongoDB ping"
    fi
    pid="$(pid_of ferretdb ferretdb- "$port")"
    other="$(pid_of ferretdb ferretdb-)"
    if [ -z "$pid" ] && [ -n "$other" ]; then
        die "mongodb: the FerretDB started earlier (pid $other) listens on another port; run '$0 stop' first"
    fi
    if [ -z "$pid" ] && [ "$FERRETDB_BACKEND" = postgresql ]; then
        start_postgresql
        say "mongodb: starting FerretDB on 127.0.0.1:$port (PostgreSQL backend on 127.0.0.1:$POSTGRESQL_PORT, log in .data/ferretdb.log)"
        (detached "$log" "${BATCH[@]}" "${FERRETDB_ENV[@]}" nohup "$FERRETDB_BIN" -listen "127.0.0.1:$port" -handler postgresql \
            -postgresql-url "$(postgresql_url)" -log-level warn) &
        pid=$!
        echo "$pid" >"$DATA/ferretdb.pid"
    elif [ -z "$pid" ]; then
        mkdir -p "$DATA/ferretdb"
        say "mongodb: starting FerretDB on 127.0.0.1:$port (data in .data/ferretdb/, log in .data/ferretdb.log)"
        (detached "$log" "${BATCH[@]}" "${FERRETDB_ENV[@]}" nohup "$FERRETDB_BIN" -listen "127.0.0.1:$port" -handler sqlite -data "$DATA/ferretdb" \
            -log-level warn) &
        pid=$!
        echo "$pid" >"$DATA/ferretdb.pid"
    else
        say "mongodb: FerretDB (pid $pid) is starting; waiting"
    fi
    wait_ready FerretDB mongo_ping 127.0.0.1 "$port" "$pid" "$log"
    say "mongodb: ready on 127.0.0.1:$port (pid $pid)"
}

# check_running_backend PORT: when the FerretDB answering on PORT is the one this
# script started, says if it runs another backend than FERRETDB_BACKEND asks for,
# and keeps the PostgreSQL it needs running.
check_running_backend() {
    local running
    running="$(running_backend "$1")"
    [ -n "$running" ] || return 0
    if [ "$running" != "$FERRETDB_BACKEND" ]; then
        say "mongodb: note: this FerretDB (pid $(pid_of ferretdb ferretdb- "$1")) stores its data in $running; FERRETDB_BACKEND=$FERRETDB_BACKEND takes effect after '$0 stop'"
    fi
    if [ "$running" = postgresql ]; then
        start_postgresql
    fi
}

# running_backend PORT: the backend (sqlite or postgresql) of the FerretDB this
# script started on PORT; nothing when it did not start one there.
running_backend() {
    local pid cmd
    pid="$(pid_of ferretdb ferretdb- "$1")"
    [ -n "$pid" ] || return 0
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    if [[ "$cmd " == *" -handler postgresql "* ]]; then
        echo postgresql
    else
        echo sqlite
    fi
}

# pg_expected: whether `status` should find PostgreSQL up: this script started it,
# or the local FerretDB runs (or `start` would start it) on PostgreSQL. A MongoDB
# elsewhere, or one this script did not start, needs none.
pg_expected() {
    local running
    [ -z "$(pid_of postgresql postgres)" ] || return 0
    parse_url "$MONGODB_URL" 27017
    is_local "$U_HOST" || return 1
    running="$(running_backend "$U_PORT")"
    if [ -n "$running" ]; then
        [ "$running" = postgresql ]
        return
    fi
    [ "$FERRETDB_BACKEND" = postgresql ] || return 1
    ! mongo_ping "$U_HOST" "$U_PORT"
}

# pg_database_command create|drop NAME: a database of a test's own in the cluster
# (tests/launcher.py). create prints FerretDB's URL for it; drop closes its
# connections first. The cluster must be running.
pg_database_command() {
    local action="$1" name="$2" bin user out
    [ "$action" = create ] || [ "$action" = drop ] || die "usage: $0 postgresql-database create|drop NAME"
    [[ "$name" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] ||
        die "postgresql-database: NAME must be up to 63 lower-case letters, digits and _, not '$name'"
    bin="$(pg_bindir)" || die "postgresql: no PostgreSQL server binaries in /usr/lib/postgresql/"
    user="$(pg_os_user)"
    case "$action" in
        create)
            out="$(PGCONNECT_TIMEOUT=5 "$bin/createdb" -h 127.0.0.1 -p "$POSTGRESQL_PORT" -U "$user" -E UTF8 "$name" 2>&1)" ||
                die "postgresql: could not create database $name on 127.0.0.1:$POSTGRESQL_PORT (is it running? '$0 start'): $out"
            postgresql_url "$name"
            ;;
        drop)
            out="$(PGCONNECT_TIMEOUT=5 "$bin/dropdb" -h 127.0.0.1 -p "$POSTGRESQL_PORT" -U "$user" --if-exists --force "$name" 2>&1)" ||
                die "postgresql: could not drop database $name on 127.0.0.1:$POSTGRESQL_PORT: $out"
            ;;
    esac
}

# --- PostgreSQL (FERRETDB_BACKEND=postgresql, the default) ---------------------

# pg_os_user: the system user the cluster runs as.
pg_os_user() {
    if [ "$(id -u)" = 0 ]; then
        echo "$PG_SYSTEM_USER"
    else
        id -un
    fi
}

# postgresql_url [DATABASE]: FerretDB's URL for a database of the cluster (default
# ferretdb). force_custom_plan: FerretDB's prepared statements take the field name
# as a parameter, and only a plan made for the actual values can use the indexer's
# expression indexes.
postgresql_url() {
    echo "postgres://$(pg_os_user)@127.0.0.1:$POSTGRESQL_PORT/${1:-$PG_DATABASE}?plan_cache_mode=force_custom_plan"
}

# pg_bindir: the server binaries; those of the cluster's version once it exists,
# else PostgreSQL 15, else any Debian PostgreSQL.
pg_bindir() {
    local d version=""
    if [ -s "$PG_DATA/PG_VERSION" ]; then
        version="$(cat "$PG_DATA/PG_VERSION")"
        d="/usr/lib/postgresql/$version/bin"
        [ -x "$d/postgres" ] || return 1
        echo "$d"
        return 0
    fi
    for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

# pg_ping HOST PORT: exit 0 = a PostgreSQL accepts connections there, 1 = nothing
# listens there, 2 = something listens but does not accept PostgreSQL connections
# (yet: a starting PostgreSQL answers 2 too).
pg_ping() {
    local host="${1//[\[\]]/}" port="$2" bin isready=/usr/bin/pg_isready
    if bin="$(pg_bindir)"; then
        isready="$bin/pg_isready"
    fi
    if [ -x "$isready" ] && "$isready" -q -h "$host" -p "$port" -U "$(pg_os_user)" -d postgres -t 3 >/dev/null 2>&1; then
        return 0
    fi
    if timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null; then
        return 2
    fi
    return 1
}

# as_pg CMD...: CMD as the cluster's user, from its folder (initdb and pg_ctl
# complain about a working directory they cannot read).
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        (cd "$PG_DIR" && exec runuser -u "$PG_SYSTEM_USER" -- "$@")
    else
        (cd "$PG_DIR" && exec "$@")
    fi
}

# ensure_pg_cluster BINDIR: the system user, .data/postgresql/ and the cluster in
# it (initdb, UTF8; trust authentication, as it listens on 127.0.0.1 only).
ensure_pg_cluster() {
    local bin="$1" user out owner outside
    user="$(pg_os_user)"
    if [ "$(id -u)" = 0 ] && ! id -u "$PG_SYSTEM_USER" >/dev/null 2>&1; then
        say "postgresql: creating system user $PG_SYSTEM_USER (PostgreSQL does not run as root)"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$PG_SYSTEM_USER" ||
            die "postgresql: could not create system user $PG_SYSTEM_USER"
    fi
    if [ "$(id -u)" = 0 ] && [ ! -e "$PG_LINK" ] && [ ! -L "$PG_LINK" ] &&
        ! runuser -u "$PG_SYSTEM_USER" -- test -x "$DATA"; then
        # A checkout in /root, or in a `mktemp -d`: the cluster goes where
        # PG_SYSTEM_USER can reach it, one folder per checkout.
        outside="$PG_OUTSIDE/$(printf '%s' "$ROOT" | sha256sum | cut -c1-16)"
        mkdir -p "$outside"
        chmod 755 "$PG_OUTSIDE"
        chmod 700 "$outside"
        chown "$PG_SYSTEM_USER:" "$outside"
        ln -s "$outside" "$PG_LINK"
        say "postgresql: $PG_SYSTEM_USER cannot reach .data/ (a parent folder is closed to others); the cluster goes in $outside, linked as .data/postgresql"
        pg_paths "$outside"
    fi
    if [ ! -d "$PG_DIR" ]; then
        mkdir -p "$PG_DIR"
        chmod 700 "$PG_DIR"
        if [ "$(id -u)" = 0 ]; then
            chown "$PG_SYSTEM_USER:" "$PG_DIR"
        fi
    fi
    owner="$(stat -c %U "$PG_DIR")"
    [ "$owner" = "$user" ] ||
        die "postgresql: .data/postgresql/ belongs to $owner, but PostgreSQL runs as $user here; remove it or run as $owner"
    if [ "$(id -u)" = 0 ] && ! runuser -u "$PG_SYSTEM_USER" -- test -x "$PG_DIR"; then
        die "postgresql: user $PG_SYSTEM_USER cannot reach $PG_DIR (a parent folder is not searchable by others)"
    fi
    if [ ! -s "$PG_DATA/PG_VERSION" ]; then
        say "postgresql: creating a cluster in .data/postgresql/data (owner $user)"
        out="$(as_pg "$bin/initdb" -D "$PG_DATA" -U "$user" -E UTF8 --locale=C.UTF-8 --auth=trust 2>&1)" || {
            echo "$out" | tail -n 20 >&2
            die "postgresql: initdb failed"
        }
    fi
    as_pg mkdir -p "$PG_RUN"
}

# ensure_pg_database BINDIR: the database FerretDB stores its data in.
ensure_pg_database() {
    local bin="$1" user found
    user="$(pg_os_user)"
    found="$(PGCONNECT_TIMEOUT=5 "$bin/psql" -X -q -t -A -h 127.0.0.1 -p "$POSTGRESQL_PORT" -U "$user" -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DATABASE'" 2>&1)" ||
        die "postgresql: cannot connect to 127.0.0.1:$POSTGRESQL_PORT as $user: $found"
    if [ "$found" != 1 ]; then
        say "postgresql: creating database $PG_DATABASE"
        PGCONNECT_TIMEOUT=5 "$bin/createdb" -h 127.0.0.1 -p "$POSTGRESQL_PORT" -U "$user" -E UTF8 "$PG_DATABASE" ||
            die "postgresql: could not create database $PG_DATABASE"
    fi
}

start_postgresql() {
    local port="$POSTGRESQL_PORT" rc=0 pid other bin options
    bin="$(pg_bindir)" ||
        die "postgresql: no PostgreSQL server binaries in /usr/lib/postgresql/ (scripts/install-system.sh installs them; FERRETDB_BACKEND=sqlite needs none)"
    pg_ping 127.0.0.1 "$port" || rc=$?
    if [ "$rc" = 0 ]; then
        pid="$(pid_of postgresql postgres "$port")"
        if [ -n "$pid" ]; then
            say "postgresql: already answering on 127.0.0.1:$port (pid $pid)"
        else
            say "postgresql: already answering on 127.0.0.1:$port (not started by this script)"
        fi
        ensure_pg_database "$bin"
        return 0
    fi
    pid="$(pid_of postgresql postgres "$port")"
    other="$(pid_of postgresql postgres)"
    if [ -z "$pid" ] && [ -n "$other" ]; then
        die "postgresql: the PostgreSQL started earlier (pid $other) listens on another port; run '$0 stop' first"
    fi
    if [ -z "$pid" ] && [ "$rc" = 2 ]; then
        die "postgresql: port $port is in use by something that does not accept PostgreSQL connections (set POSTGRESQL_PORT)"
    fi
    if [ -z "$pid" ]; then
        ensure_pg_cluster "$bin"
        bin="$(pg_bindir)" || die "postgresql: the server binaries of the cluster's version are missing"
        say "postgresql: starting PostgreSQL on 127.0.0.1:$port (cluster in .data/postgresql/data, log in .data/postgresql/postgresql.log)"
        as_pg touch "$PG_LOG"
        # max_connections: each FerretDB pools up to 50 connections, and the tests'
        # own FerretDBs (tests/launcher.py) share this cluster with the project's.
        options="-c listen_addresses=127.0.0.1 -c max_connections=300 -p $port -k '$PG_RUN'"
        # pg_ctl returns once the server accepts connections; the server runs on in
        # a session of its own, without this shell's file descriptors.
        (
            cd "$PG_DIR"
            if [ "$(id -u)" = 0 ]; then
                detached "$PG_LOG" "${BATCH[@]}" runuser -u "$PG_SYSTEM_USER" -- "$bin/pg_ctl" start -w -t "$WAIT_SECONDS" \
                    -D "$PG_DATA" -l "$PG_LOG" -o "$options"
            else
                detached "$PG_LOG" "${BATCH[@]}" "$bin/pg_ctl" start -w -t "$WAIT_SECONDS" \
                    -D "$PG_DATA" -l "$PG_LOG" -o "$options"
            fi
        ) || {
            tail -n 20 "$PG_LOG" >&2 || true
            die "postgresql: pg_ctl start failed; see .data/postgresql/postgresql.log"
        }
        pid="$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
        [[ "$pid" =~ ^[0-9]+$ ]] || die "postgresql: started, but $PG_DATA/postmaster.pid has no pid"
        echo "$pid" >"$DATA/postgresql.pid"
    else
        say "postgresql: PostgreSQL (pid $pid) is starting; waiting"
    fi
    wait_ready PostgreSQL pg_ping 127.0.0.1 "$port" "$pid" "$PG_LOG"
    ensure_pg_database "$bin"
    say "postgresql: ready on 127.0.0.1:$port (pid $pid)"
}

# stop_postgresql: a fast shutdown (open transactions are rolled back, then a
# clean checkpoint) of the PostgreSQL `start` launched; after 60 s an immediate one.
stop_postgresql() {
    local pid i
    pid="$(pid_of postgresql postgres)"
    if [ -z "$pid" ]; then
        if [ "$FERRETDB_BACKEND" = postgresql ]; then
            say "postgresql: not started by this script; nothing to stop"
        fi
        return 0
    fi
    say "postgresql: stopping pid $pid"
    kill -INT "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        alive "$pid" || break
        sleep 0.2
    done
    if alive "$pid"; then
        say "postgresql: pid $pid still running after 60s; immediate shutdown"
        kill -QUIT "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            alive "$pid" || break
            sleep 0.2
        done
    fi
    rm -f "$DATA/postgresql.pid"
    say "postgresql: stopped"
}

start_redis() {
    parse_url "$REDIS_URL" 6379
    local host="$U_HOST" port="$U_PORT" rc=0 pid other i log="$DATA/redis/redis.log"
    if [[ "$REDIS_URL" != redis://* ]]; then
        # rediss:// (TLS) or unix://: only check it answers.
        if [ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null || true)" = PONG ]; then
            say "redis: already answering at $REDIS_URL"
            return 0
        fi
        die "redis: nothing answers at $REDIS_URL (not started here)"
    fi
    redis_ping "$host" "$port" || rc=$?
    if [ "$rc" = 0 ]; then
        say "redis: already answering on $host:$port"
        return 0
    fi
    if ! is_local "$host"; then
        die "redis: nothing answers at $host:$port (REDIS_URL is not local, so it is not started here)"
    fi
    if [ "$rc" = 2 ]; then
        die "redis: port $port is in use by something that does not answer a Redis PING"
    fi
    pid="$(pid_of redis redis-server "$port")"
    other="$(pid_of redis redis-server)"
    if [ -z "$pid" ] && [ -n "$other" ]; then
        die "redis: the redis-server started earlier (pid $other) listens on another port; run '$0 stop' first"
    fi
    if [ -z "$pid" ]; then
        mkdir -p "$DATA/redis"
        rm -f "$DATA/redis/redis.pid"
        say "redis: starting redis-server on 127.0.0.1:$port (log in .data/redis/redis.log)"
        # --daemonize forks, so the server outlives this shell, in a session of its
        # own. It writes its own pid file, which is copied to .data/redis.pid.
        # Startup errors go to stdout (so the log), the rest to --logfile.
        (detached "$log" redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
            --dir "$DATA/redis" --pidfile "$DATA/redis/redis.pid" --logfile "$log" \
            --save "" --appendonly no) ||
            die "redis: redis-server failed to start; see .data/redis/redis.log"
        for ((i = 0; i < 50; i++)); do
            [ -s "$DATA/redis/redis.pid" ] && break
            sleep 0.1
        done
        pid="$(cat "$DATA/redis/redis.pid" 2>/dev/null || true)"
        [ -n "$pid" ] || {
            tail -n 20 "$log" >&2 || true
            die "redis: redis-server wrote no pid file"
        }
        echo "$pid" >"$DATA/redis.pid"
    else
        say "redis: redis-server (pid $pid) is starting; waiting"
    fi
    wait_ready redis-server redis_ping 127.0.0.1 "$port" "$pid" "$log"
    say "redis: ready on 127.0.0.1:$port (pid $pid)"
}

# stop_one NAME LABEL PROGRAM
stop_one() {
    local name="$1" label="$2" prog="$3" pid i
    pid="$(pid_of "$name" "$prog")"
    if [ -z "$pid" ]; then
        say "$label: not started by this script; nothing to stop"
        return 0
    fi
    say "$label: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    # FerretDB gives open client connections up to 3 s to finish.
    for ((i = 0; i < 75; i++)); do
        alive "$pid" || break
        sleep 0.2
    done
    if alive "$pid"; then
        say "$label: pid $pid still running after 15s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$DATA/$name.pid"
    say "$label: stopped"
}

status_one() {
    local label="$1" ping="$2" url="$3" default_port="$4" name="$5" prog="$6" rc=0 pid how
    parse_url "$url" "$default_port"
    "$ping" "$U_HOST" "$U_PORT" || rc=$?
    pid=""
    if is_local "$U_HOST"; then
        pid="$(pid_of "$name" "$prog" "$U_PORT")"
    fi
    how="not started by this script"
    [ -z "$pid" ] || how="started by this script, pid $pid"
    if [ "$rc" = 0 ]; then
        say "$label: up on $U_HOST:$U_PORT ($how)"
        return 0
    fi
    say "$label: DOWN on $U_HOST:$U_PORT ($how)"
    return 1
}

# Serialise concurrent start/stop calls (e.g. `make test` and `make run`).
lock() {
    mkdir -p "$DATA"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$DATA/.services.lock"
        flock -w 120 9 || die "another scripts/services.sh is still running"
    fi
}

command -v python3 >/dev/null 2>&1 || die "python3 is needed (for the MongoDB ping)"

case "${1:-}" in
    start)
        "$ROOT/scripts/install-system.sh"
        lock
        start_mongodb
        start_redis
        ;;
    stop)
        lock
        stop_one ferretdb mongodb ferretdb-
        stop_postgresql
        stop_one redis redis redis-server
        ;;
    status)
        rc=0
        status_one mongodb mongo_ping "$MONGODB_URL" 27017 ferretdb ferretdb- || rc=1
        if pg_expected; then
            status_one postgresql pg_ping "postgresql://127.0.0.1:$POSTGRESQL_PORT" 5433 postgresql postgres || rc=1
        fi
        status_one redis redis_ping "$REDIS_URL" 6379 redis redis-server || rc=1
        exit "$rc"
        ;;
    postgresql-database)
        pg_database_command "${2:-}" "${3:-}"
        ;;
    *)
        echo "usage: $0 start|stop|status, or $0 postgresql-database create|drop NAME" >&2
        exit 2
        ;;
esac
