"""A stand-in ComfyUI server for the fan-out tests without ComfyUI: the API routes the runner uses (/object_info,
/prompt, /history/<id>, /view, /upload/image, /system_stats, /prompt queue info), executing prompts with this pack's
headless executor one at a time, as a server does. Run as a process:

    python tests/fake_comfy.py PORT MODELS INPUT OUTPUT [--refuse] [--without-pack] [--die-after N] [--slow S]

--refuse: every prompt is refused as ComfyUI refuses an invalid one (HTTP 400 with node errors); --without-pack:
/object_info lacks this pack's nodes; --die-after N: the process exits when it receives prompt N+1 (a server
killed mid-batch); --slow S: S seconds more per run.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "custom_nodes"))


def main(argv: list[str]) -> None:
    port, models, inputs, outputs = int(argv[0]), argv[1], argv[2], argv[3]
    refuse, without_pack = "--refuse" in argv, "--without-pack" in argv
    die_after = int(argv[argv.index("--die-after") + 1]) if "--die-after" in argv else None
    slow = float(argv[argv.index("--slow") + 1]) if "--slow" in argv else 0.0

    from diffusers_stages.runner.api import Runner
    from diffusers_stages.runner.core_nodes import Folders

    runner = Runner(models, inputs, outputs)
    definitions = {kind: d for kind, d in runner.definitions.items()
                   if not (without_pack and kind.startswith("DS_"))}
    for kind, cls in runner.classes.items():  # the description ComfyUI publishes (ours carries the node version)
        if kind in definitions:
            definitions[kind] = {**definitions[kind], "description": getattr(cls, "DESCRIPTION", "")}
    history: dict[str, dict] = {}
    jobs: queue.Queue = queue.Queue()
    received = [0]

    def execute() -> None:
        while True:
            prompt_id, prompt, extra = jobs.get()
            try:
                result = runner.executor.run(prompt, extra)
                time.sleep(slow)
                history[prompt_id] = {"status": {"status_str": "success", "completed": True, "messages": []},
                                      "outputs": result.ui}
            except Exception as error:  # noqa: BLE001 - reported as ComfyUI reports a failed run
                history[prompt_id] = {"status": {"status_str": "error", "completed": False, "messages": [
                    ["execution_error", {"node_id": "?", "node_type": "?", "exception_message": str(error)}]]},
                    "outputs": {}}

    threading.Thread(target=execute, daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, code: int, body, content_type="application/json"):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            if url.path == "/object_info":
                return self.answer(200, definitions)
            if url.path == "/system_stats":
                return self.answer(200, {"system": {"comfyui_version": "fake", "python_version": sys.version},
                                         "devices": [{"name": "cpu", "type": "cpu"}]})
            if url.path.startswith("/history/"):
                prompt_id = url.path.rsplit("/", 1)[1]
                return self.answer(200, {prompt_id: history[prompt_id]} if prompt_id in history else {})
            if url.path == "/view":
                query = urllib.parse.parse_qs(url.query)
                path = os.path.join(Folders.output, query.get("subfolder", [""])[0], query["filename"][0])
                with open(path, "rb") as f:
                    return self.answer(200, f.read(), "image/png")
            return self.answer(404, {})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/upload/image":
                boundary = self.headers["Content-Type"].split("boundary=")[1].encode()
                for part in body.split(b"--" + boundary):
                    head, _, content = part.partition(b"\r\n\r\n")
                    if b'name="image"' in head:
                        name = head.split(b'filename="')[1].split(b'"')[0].decode()
                        with open(os.path.join(Folders.input, name), "wb") as f:
                            f.write(content[:-2])
                return self.answer(200, {"name": "uploaded"})
            if self.path == "/prompt":
                received[0] += 1
                if die_after is not None and received[0] > die_after:
                    os._exit(1)  # killed mid-batch: no answer
                if refuse:
                    return self.answer(400, {"error": {"message": "Prompt outputs failed validation"},
                                             "node_errors": {"7": {"class_type": "DS_Denoise", "errors": [
                                                 {"message": "Value not in list", "details": "steps: 0"}]}}})
                request = json.loads(body)
                prompt_id = uuid.uuid4().hex
                jobs.put((prompt_id, request["prompt"], request.get("extra_data", {}).get("extra_pnginfo", {})))
                return self.answer(200, {"prompt_id": prompt_id, "number": received[0]})
            return self.answer(404, {})

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
