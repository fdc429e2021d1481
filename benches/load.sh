#!/usr/bin/env bash
# Load test: requests/s and latency of an upstream reached directly, through a plain nginx
# reverse proxy, and through iotgate (JWT check + decision on every request), side by side.
#
#   bash benches/load.sh            # DURATION=10 CONNECTIONS=32 THREADS=1 by default
#
# Installs wrk and nginx from Debian packages when missing, builds iotgate in release mode,
# starts on 127.0.0.1: an nginx upstream (:18081, fixed JSON answer), a plain nginx reverse
# proxy in front of it (:18082) and iotgate with the thinger example profile in front of it
# (:18083), runs wrk against each with the same token, and prints requests/s, p50/p99 and the
# iotgate/nginx ratios. Everything runs on this machine, so load generator, proxies and
# upstream share its cores: compare the columns, not the absolute numbers.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
UP=18081 NGINX=18082 GATE=18083

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
  [ -f "$work/up/nginx.pid" ] && kill "$(cat "$work/up/nginx.pid")" 2>/dev/null || true
  [ -f "$work/proxy/nginx.pid" ] && kill "$(cat "$work/proxy/nginx.pid")" 2>/dev/null || true
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
  upstream backend { server 127.0.0.1:$UP; keepalive 64; }
  server { $3 }
}
EOF
  "$NGINX_BIN" -p "$work/$1" -c "$work/$1/nginx.conf"
}

nginx_conf up 1 "listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '{\"ok\":true}'; }"
nginx_conf proxy auto "listen 127.0.0.1:$NGINX; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For \$remote_addr; }"

# iotgate: the thinger example profile in front of the same upstream
mkdir -p "$work/gate"
sed -e "s|^listen = .*|listen = \"127.0.0.1:$GATE\"|" \
    -e "s|^upstream = .*|upstream = \"http://127.0.0.1:$UP\"|" \
    -e "s|\"\\.\\./\\.\\./|\"$PWD/|g" \
    -e "s|\"secret.key\"|\"$PWD/examples/thinger/secret.key\"|" \
    -e "s|\\[\"directory\"\\]|[\"$PWD/examples/thinger/directory\"]|" \
    examples/thinger/iotgate.toml > "$work/gate/iotgate.toml"
RUST_LOG=warn target/release/iotgate serve --config "$work/gate/iotgate.toml" 2>"$work/gate/log" &
pids+=($!)
TOKEN=$(target/release/iotgate token --config "$work/gate/iotgate.toml" --as dave --ttl 1h)
PATH_ALLOWED=/v1/users/dave/devices/lab
for _ in $(seq 50); do
  curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GATE$PATH_ALLOWED" && break
  sleep 0.2
done
for port in $UP $NGINX $GATE; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port$PATH_ALLOWED")
  [ "$code" = 200 ] || { echo "port $port answered $code" >&2; cat "$work/gate/log" >&2; exit 1; }
done

run() { # port -> "rps p50_ms p99_ms"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
      -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1$PATH_ALLOWED" > "$work/wrk.$1"
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }' "$work/wrk.$1"
}

echo "wrk: $THREADS thread(s), $CONNECTIONS connections, ${DURATION}s each, GET $PATH_ALLOWED with a token"
read -r d_rps d_p50 d_p99 <<<"$(run $UP)"
read -r n_rps n_p50 n_p99 <<<"$(run $NGINX)"
read -r g_rps g_p50 g_p99 <<<"$(run $GATE)"
printf "%-10s %12s %10s %10s\n" target "requests/s" "p50 ms" "p99 ms"
printf "%-10s %12s %10s %10s\n" direct "$d_rps" "$d_p50" "$d_p99"
printf "%-10s %12s %10s %10s\n" nginx "$n_rps" "$n_p50" "$n_p99"
printf "%-10s %12s %10s %10s\n" iotgate "$g_rps" "$g_p50" "$g_p99"
awk -v g="$g_rps" -v n="$n_rps" -v gp="$g_p99" -v np="$n_p99" -v dp="$d_p99" 'BEGIN {
  printf "iotgate/nginx requests/s: %.2f\n", g / n
  printf "p99 added over direct: iotgate %.3f ms, nginx %.3f ms\n", gp - dp, np - dp
}'
