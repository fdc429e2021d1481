#!/usr/bin/env bash
# Load test: iotgate as deployed (decision log on, JSON, to a file) against a plain nginx
# reverse proxy, in front of the same nginx upstream, measured side by side in one run.
#
#   bash benches/load.sh     # ROUNDS=3 DURATION=10 THREADS=1 CONNS="1 32 256" BODY=1
#
# Installs wrk and nginx from Debian packages when missing and builds iotgate in release
# mode. On 127.0.0.1: an nginx upstream (:18081, fixed JSON answer; takes 2 MiB bodies), a
# plain nginx reverse proxy (:18082, access log off — a buffered access log costs it nothing
# measurable), iotgate with its decision log on (:18083, `--log-format json`, stderr to a
# file) and iotgate with it off (:18084, RUST_LOG=warn), the thinger example profile, the
# same token. For each connection count it runs ROUNDS rounds, each round every proxy once in
# a rotated order (A B C, B C A, …), and prints the medians: requests/s, latency p50/p90/p99,
# the latency added over the upstream reached directly, CPU µs per request (utime+stime of
# the proxy's processes from /proc/<pid>/stat over the run, divided by requests), and the
# ratios to nginx. With BODY=1 a last row POSTs a 1 MiB body through each (a route that
# streams the body, never reads it) and compares MiB/s. Everything shares this machine's
# cores: compare the columns, not the absolute numbers.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
THREADS=${THREADS:-1}
CONNS=${CONNS:-"1 32 256"}
BODY=${BODY:-1}
UP=18081 NGINX=18082 GATE=18083 QUIET=18084

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for n in up proxy; do
    [ -f "$work/$n/nginx.pid" ] && kill "$(cat "$work/$n/nginx.pid")" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

nginx_conf() { # name workers server-block
  mkdir -p "$work/$1/logs"
  cat > "$work/$1/nginx.conf" <<EOF
worker_processes $2;
pid $work/$1/nginx.pid;
error_log $work/$1/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_max_body_size 2m;
  client_body_buffer_size 2m;
  upstream backend { server 127.0.0.1:$UP; keepalive 64; }
  server { $3 }
}
EOF
  "$NGINX_BIN" -p "$work/$1" -c "$work/$1/nginx.conf"
}

nginx_conf up 1 "listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '{\"ok\":true}'; }"
nginx_conf proxy auto "listen 127.0.0.1:$NGINX; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For \$remote_addr; proxy_request_buffering off; }"

gate_config() { # port: writes $work/gate<port>/iotgate.toml
  mkdir -p "$work/gate$1"
  sed -e "s|^listen = .*|listen = \"127.0.0.1:$1\"|" \
      -e "s|^upstream = .*|upstream = \"http://127.0.0.1:$UP\"|" \
      -e "s|\"\\.\\./\\.\\./|\"$PWD/|g" \
      -e "s|\"secret.key\"|\"$PWD/examples/thinger/secret.key\"|" \
      -e "s|\\[\"directory\"\\]|[\"$PWD/examples/thinger/directory\"]|" \
      examples/thinger/iotgate.toml > "$work/gate$1/iotgate.toml"
}
gate_config $GATE; gate_config $QUIET
RUST_LOG=info target/release/iotgate --log-format json serve --config "$work/gate$GATE/iotgate.toml" 2>"$work/decisions.log" &
gate_pid=$!; pids+=($gate_pid)
RUST_LOG=warn target/release/iotgate serve --config "$work/gate$QUIET/iotgate.toml" 2>"$work/quiet.log" &
quiet_pid=$!; pids+=($quiet_pid)
TOKEN=$(target/release/iotgate token --config "$work/gate$GATE/iotgate.toml" --as dave --ttl 1h)
PATH_ALLOWED=/v1/users/dave/devices/lab
PATH_BODY=/v1/users/dave/buckets/private/data
for port in $GATE $QUIET; do
  for _ in $(seq 50); do
    curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port$PATH_ALLOWED" && break
    sleep 0.2
  done
done
for port in $UP $NGINX $GATE $QUIET; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port$PATH_ALLOWED")
  [ "$code" = 200 ] || { echo "port $port answered $code" >&2; cat "$work"/*.log >&2; exit 1; }
done

nginx_pids() { echo "$(cat "$work/proxy/nginx.pid") $(pgrep -P "$(cat "$work/proxy/nginx.pid")" | tr '\n' ' ')"; }
ticks() { # pids -> utime+stime of all, in clock ticks
  local t=0
  for p in "$@"; do
    set -- $(sed 's/^.*) //' "/proc/$p/stat")
    t=$((t + ${12} + ${13}))
  done
  echo $t
}
pids_of() { case $1 in $NGINX) nginx_pids ;; $GATE) echo $gate_pid ;; $QUIET) echo $quiet_pid ;; *) echo "" ;; esac; }
HZ=$(getconf CLK_TCK)

# one wrk run: port conns [script] -> "rps p50 p90 p99 cpu_us_per_request mib_per_s"
run() {
  local port=$1 conns=$2 script=${3:-} path=$PATH_ALLOWED
  [ -n "$script" ] && path=$PATH_BODY
  local procs; procs=$(pids_of "$port")
  local before=0; [ -n "$procs" ] && before=$(ticks $procs)
  wrk -t"$THREADS" -c"$conns" -d"${DURATION}s" --latency ${script:+-s "$script"} \
      -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port$path" > "$work/wrk.out"
  local after=0; [ -n "$procs" ] && after=$(ticks $procs)
  awk -v ticks=$((after - before)) -v hz="$HZ" -v dur="$DURATION" -v body="${script:+1}" '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) } $1 == "90%" { p90 = ms($2) } $1 == "99%" { p99 = ms($2) }
    END {
      cpu = (rps > 0) ? ticks / hz * 1e6 / (rps * dur) : 0
      mib = body ? rps : 0
      printf "%.0f %.3f %.3f %.3f %.1f %.1f\n", rps, p50, p90, p99, cpu, mib
    }' "$work/wrk.out"
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$1" '{ print $c }' "$2" | median; }

echo "wrk: $THREADS thread, ${DURATION}s per run, $ROUNDS rounds in rotated order; GET $PATH_ALLOWED with a token"
printf "\n%-6s %-12s %10s %8s %8s %8s %9s %9s %9s %8s\n" conns target "req/s" p50ms p90ms p99ms "+p50ms" "+p99ms" "cpu µs" "×nginx"
order=($NGINX $GATE $QUIET)
name() { case $1 in $UP) echo direct ;; $NGINX) echo nginx ;; $GATE) echo "iotgate log" ;; $QUIET) echo "iotgate quiet" ;; esac; }
for conns in $CONNS; do
  rm -f "$work"/res.*
  run $UP "$conns" >> "$work/res.$UP"
  for round in $(seq "$ROUNDS"); do
    for i in 0 1 2; do
      port=${order[$(( (i + round - 1) % 3 ))]}
      run "$port" "$conns" >> "$work/res.$port"
    done
  done
  d50=$(col 2 "$work/res.$UP"); d99=$(col 4 "$work/res.$UP")
  n_rps=$(col 1 "$work/res.$NGINX")
  for port in $UP $NGINX $GATE $QUIET; do
    f="$work/res.$port"
    rps=$(col 1 "$f"); p50=$(col 2 "$f"); p90=$(col 3 "$f"); p99=$(col 4 "$f"); cpu=$(col 5 "$f")
    awk -v c="$conns" -v t="$(name $port)" -v rps="$rps" -v p50="$p50" -v p90="$p90" -v p99="$p99" \
        -v d50="$d50" -v d99="$d99" -v cpu="$cpu" -v n="$n_rps" -v direct=$([ $port = $UP ] && echo 1 || echo 0) 'BEGIN {
      if (direct) printf "%-6s %-12s %10d %8.3f %8.3f %8.3f %9s %9s %9s %8s\n", c, t, rps, p50, p90, p99, "-", "-", "-", "-"
      else printf "%-6s %-12s %10d %8.3f %8.3f %8.3f %9.3f %9.3f %9.1f %8.2f\n", c, t, rps, p50, p90, p99, p50 - d50, p99 - d99, cpu, rps / n
    }'
  done
done

if [ "$BODY" = 1 ]; then
  head -c 1048576 /dev/zero | tr '\0' 'x' > "$work/body.bin"
  cat > "$work/post.lua" <<EOF
local f = io.open("$work/body.bin", "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
  printf "\n1 MiB POST bodies, 8 connections (%s rounds):\n%-14s %10s %9s %9s %8s\n" "$ROUNDS" target "MiB/s" p99ms "cpu µs" "×nginx"
  rm -f "$work"/body.*.res
  for round in $(seq "$ROUNDS"); do
    for i in 0 1 2; do
      port=${order[$(( (i + round - 1) % 3 ))]}
      run "$port" 8 "$work/post.lua" >> "$work/body.$port.res"
    done
  done
  n_mib=$(col 6 "$work/body.$NGINX.res")
  for port in $NGINX $GATE $QUIET; do
    f="$work/body.$port.res"
    awk -v t="$(name $port)" -v m="$(col 6 "$f")" -v p99="$(col 4 "$f")" -v cpu="$(col 5 "$f")" -v n="$n_mib" \
      'BEGIN { printf "%-14s %10.1f %9.3f %9.1f %8.2f\n", t, m, p99, cpu, m / n }'
  done
fi
echo
echo "decision log: $(wc -l < "$work/decisions.log") lines, $(( $(wc -c < "$work/decisions.log") / 1048576 )) MiB"
