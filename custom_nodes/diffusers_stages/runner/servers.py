"""A planned batch fanned out over ComfyUI servers.

The servers are the engine: each run of the plan is queued on one of them through ComfyUI's HTTP API (``/prompt``,
``/history``, ``/view``, ``/upload/image``; its steps from the ``/ws`` progress messages) and its pictures are
written locally exactly where and as a local run writes them (``<batch>/run_NNNNN/<prefix>_00001_.png``, a line in
``manifest.jsonl``), so plan, manifest and resume are the batch's own. One worker per server takes the next run
whenever its server is free, so runs go to the least-busy server. A server that stops answering has its run put
back for the others (a run is recorded only once its pictures are written: none is lost or done twice); a prompt a
server refuses stops the batch with the server's message. Whatever stops a batch leaves it resumable with the same
command.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .execute import WorkflowError
from .files import atomic_file

log = logging.getLogger("diffusers_stages.runner")
SAVED_NAME = re.compile(r"^(?P<prefix>.*)_\d{5}_\.png$")  # how Save Image names its files


class ServerGone(Exception):
    """The server does not answer (down, killed, unreachable): its run goes to another server."""


class PromptRefused(Exception):
    """The server refused the prompt or a node failed on it: the same would happen elsewhere, so the batch stops."""


class ProgressSocket:
    """ComfyUI's websocket (``/ws?clientId=…``), as much of RFC 6455 as its messages need: JSON text messages in,
    preview frames (binary) skipped, pings answered. Plain http servers only (wss is left to the /history poll)."""

    def __init__(self, url: str, client_id: str, timeout: float):
        import base64
        import socket

        parsed = urllib.parse.urlparse(url)
        if parsed.scheme != "http":
            raise OSError("the progress socket speaks plain http only")
        host, port = parsed.hostname, parsed.port or 80
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("the server closed the websocket handshake")
            head += chunk
        head, _, self.buffer = head.partition(b"\r\n\r\n")
        self.kind, self.partial = 1, b""
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            self.sock.close()
            raise OSError("no websocket at /ws")

    def _need(self, count: int) -> None:
        """At least ``count`` bytes in the buffer (a timeout leaves what came so far in it)."""
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("the websocket closed")
            self.buffer += chunk

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)  # a client masks what it sends
        header = bytes([0x80 | opcode, 0x80 | len(payload)])  # control frames only: payload < 126
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _frame(self) -> tuple[bool, int, bytes]:
        """(final, opcode, payload) of the next whole frame, taken from the buffer only once it is all there."""
        self._need(2)
        first, second = self.buffer[0], self.buffer[1]
        length, start = second & 0x7F, 2
        if length >= 126:
            size = 2 if length == 126 else 8
            self._need(2 + size)
            length, start = int.from_bytes(self.buffer[2:2 + size], "big"), 2 + size
        masked = bool(second & 0x80)
        end = start + (4 if masked else 0) + length
        self._need(end)
        data = self.buffer[end - length:end]
        if masked:
            mask = self.buffer[start:start + 4]
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.buffer = self.buffer[end:]
        return bool(first & 0x80), first & 0x0F, data

    def message(self) -> dict[str, Any] | None:
        """The next JSON message (None for a frame that is not one); TimeoutError when none came in time."""
        while True:
            final, opcode, data = self._frame()
            if opcode == 9:
                self._send(10, data)
                continue
            if opcode == 8:
                raise OSError("the websocket closed")
            if opcode in (1, 2):
                self.kind, self.partial = opcode, b""
            self.partial += data
            if final:
                payload, self.partial = self.partial, b""
                return json.loads(payload) if self.kind == 1 else None

    def close(self) -> None:
        self.sock.close()


class ComfyServer:
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            self.url = "http://" + self.url
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        self.uploaded: set[str] = set()
        self.channel: ProgressSocket | None = None

    def __str__(self) -> str:
        return self.url

    def _open(self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServerGone(f"{self.url} does not answer ({reason})") from error

    def get_json(self, path: str) -> Any:
        try:
            return json.loads(self._open(path))
        except urllib.error.HTTPError as error:
            raise ServerGone(f"{self.url}{path} answered HTTP {error.code}") from error
        except ValueError as error:
            raise ServerGone(f"{self.url}{path} did not answer JSON; is it a ComfyUI server?") from error

    def node_types(self) -> dict[str, Any]:
        return self.get_json("/object_info")

    def upload(self, path: str) -> None:
        """Put an input picture in the server's input folder (once per server), as the frontend uploads one."""
        name = os.path.basename(path)
        if name in self.uploaded:
            return
        boundary = uuid.uuid4().hex
        with open(path, "rb") as f:
            content = f.read()
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n"]
        for field, value in (("overwrite", "true"), ("type", "input")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        try:
            self._open("/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        except urllib.error.HTTPError as error:
            raise PromptRefused(f"{self.url} refused the input picture '{name}' (HTTP {error.code})") from error
        self.uploaded.add(name)

    def submit(self, prompt: dict[str, Any], extra_pnginfo: dict[str, Any]) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id,
                           "extra_data": {"extra_pnginfo": extra_pnginfo}}).encode()
        try:
            answer = json.loads(self._open("/prompt", body, {"Content-Type": "application/json"}))
        except urllib.error.HTTPError as error:
            raise PromptRefused(f"{self.url} refused the prompt: {refusal(error)}") from error
        return answer["prompt_id"]

    def progress_socket(self) -> ProgressSocket | None:
        """The server's websocket for this client's progress, or None (then only /history is polled)."""
        try:
            return ProgressSocket(self.url, self.client_id, self.timeout)
        except OSError as error:
            log.debug("%s: no progress websocket (%s); polling /history", self.url, error)
            return None

    def outputs(self, prompt_id: str, on_step=None, poll: float = 0.5) -> dict[str, Any]:
        """The run's outputs once the server has run it; a failed run raises PromptRefused. Steps are reported to
        ``on_step(value, max)`` from the websocket's progress messages; /history is asked whenever the socket is
        quiet for ``poll`` seconds or says the run ended (and always, without a socket)."""
        channel = self.channel if on_step else None
        while True:
            if channel is not None:
                try:
                    channel.sock.settimeout(poll)
                    message = channel.message()
                    data = (message or {}).get("data") or {}
                    if message and data.get("prompt_id") == prompt_id:
                        if message["type"] == "progress":
                            on_step(data.get("value"), data.get("max"))
                        if message["type"] not in ("execution_success", "execution_error",
                                                   "execution_interrupted") and not (
                                message["type"] == "executing" and data.get("node") is None):
                            continue  # the run goes on: no need to ask /history
                except TimeoutError:
                    pass
                except (OSError, ValueError):
                    self.hang_up()
                    channel = None
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    raise PromptRefused(f"{self.url}: the run failed: {execution_error(status)}")
                return entry.get("outputs", {})
            if channel is None:
                time.sleep(poll)

    def listen(self) -> None:
        """Open the progress websocket before the first prompt, so that no step of it is missed."""
        self.channel = self.progress_socket()

    def hang_up(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def download(self, image: dict[str, str]) -> bytes:
        query = urllib.parse.urlencode({key: image.get(key, "") for key in ("filename", "subfolder", "type")})
        try:
            return self._open(f"/view?{query}")
        except urllib.error.HTTPError as error:
            raise ServerGone(f"{self.url} lost the picture {image.get('filename')} (HTTP {error.code})") from error


def refusal(error: urllib.error.HTTPError) -> str:
    """ComfyUI's /prompt refusal: its message and each node's errors."""
    try:
        body = json.loads(error.read() or b"{}")
    except ValueError:
        return f"HTTP {error.code}"
    lines = [body.get("error", {}).get("message") or f"HTTP {error.code}"]
    for nid, node in (body.get("node_errors") or {}).items():
        for problem in node.get("errors", []):
            lines.append(f"node {nid} ({node.get('class_type')}): {problem.get('message')}: {problem.get('details')}")
    return "; ".join(line for line in lines if line)


def execution_error(status: dict[str, Any]) -> str:
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_message', '').strip()}"
    return status.get("status_str") or "unknown error"


def missing_node_types(prompt: dict[str, Any], available: dict[str, Any]) -> list[str]:
    return sorted({node["class_type"] for node in prompt.values()} - set(available))


def input_pictures(prompt: dict[str, Any], input_folder: str) -> list[str]:
    """The local input files the prompt's Load Image nodes name (one not here may be in the servers' input folders:
    their check of the prompt says if not)."""
    names = {node["inputs"].get("image") for node in prompt.values() if node["class_type"] == "LoadImage"}
    paths = (os.path.join(input_folder, name) for name in names if isinstance(name, str))
    return sorted(path for path in paths if os.path.isfile(path))


def write_pictures(server: ComfyServer, outputs: dict[str, Any], folder: str,
                   manifest: dict[str, Any] | None) -> list[str]:
    """The run's saved pictures, downloaded and written into ``folder`` as Save Image names them there (its prefix,
    counting from 00001 in this folder), with the run manifest added as a text chunk (pixels untouched)."""
    written = []
    for nid in sorted(outputs, key=lambda n: (len(n), n)):
        for image in outputs[nid].get("images", []):
            if image.get("type") != "output":
                continue  # previews
            match = SAVED_NAME.match(image["filename"])
            prefix = match.group("prefix") if match else os.path.splitext(image["filename"])[0]
            target = os.path.join(folder, image.get("subfolder", ""))
            os.makedirs(target, exist_ok=True)
            counter = 1 + sum(1 for f in os.listdir(target) if SAVED_NAME.match(f) and f.startswith(prefix + "_"))
            path = os.path.join(target, f"{prefix}_{counter:05}_.png")
            with Image.open(io.BytesIO(server.download(image))) as picture:
                picture.load()
                info = PngInfo()
                for key, value in picture.text.items():
                    info.add_text(key, value)
                if manifest is not None:
                    info.add_text("diffusers_stages", json.dumps(manifest))
                with atomic_file(path) as partial:
                    picture.save(partial, format="PNG", pnginfo=info, compress_level=4)
            written.append(path)
    return written


def server_manifest(server: ComfyServer, node_info: dict[str, Any], prompt: dict[str, Any]) -> dict[str, Any]:
    """A run's manifest when a server ran it: the server's software and devices (/system_stats), the version of each
    of our nodes as the server describes it, the seeds."""
    from . import run_manifest

    try:
        system = server.get_json("/system_stats")
    except ServerGone:
        system = {}
    versions = {}
    for kind in sorted({node["class_type"] for node in prompt.values()}):
        found = re.search(r"\[node v([\w.]+)\]", str(node_info.get(kind, {}).get("description", "")))
        if found:
            versions[kind] = found.group(1)
    return {"server": server.url, "system": system.get("system", {}), "devices": system.get("devices", []),
            "nodes": versions, "seeds": run_manifest.seeds(prompt)}


def run_on_servers(plan, runs: list[dict[str, Any]], servers: list[ComfyServer], node_info: dict[str, Any],
                   extra_for, input_folder: str) -> list[str]:
    """Run the plan's unfinished runs on the servers; returns every file of the batch. ``extra_for(prompt)``: the
    PNG info a run's Save Image gets (its workflow)."""
    done = plan.finished()
    pending: queue.Queue[int] = queue.Queue()
    for index in range(len(runs)):
        if index not in done:
            pending.put(index)
    lock = threading.Lock()
    state = {"in_flight": 0, "finished": len(done), "refused": None, "gone": []}

    def worker(server: ComfyServer) -> None:
        server.listen()
        try:
            work(server)
        finally:
            server.hang_up()

    def work(server: ComfyServer) -> None:
        while state["refused"] is None:
            try:
                index = pending.get(timeout=0.1)
            except queue.Empty:
                with lock:
                    if state["in_flight"] == 0 and pending.empty():
                        return
                continue
            with lock:
                state["in_flight"] += 1
            started = time.perf_counter()
            try:
                prompt = runs[index]
                for picture in input_pictures(prompt, input_folder):
                    server.upload(picture)
                def on_step(value, total, index=index):
                    if value and total and (value == total or value * 4 // total != (value - 1) * 4 // total):
                        log.info("run %d/%d on %s: step %d/%d", index + 1, len(runs), server, value, total)

                outputs = server.outputs(server.submit(prompt, extra_for(prompt)), on_step)
                manifest = server_manifest(server, node_info, prompt)
                with lock:
                    folder = plan.prepare(index)
                    files = write_pictures(server, outputs, folder, manifest)
                    plan.record(index, [os.path.relpath(f, folder) for f in files])
                    state["finished"] += 1
                    log.info("run %d/%d on %s: %.2f s, wrote %s — %d of %d finished", index + 1, len(runs), server,
                             time.perf_counter() - started, ", ".join(files) or "nothing", state["finished"],
                             len(runs))
            except ServerGone as error:
                pending.put(index)  # not recorded: another server runs it
                with lock:
                    state["gone"].append(str(error))
                log.warning("%s; run %d goes to another server", error, index + 1)
                return
            except PromptRefused as error:
                with lock:
                    state["refused"] = str(error)
                return
            finally:
                with lock:
                    state["in_flight"] -= 1

    threads = [threading.Thread(target=worker, args=(server,), daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    left = len(runs) - len(plan.finished())
    if state["refused"]:
        raise WorkflowError([f"{state['refused']}. The batch stopped with {left} of {len(runs)} runs left; fix the "
                             "cause and run the same command to resume"])
    if left:
        raise WorkflowError([f"every server stopped answering ({'; '.join(state['gone'])}); {left} of {len(runs)} "
                             "runs left. Start a server and run the same command to resume"])
    finished = plan.finished()
    return [os.path.join(plan.folder, entry["folder"], f) for entry in finished.values() for f in entry["files"]]
