#!/usr/bin/env bash
# End-to-end test of the compose example through the real stack: builds every image here
# (tests/scripts/build-images.sh), brings examples/compose/docker-compose.yml up with the CI
# override (OnlyOffice and backing-service stand-ins), waits for health and asserts through the
# mesh. Prints `N passed, M failed`; a service that never becomes healthy is named with the
# tail of its logs. Needs root (Docker, NET_ADMIN containers).
#
# Both variants run: transparent (docker-compose.yml: everything below) and explicit
# (docker-compose.explicit.yml: the core asserts, capture and `down -v`).
#
#     bash tests/scripts/compose-e2e.sh
#     COMPOSE_E2E_PROJECT=myprefix-e2e bash tests/scripts/compose-e2e.sh   # other project names
#     COMPOSE_E2E_VARIANTS=transparent bash tests/scripts/compose-e2e.sh   # one variant
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
prefix=${COMPOSE_E2E_PROJECT:-docmesh-e2e}
if ! docker info >/dev/null 2>&1; then
  echo "compose-e2e: the Docker Engine is not reachable (docker info failed); start it, and run as root" >&2
  exit 1
fi
command -v docker-compose >/dev/null 2>&1 || { echo "compose-e2e: docker-compose is missing (apt-get install docker-compose)" >&2; exit 1; }
trust=spiffe://onlyoffice.local/ns/onlyoffice/sa
passed=0 failed=0

pass() { passed=$((passed + 1)); echo "compose-e2e: PASS $*"; }
fail() { failed=$((failed + 1)); echo "compose-e2e: FAIL $*"; }
check() { # check NAME CONDITION-COMMAND...
  local name=$1; shift
  if "$@"; then pass "$name"; else fail "$name"; fi
}

base=$(bash tests/scripts/build-images.sh) || { echo "compose-e2e: image build failed" >&2; exit 1; }
export DOCMESH_BASE_IMAGE=$base

variant() { # variant transparent|explicit
mode=$1
project=$prefix-$mode
case $mode in
  transparent) file=docker-compose.yml ds_url=http://documentserver:8888/coauthoring/CommandService.ashx
               targets="documentserver:8888 postgresql:5432 redis:6379 rabbitmq:5672 integrator:3000"
               export CI_INTEGRATOR_URL=http://integrator:3000 ;;
  explicit)    file=docker-compose.explicit.yml ds_url=http://127.0.0.1:8888/coauthoring/CommandService.ashx
               # the sidecars' public mTLS ports and the apps' own ports (loopback only)
               targets="documentserver:28888 postgresql:25432 redis:26379 rabbitmq:25673 integrator:23000 documentserver:8888 postgresql:5432"
               export CI_INTEGRATOR_URL=http://127.0.0.1:3000 ;;
esac
echo "compose-e2e: ---- $mode ($file)"
cd "$root/examples/compose"
dc() { docker-compose -p "$project" -f "$file" -f docker-compose.ci.yml "$@"; }
cleanup() {
  [ -n "${project:-}" ] || return 0
  docker rm -f "$project-capture" >/dev/null 2>&1 || true
  dc down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

# Short SVID lifetime: several renewals happen while the test runs.
export SVID_TTL=${SVID_TTL:-2m} SVID_CHECK_INTERVAL=${SVID_CHECK_INTERVAL:-5s}

# ------------------------------------------------------------------------------ up + health
start=$(date +%s)
if ! timeout 420 docker-compose -p "$project" -f "$file" -f docker-compose.ci.yml \
    up -d documentserver-app integrator-app >/tmp/"$project"-up.log 2>&1; then
  fail "stack up"
  tail -n 20 /tmp/"$project"-up.log
  for c in $(dc ps -q); do
    state=$(docker inspect -f '{{.Name}} {{.State.Status}} exit={{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c")
    case $state in *unhealthy*|*restarting*|*starting*|*exit=[1-9]*)
      echo "compose-e2e: not healthy: $state; last log lines:"; docker logs --tail 15 "$c" 2>&1 | sed 's/^/    /';;
    esac
  done
  cleanup; return
fi
pass "$mode: stack up and healthy in $(( $(date +%s) - start )) s"

container() { dc ps -q "$1"; }
svid_before=$(dc exec -T certs sha256sum /certs/documentserver/svid.pem | cut -c1-16)
call() { dc exec -T integrator-app python3 /standin/standin.py call "$ds_url" "$@"; }
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); b=json.loads(d["body"]) if d["body"].startswith("{") else {}; print({**b, **d}.get(sys.argv[1]))' "$1"; }

# ------------------------------------------------------------------------------ core asserts
out=$(call)
echo "compose-e2e: valid call -> $out"
check "integrator -> CommandService with a valid JWT: 200" [ "$(field status <<<"$out")" = 200 ]
check "documentserver app saw the caller's SPIFFE ID" [ "$(field caller <<<"$out")" = "$trust/integrator" ]
key=$(field key <<<"$out")
check "SQL round trip (PostgreSQL via opaque mTLS)" [ "$(field sql <<<"$out")" = "$key" ]
check "Redis round trip (opaque mTLS)" [ "$(field redis <<<"$out")" = "$key" ]
check "AMQP publish + consume (RabbitMQ via opaque mTLS)" [ "$(field amqp <<<"$out")" = "$key" ]
check "documentserver -> integrator callback: 200" [ "$(field callback <<<"$out")" = 200 ]
cbs=$(dc exec -T integrator-app python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:3000/callbacks").read().decode())')
check "integrator saw the callback from the documentserver's SPIFFE ID" \
  python3 -c 'import json,sys; cb=json.loads(sys.argv[1]); sys.exit(0 if any(c["key"]==sys.argv[2] and c["caller"]==sys.argv[3] for c in cb) else 1)' \
  "$cbs" "$key" "$trust/documentserver"

out=$(call --forge)
echo "compose-e2e: forged call -> $out"
check "forged token: 401 unauthenticated" [ "$(field status <<<"$out"):$(field docmesh-error <<<"$out")" = 401:unauthenticated ]
check "forged token: the 401 names its cause" grep -qi "signature" <<<"$out"

# A container outside the mesh, on the same network: plaintext is refused everywhere.
net=${project//[^a-zA-Z0-9_-]/}_mesh
outsider() { docker run --rm --network "$net" -v "$root/tests/scripts/compose:/standin:ro" "$base" python3 /standin/standin.py probe "$@"; }
for target in $targets; do
  r=$(outsider ${target/:/ })
  check "outsider -> $target refused ($r)" bash -c '! grep -q "HTTP/1.1 2\|REDIS\|AMQP\|PONG" <<<"$1"' _ "$r"
done

# Capture on the documentserver's interface while a call runs: no plaintext between services.
ds=$(container documentserver)
cap=$(mktemp)
docker run -d --name "$project-capture" --network "container:$ds" --cap-add NET_RAW --cap-add NET_ADMIN \
  "$base" tcpdump -i eth0 -U -w /tmp/cap.pcap tcp >/dev/null
sleep 2
out=$(call)
key=$(field key <<<"$out")
control=${targets%% *}  # a plaintext control the sidecar accepts and refuses: the capture must show it
outsider ${control/:/ } >/dev/null
sleep 1
docker kill -s INT "$project-capture" >/dev/null
docker wait "$project-capture" >/dev/null
docker cp "$project-capture:/tmp/cap.pcap" "$cap" 2>/dev/null || true
docker rm -f "$project-capture" >/dev/null 2>&1 || true
check "capture: packets seen ($(stat -c %s "$cap") bytes)" [ "$(stat -c %s "$cap")" -gt 1000 ]
check "capture: no plaintext key/SQL/HTTP between services" \
  bash -c '! grep -a -q -e "$1" -e "task_result" -e "CommandService" -e "ds.convertqueue" "$2"' _ "$key" "$cap"
check "capture: the outsider's plaintext attempt is visible (the capture can see plaintext)" \
  grep -a -q "GET /healthcheck" "$cap"
rm -f "$cap"

wait_healthy() { # wait_healthy SERVICE: up to 90 s
  local c; c=$(container "$1")
  for _ in $(seq 90); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$c" 2>/dev/null)" = healthy ] && return 0
    sleep 1
  done
  echo "compose-e2e: $1 not healthy after 90 s; last log lines:"; docker logs --tail 15 "$c" 2>&1 | sed 's/^/    /'
  return 1
}

if [ "$mode" = transparent ]; then
# ------------------------------------------------------------------------------ PostgreSQL down
dc stop postgresql-app >/dev/null 2>&1
out=$(call)
echo "compose-e2e: call with PostgreSQL stopped -> $out"
check "PostgreSQL stopped: the call fails with the backend's error" [ "$(field status <<<"$out")" = 500 ]
pglog=$(dc logs --no-color --tail 20 postgresql-proxy 2>&1)
echo "$pglog" | tail -n 3 | sed 's/^/    /'
check "PostgreSQL stopped: the sidecar's log names the cause" grep -qi "127.0.0.1:5432.*refused\|refused.*5432\|5432.*refused" <<<"$pglog"
dc start postgresql-app >/dev/null 2>&1
if wait_healthy postgresql-app; then
  out=$(call)
  check "PostgreSQL back: calls succeed again" [ "$(field status <<<"$out"):$(field sql <<<"$out")" = "200:$(field key <<<"$out")" ]
else
  fail "PostgreSQL back: healthy again"
fi

# ------------------------------------------------------------------------------ restart: fail closed
# A restarted namespace holder is a new network namespace: it must carry the redirects again
# before anything can use it, and nothing in it may answer in plaintext.
docker restart "$(container documentserver)" >/dev/null
if wait_healthy documentserver; then
  check "restarted namespace: redirects re-applied" \
    bash -c 'docker exec "$1" iptables-save -t nat | grep -q "REDIRECT.*15006"' _ "$(container documentserver)"
  r=$(outsider documentserver 8888)
  check "restarted namespace: outsider refused, no plaintext ($r)" bash -c '! grep -q "HTTP/1.1" <<<"$1"' _ "$r"
  r=$(call)
  check "restarted namespace: the integrator's call fails closed or works ($(field status <<<"$r"))" \
    bash -c '[ "$1" != 200 ] || [ "$2" = "$3" ]' _ "$(field status <<<"$r")" "$(field caller <<<"$r")" "$trust/integrator"
  # The sidecar and the app join the new namespace when they restart.
  docker restart "$(container documentserver-proxy)" >/dev/null
  wait_healthy documentserver-proxy >/dev/null
  docker restart "$(container documentserver-app)" >/dev/null
  wait_healthy documentserver-app >/dev/null
  # The integrator's sidecar re-resolves and re-probes the document server (10 s intervals).
  for _ in $(seq 30); do
    out=$(call)
    [ "$(field status <<<"$out")" = 200 ] && break
    sleep 1
  done
  echo "compose-e2e: call after the rejoin -> $out"
  check "restarted namespace: calls succeed after the sidecar and app rejoin" \
    [ "$(field status <<<"$out"):$(field caller <<<"$out")" = "200:$trust/integrator" ]
else
  fail "restarted namespace: healthy again"
fi

# ------------------------------------------------------------------------------ SVID renewal
# The SVIDs were issued with a short TTL at `up`: keep calling until the first ones have expired
# (plus a margin); every call must succeed, so the sidecars served renewed SVIDs throughout.
issued=$(docker inspect -f '{{.State.StartedAt}}' "$(container certs)")
ttl_s=$(python3 -c 'import re,sys; n,u=re.fullmatch(r"(\d+)([smh])",sys.argv[1]).groups(); print(int(n)*{"s":1,"m":60,"h":3600}[u])' "$SVID_TTL")
until_s=$(( $(date -d "$issued" +%s) + ttl_s + 15 ))
calls=0 bad=0
while [ "$(date +%s)" -lt "$until_s" ]; do
  out=$(call)
  calls=$((calls + 1))
  [ "$(field status <<<"$out")" = 200 ] || { bad=$((bad + 1)); echo "compose-e2e: failed call during renewal: $out"; }
  sleep 1
done
svid_after=$(dc exec -T certs sha256sum /certs/documentserver/svid.pem | cut -c1-16)
check "SVID renewal: the documentserver's SVID was replaced ($svid_before -> $svid_after)" \
  [ -n "$svid_after" -a "$svid_after" != "$svid_before" ]
check "SVID renewal: $calls calls across the first SVIDs' expiry, $bad failed" [ "$calls:$bad" = "$calls:0" -a "$calls" -gt 0 ]

fi

# ------------------------------------------------------------------------------ down -v
dc down -v --remove-orphans >/dev/null 2>&1
left=$(docker ps -aq --filter "label=com.docker.compose.project=$project"; \
  docker volume ls -q --filter "label=com.docker.compose.project=$project"; \
  docker network ls -q --filter "label=com.docker.compose.project=$project")
check "$mode: down -v leaves no container, volume or network behind" [ -z "$left" ]
}

for v in ${COMPOSE_E2E_VARIANTS:-transparent explicit}; do
  variant "$v"
done

echo "compose-e2e: $passed passed, $failed failed"
[ "$failed" = 0 ]
