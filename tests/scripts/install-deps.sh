#!/usr/bin/env bash
# Installs the system packages docmesh's tests and benchmarks use, when they are missing:
# iptables and iproute2 for the network-namespace tests, openssl and curl as independent
# TLS/HTTP peers, nginx and haproxy as interop peers, docker-compose to validate and run the
# compose examples, debootstrap for the compose end-to-end test's Debian base image,
# Node.js as an independent TLS client (NODE_EXTRA_CA_CERTS, certs/tests/interop.rs).
set -euo pipefail
need=()
for pair in iptables:iptables ip:iproute2 openssl:openssl curl:curl nginx:nginx haproxy:haproxy \
            docker-compose:docker-compose tcpdump:tcpdump wrk:wrk python3:python3 \
            socat:socat setpriv:util-linux debootstrap:debootstrap node:nodejs; do
  bin=${pair%%:*}; pkg=${pair##*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing ${need[*]} and not root; install them with apt-get" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# PyJWT and cryptography: an independent JWT implementation for the authz interop tests
# (proxy/tests/it/authz_pyjwt.rs) and an independent SPIFFE bundle JSON reader
# (certs/tests/interop.rs). pip first (works as root in CI), then Debian's packages.
if ! python3 -c 'import jwt, cryptography' >/dev/null 2>&1; then
  echo "install-deps: installing PyJWT and cryptography" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      pyjwt cryptography >/dev/null 2>&1 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      pyjwt cryptography >/dev/null 2>&1 \
    || { [ "$(id -u)" = 0 ] && export DEBIAN_FRONTEND=noninteractive && apt-get update -qq \
         && apt-get install -y -qq --no-install-recommends python3-jwt python3-cryptography >/dev/null; } \
    || true
  if ! python3 -c 'import jwt, cryptography' >/dev/null 2>&1; then
    echo "install-deps: PyJWT/cryptography could not be installed (python3 -m pip install pyjwt cryptography)" >&2
    exit 1
  fi
fi

# kubernetes-validate: Kubernetes' OpenAPI schemas, offline, to validate the manifests that
# `docmesh-init inject` writes (tests/tests/deploy_kubernetes.rs runs `python3 -m
# kubernetes_validate`); jsonpatch: an independent RFC 6902 implementation that applies the
# admission webhook's patches (tests/tests/webhook_admission.rs).
if ! python3 -c 'import kubernetes_validate, jsonpatch' >/dev/null 2>&1; then
  echo "install-deps: installing kubernetes-validate and jsonpatch" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      kubernetes-validate jsonpatch >/dev/null 2>&1 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      kubernetes-validate jsonpatch >/dev/null 2>&1 \
    || true
  if ! python3 -c 'import kubernetes_validate, jsonpatch' >/dev/null 2>&1; then
    echo "install-deps: kubernetes-validate could not be installed (python3 -m pip install kubernetes-validate jsonpatch)" >&2
    exit 1
  fi
fi

# grpcio: a real gRPC client for proxy/tests/it/grpc_errors.rs (synthesized errors as gRPC status).
if ! python3 -c 'import grpc' >/dev/null 2>&1; then
  echo "install-deps: installing grpcio" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      grpcio >/dev/null 2>&1 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      grpcio >/dev/null 2>&1 \
    || true
  python3 -c 'import grpc' >/dev/null 2>&1 \
    || { echo "install-deps: grpcio could not be installed (python3 -m pip install grpcio)" >&2; exit 1; }
fi

# --- issue 22 (OTLP export) ---
# opentelemetry-proto (the published OpenTelemetry protos, with protobuf) and grpcio: the
# independent OTLP receiver of proxy/tests/it/otlp_support/receiver.py; prometheus-client: its
# OpenMetrics parser reads /metrics with exemplars (proxy/tests/it/observe_otlp.rs).
OTLP_CHECK='import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc, prometheus_client.openmetrics.parser'
if ! python3 -c "$OTLP_CHECK" >/dev/null 2>&1; then
  echo "install-deps: installing opentelemetry-proto and prometheus-client" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      opentelemetry-proto grpcio prometheus-client >/dev/null 2>&1 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      opentelemetry-proto grpcio prometheus-client >/dev/null 2>&1 \
    || true
  python3 -c "$OTLP_CHECK" >/dev/null 2>&1 \
    || { echo "install-deps: could not install opentelemetry-proto grpcio prometheus-client (python3 -m pip install ...)" >&2; exit 1; }
fi
# --- end issue 22 ---
# --- issue 19 (endpoints/hashing): python-socketio, aiohttp, requests, websocket-client: a real
# socket.io server (three replicas) and client for proxy/tests/it/socketio_sticky.rs (OnlyOffice
# stickiness on shardkey).
if ! python3 -c 'import socketio, aiohttp, requests, websocket' >/dev/null 2>&1; then
  echo "install-deps: installing python-socketio, aiohttp, websocket-client" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      'python-socketio[client]' aiohttp websocket-client >/dev/null 2>&1 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      'python-socketio[client]' aiohttp websocket-client >/dev/null 2>&1 \
    || true
  python3 -c 'import socketio, aiohttp, requests, websocket' >/dev/null 2>&1 \
    || { echo "install-deps: python-socketio could not be installed (python3 -m pip install 'python-socketio[client]' aiohttp websocket-client)" >&2; exit 1; }
fi
# dnsmasq (dnsmasq-base: the binary only, no system service): the headless-service DNS server
# of tests/tests/netns_endpoints.rs.
if ! command -v dnsmasq >/dev/null 2>&1 && [ ! -x /usr/sbin/dnsmasq ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "install-deps: installing dnsmasq-base" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends dnsmasq-base >/dev/null
  else
    echo "install-deps: missing dnsmasq and not root; apt-get install dnsmasq-base" >&2
    exit 1
  fi
fi
# --- end issue 19 (endpoints/hashing)
