#!/usr/bin/env python3
"""OnlyOffice stand-ins for the compose end-to-end test (tests/scripts/compose-e2e.sh).

Small apps speaking OnlyOffice's real paths and token shapes, run on the Debian base image:

Both apps listen on loopback only (HOST): the sidecar is their only way in.

  standin.py documentserver   the document server on :8888 (docs-proxy's port): /healthcheck ->
                              true, POST /coauthoring/CommandService.ashx and /ConvertService.ashx
                              (HS256 JWT in the body's `token`), a WebSocket under /doc/<id>/c/.
                              Every command really queries PostgreSQL (OnlyOffice's task_result
                              table), sets and reads a Redis key, publishes to and consumes from a
                              RabbitMQ queue, then POSTs a callback to the integrator.
  standin.py integrator       the integrator (docs-example's port 3000): callback POSTs
                              {key, status, url, token} are checked and remembered; GET /callbacks.
  standin.py call URL [--forge]
                              one CommandService call with a valid (or forged) token; prints the
                              status and body. Run inside the integrator's namespace.
  standin.py probe HOST PORT  one raw TCP connect + send; prints what came back (for refusals).

Secrets and peers come from the same environment variables OnlyOffice uses (JWT_SECRET,
JWT_HEADER, DB_HOST, DB_NAME, DB_USER, DB_PWD, AMQP_HOST, AMQP_USER, AMQP_PWD, REDIS_SERVER_HOST).
"""
import base64
import hashlib
import hmac
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(payload: dict, secret: str) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    sig = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


def verify_jwt(token: str, secret: str) -> dict:
    header, body, sig = token.split(".")
    want = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(b64url(want), sig):
        raise ValueError("bad signature")
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


# ----------------------------------------------------------------------------- document server
def backends_round_trip(key: str) -> dict:
    """One real SQL, Redis and AMQP round trip (through the sidecar: plain here, mTLS outside)."""
    import pika
    import psycopg2
    import redis

    out = {}
    with psycopg2.connect(host=env("DB_HOST", "postgresql"), port=int(env("DB_PORT", "5432")),
                          dbname=env("DB_NAME", "onlyoffice"), user=env("DB_USER", "onlyoffice"),
                          password=env("DB_PWD"), connect_timeout=5) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO task_result (tenant, id, status, status_info) VALUES (%s, %s, 1, 0) "
                "ON CONFLICT (tenant, id) DO UPDATE SET last_open_date = now() RETURNING id",
                ("localhost", key))
            out["sql"] = cur.fetchone()[0]
    r = redis.Redis(host=env("REDIS_SERVER_HOST", "redis"), port=int(env("REDIS_SERVER_PORT", "6379")),
                    socket_timeout=5)
    r.set(f"ds:{key}", key, ex=600)
    out["redis"] = r.get(f"ds:{key}").decode()
    params = pika.ConnectionParameters(
        host=env("AMQP_HOST", "rabbitmq"), port=5672, socket_timeout=5, blocked_connection_timeout=5,
        credentials=pika.PlainCredentials(env("AMQP_USER", "guest"), env("AMQP_PWD", "guest")))
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.queue_declare(queue="ds.convertqueue", durable=True)
        ch.basic_publish(exchange="", routing_key="ds.convertqueue", body=key.encode())
        got = None
        for _ in range(50):
            method, _props, body = ch.basic_get("ds.convertqueue", auto_ack=True)
            if method is not None:
                got = body.decode()
                if got == key:
                    break
            time.sleep(0.1)
        out["amqp"] = got
    finally:
        conn.close()
    return out


def post_json(url: str, payload: dict, headers: dict, timeout: float = 10):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def documentserver() -> None:
    import asyncio

    from aiohttp import WSMsgType, web

    secret = env("JWT_SECRET")
    callback_base = env("INTEGRATOR_URL", "http://integrator:3000")

    async def healthcheck(_req):
        return web.Response(text="true")

    def authorized(body: dict, req) -> dict:
        token = body.get("token") or req.headers.get(env("JWT_HEADER", "Authorization"), "")
        token = token.removeprefix("Bearer ")
        return verify_jwt(token, secret)

    async def command(req):
        body = await req.json()
        try:
            claims = authorized(body, req)
        except Exception as e:  # OnlyOffice answers error 6 (invalid token) inside a 200
            return web.json_response({"error": 6, "detail": str(e)})
        key = str(claims.get("key", "none"))
        loop = asyncio.get_running_loop()
        try:
            rt = await loop.run_in_executor(None, backends_round_trip, key)
        except Exception as e:
            return web.json_response({"error": 1, "detail": f"backend: {e}"}, status=500)
        token = sign_jwt({"key": key, "status": 1, "users": ["u1"]}, secret)
        status, _text, _h = await loop.run_in_executor(
            None, post_json, f"{callback_base}/callback?key={key}",
            {"key": key, "status": 1, "users": ["u1"], "token": token}, {})
        return web.json_response({
            "error": 0, "key": key, "version": "8.2.2",
            "caller": req.headers.get("docmesh-client-id"), "callback": status, **rt})

    async def convert(req):
        body = await req.json()
        try:
            claims = authorized(body, req)
        except Exception as e:
            return web.json_response({"error": -8, "detail": str(e)})
        return web.json_response({"endConvert": True, "percent": 100, "fileType": claims.get("outputtype", "pdf"),
                                  "fileUrl": "http://documentserver:8888/cache/files/out.pdf"})

    async def ws(req):
        sock = web.WebSocketResponse()
        await sock.prepare(req)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/healthcheck", healthcheck)
    app.router.add_post("/coauthoring/CommandService.ashx", command)
    app.router.add_post("/ConvertService.ashx", convert)
    app.router.add_get("/doc/{docid}/c/{tail:.*}", ws)
    web.run_app(app, host=env("HOST", "127.0.0.1"), port=int(env("PORT", "8888")), print=None)


# ----------------------------------------------------------------------------- integrator
def integrator() -> None:
    from aiohttp import web

    secret = env("JWT_SECRET")
    seen = []

    async def callback(req):
        body = await req.json()
        try:
            verify_jwt(body.get("token", ""), secret)
        except Exception as e:
            return web.json_response({"error": 1, "detail": str(e)}, status=403)
        seen.append({"key": body.get("key"), "status": body.get("status"),
                     "caller": req.headers.get("docmesh-client-id")})
        return web.json_response({"error": 0})

    async def callbacks(_req):
        return web.json_response(seen)

    async def health(_req):
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/callback", callback)
    app.router.add_get("/callbacks", callbacks)
    app.router.add_get("/health", health)
    web.run_app(app, host=env("HOST", "127.0.0.1"), port=int(env("PORT", "3000")), print=None)


def call(url: str, forge: bool) -> None:
    key = f"k{int(time.time() * 1000)}"
    secret = "not-the-secret" if forge else env("JWT_SECRET")
    payload = {"c": "info", "key": key}
    status, text, headers = post_json(url, {**payload, "token": sign_jwt(payload, secret)}, {})
    print(json.dumps({"status": status, "body": text, "docmesh-error": headers.get("docmesh-error")}))


def probe(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            data = s.recv(200)
            print(f"answered {data[:60]!r}")
    except OSError as e:
        print(f"refused {e}")


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: standin.py documentserver|integrator|call URL [--forge]|probe HOST PORT")
    role = sys.argv[1]
    if role == "documentserver":
        documentserver()
    elif role == "integrator":
        integrator()
    elif role == "call":
        call(sys.argv[2], "--forge" in sys.argv[3:])
    elif role == "probe":
        probe(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(f"standin.py: unknown role {role!r}")


if __name__ == "__main__":
    main()
