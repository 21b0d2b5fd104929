#!/usr/bin/env bash
# Starts, stops and checks the services tidings needs: a MongoDB-compatible server
# (FerretDB v1.24.2 on SQLite, built by scripts/install-system.sh) and Redis.
#
# Usage: scripts/services.sh start|stop|status
#
# MONGODB_URL (default mongodb://127.0.0.1:27017) and REDIS_URL (default
# redis://127.0.0.1:6379/0) say where they are. A service whose URL points at
# 127.0.0.1 or localhost is managed here: `start` launches it in the background
# (data, logs and pid files under .data/) unless something already answers on its
# port; `stop` stops only what `start` launched. A service elsewhere is only checked.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/.data"
FERRETDB_BIN="$ROOT/.cache/bin/ferretdb-v1.24.2"
MONGODB_URL="${MONGODB_URL:-mongodb://127.0.0.1:27017}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
WAIT_SECONDS="${SERVICES_WAIT_SECONDS:-30}"

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
    elif [ -z "$port" ] || [[ "$cmd " == *":$port "* ]]; then
        echo "$pid"
    fi
}

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
    if [ -z "$pid" ]; then
        mkdir -p "$DATA/ferretdb"
        say "mongodb: starting FerretDB on 127.0.0.1:$port (data in .data/ferretdb/, log in .data/ferretdb.log)"
        (detached "$log" nohup "$FERRETDB_BIN" -listen "127.0.0.1:$port" -data "$DATA/ferretdb" -log-level warn) &
        pid=$!
        echo "$pid" >"$DATA/ferretdb.pid"
    else
        say "mongodb: FerretDB (pid $pid) is starting; waiting"
    fi
    wait_ready FerretDB mongo_ping 127.0.0.1 "$port" "$pid" "$log"
    say "mongodb: ready on 127.0.0.1:$port (pid $pid)"
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
        stop_one redis redis redis-server
        ;;
    status)
        rc=0
        status_one mongodb mongo_ping "$MONGODB_URL" 27017 ferretdb ferretdb- || rc=1
        status_one redis redis_ping "$REDIS_URL" 6379 redis redis-server || rc=1
        exit "$rc"
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
