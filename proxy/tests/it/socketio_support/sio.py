"""A real socket.io server replica and client (python-socketio) for the stickiness test
(proxy/tests/it/socketio_sticky.rs).

server PORT NAME: a python-socketio server (aiohttp) on 127.0.0.1:PORT whose `whoami` event
answers NAME; prints `ready` once listening. A request with a session id this replica did not
create is refused by python-socketio ("Invalid session"), as docservice answers
"Session ID unknown".

client URL DOCS: for each of DOCS documents one client with the polling transport only and one
that upgrades to WebSocket, both with `?shardkey=<doc>`; each emits `whoami` several times.
Prints one JSON object: {"docs": {doc: [replica names]}, "transports": [...], "errors": [...]}.
"""
import json
import sys


def server(port, name):
    import asyncio
    from aiohttp import web
    import socketio

    sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=5, ping_timeout=5)

    @sio.event
    async def whoami(sid, data):
        return name

    app = web.Application()
    sio.attach(app)

    async def main():
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", int(port)).start()
        print("ready", flush=True)
        while True:
            await asyncio.sleep(3600)

    asyncio.run(main())


def client(url, docs):
    import socketio

    out = {"docs": {}, "transports": [], "errors": []}
    for d in range(int(docs)):
        doc = f"doc-{d}"
        for transports in (["polling"], ["polling", "websocket"]):
            seen = out["docs"].setdefault(doc, [])
            sio = socketio.Client(reconnection=False, request_timeout=10)
            try:
                sio.connect(f"{url}/?shardkey={doc}", transports=transports, wait_timeout=10)
                for _ in range(4):
                    seen.append(sio.call("whoami", doc, timeout=10))
                out["transports"].append(sio.transport())
            except Exception as e:  # noqa: BLE001 - every failure is reported, none hidden
                out["errors"].append(f"{doc} {'+'.join(transports)}: {type(e).__name__}: {e}")
            finally:
                try:
                    sio.disconnect()
                except Exception:  # noqa: BLE001
                    pass
            out["docs"][doc] = sorted(set(seen))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    {"server": server, "client": client}[sys.argv[1]](*sys.argv[2:])
