"""A shell in a running instance from a terminal, through the portal's API (the client side of
portal.consumers.ExecConsumer and the REST exec action)::

    export PORTAL_TOKEN=...          # or --token-file FILE (never the token itself on argv)
    python -m portal.exec_client --url http://127.0.0.2:8000 TENANT INSTANCE
    python -m portal.exec_client --url http://127.0.0.2:8000 TENANT INSTANCE -- ls -l /

INSTANCE is an instance id or a unique prefix of one (as the app page shows it). Without a
command: an interactive shell (the local terminal in raw mode while it runs; its size follows
the window; Ctrl-C goes to the remote shell); the client exits with the shell's exit code.
With a command after ``--``: one-shot (REST), its output printed, the client exits with its
exit code (124 when it timed out, ``--timeout``; 141 when its output passed the portal's cap,
which ended it). Errors (a refusal, no such instance) go to
stderr with exit status 1.

Only the standard library and websocket-client: it needs no Django settings.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import websocket

EXIT_ERROR = 1
EXIT_TIMED_OUT = 124
EXIT_TRUNCATED = 141  # 128 + SIGPIPE: what a writer gets when its reader stops reading
HTTP_TIMEOUT_S = 30
READ_CHUNK_BYTES = 4096
ACK_BYTES = 16 * 1024  # output written to stdout is acked in steps this big,
ACK_DELAY_S = 0.05  # or when no more came for this long
PING_EVERY_S = 20


class ClientError(Exception):
    pass


def read_token(token_file: str | None) -> str:
    if token_file:
        return Path(token_file).read_text().strip()
    token = os.environ.get("PORTAL_TOKEN", "").strip()
    if not token:
        raise ClientError("Give an API token in PORTAL_TOKEN or --token-file (make one on the API tokens page).")
    return token


def api(url: str, token: str, path: str, body: dict | None = None, timeout_s: float = HTTP_TIMEOUT_S) -> dict:
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json", "Accept": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read())
        except ValueError:
            detail = {}
        raise ClientError(f"{exc.code}: {detail.get('detail') or detail or exc.reason}") from None


def resolve_instance(url: str, token: str, tenant: str, instance: str) -> str:
    """The instance's id from an id or a unique prefix (the tenant's instances, newest first)."""
    slug = urllib.parse.quote(tenant, safe="")
    matches: list[str] = []
    page = f"/api/v1/tenants/{slug}/instances/"
    for _ in range(20):  # at most 20 pages: enough for any prefix a person types
        listing = api(url, token, page)
        matches += [row["id"] for row in listing.get("results", []) if str(row["id"]).startswith(instance)]
        if instance in matches or not listing.get("next"):
            break
        page = urllib.parse.urlsplit(listing["next"])._replace(scheme="", netloc="").geturl()
    if instance in matches:
        return instance
    if len(matches) != 1:
        raise ClientError(f"{len(matches)} instances of {tenant} match {instance!r}: give more of its id.")
    return matches[0]


def run_command(
    url: str, token: str, tenant: str, instance_id: str, command: list[str], timeout_s: float | None
) -> int:
    body: dict = {"command": command}
    if timeout_s is not None:
        body["timeout"] = timeout_s
    slug = urllib.parse.quote(tenant, safe="")
    result = api(url, token, f"/api/v1/tenants/{slug}/instances/{instance_id}/exec/", body, (timeout_s or 300) + 30)
    sys.stdout.write(result["output"])
    sys.stdout.flush()
    if result.get("truncated"):
        print("exec_client: the output passed the portal's limit: the command was ended there", file=sys.stderr)
        return EXIT_TRUNCATED
    if result.get("timed_out"):
        print("exec_client: the command timed out", file=sys.stderr)
        return EXIT_TIMED_OUT
    return int(result["exit_code"])


def shell_url(url: str, tenant: str, instance_id: str, rows: int, cols: int) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = f"/ws/t/{urllib.parse.quote(tenant, safe='')}/instances/{instance_id}/exec/"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, f"rows={rows}&cols={cols}", ""))


def interactive_shell(url: str, token: str, tenant: str, instance_id: str) -> int:
    size = shutil.get_terminal_size((80, 24))
    connection = websocket.create_connection(
        shell_url(url, tenant, instance_id, size.lines, size.columns),
        header=[f"Authorization: Token {token}"],
        suppress_origin=True,  # not a browser: the token is the credential
        timeout=HTTP_TIMEOUT_S,
    )
    stdin = sys.stdin.fileno()
    stdout = sys.stdout.buffer
    is_tty = os.isatty(stdin)
    saved = None
    if is_tty:
        import termios
        import tty

        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)

        def resized(*_):
            fresh = shutil.get_terminal_size((80, 24))
            connection.send(json.dumps({"type": "resize", "rows": fresh.lines, "cols": fresh.columns}))

        signal.signal(signal.SIGWINCH, resized)
    stdin_open = True
    written = acked = 0
    try:
        while True:
            wait_s = ACK_DELAY_S if written > acked else PING_EVERY_S
            readable, _, _ = select.select([connection.sock] + ([stdin] if stdin_open else []), [], [], wait_s)
            if not readable:
                if written > acked:  # the output stopped: ack the rest
                    acked = written
                    connection.send(json.dumps({"type": "ack", "bytes": written}))
                else:
                    connection.send(json.dumps({"type": "ping"}))
                continue
            if stdin in readable:
                data = os.read(stdin, READ_CHUNK_BYTES)
                if not data:
                    stdin_open = False  # a piped script ended: the shell reads its end as EOF (Ctrl-D)
                    data = b"\x04"
                connection.send(json.dumps({"type": "input", "data": data.decode("utf-8", "surrogateescape")}))
            if connection.sock in readable:
                opcode, frame = connection.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    raise ClientError("the portal closed the shell")
                message = json.loads(frame)
                if message["type"] == "output":
                    data = base64.b64decode(message["data"])
                    stdout.write(data)
                    stdout.flush()
                    written += len(data)
                    if written - acked >= ACK_BYTES:
                        acked = written  # written out: the portal may let the shell go on
                        connection.send(json.dumps({"type": "ack", "bytes": written}))
                elif message["type"] == "exit":
                    return int(message["exit_code"])
                elif message["type"] == "error":
                    raise ClientError(message["message"])
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m portal.exec_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the portal's URL, e.g. http://127.0.0.2:8000")
    parser.add_argument("--token-file", help="a file holding the API token (default: $PORTAL_TOKEN)")
    parser.add_argument("--timeout", type=float, help="seconds a one-shot command may run (the portal caps it)")
    parser.add_argument("tenant")
    parser.add_argument("instance", help="an instance id, or a unique prefix of one")
    parser.add_argument("command", nargs="*", help="after --: run this one command instead of a shell")
    args = parser.parse_args(argv)
    try:
        token = read_token(args.token_file)
        instance_id = resolve_instance(args.url, token, args.tenant, args.instance)
        if args.command:
            return run_command(args.url, token, args.tenant, instance_id, args.command, args.timeout)
        return interactive_shell(args.url, token, args.tenant, instance_id)
    except (ClientError, OSError, websocket.WebSocketException) as exc:
        print(f"exec_client: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
