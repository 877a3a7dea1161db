"""The one kubelet endpoint the agent serves: ``/containerLogs/<ns>/<pod>/<container>``, so
``kubectl logs [-f] [--tail N]`` works (the API server proxies it to the node's
``daemonEndpoints.kubeletEndpoint.Port``). HTTPS with a certificate from the cluster's
CA; the API server is started without a kubelet CA, so it does not verify it, and
without a kubelet client certificate, so nothing here checks the caller: loopback only."""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from datastore.kube.pki import Pki
from datastore.server.tlsutil import build_cert, new_key, write_pem


class LogServer:
    def __init__(self, pods_dir: Path, pki: Pki) -> None:
        self.pods_dir = pods_dir
        cert, key = pods_dir.parent / "kubelet.pem", pods_dir.parent / "kubelet-key.pem"
        if not cert.exists():
            ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
            ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
            k = new_key()
            write_pem(build_cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent-kubelet")]), k,
                                 issuer=ca.subject, issuer_key=ca_key,  # type: ignore[arg-type]
                                 hosts=("127.0.0.1", "localhost"), client=False, days=3650),
                      k, cert, key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.serve_logs(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, name="logs", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()

    def _file(self, ns: str, pod: str, container: str) -> Path | None:
        found = sorted(self.pods_dir.glob(f"{ns}_{pod}_*/logs/{container}.log"),
                       key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    def serve_logs(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        parts = url.path.strip("/").split("/")
        q = parse_qs(url.query)
        path = self._file(*parts[1:4]) if len(parts) == 4 and parts[0] == "containerLogs" else None
        if path is None:
            h.send_error(404, "no such container log")
            return
        data = path.read_bytes()
        if "tailLines" in q:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(q["tailLines"][0]):]) if int(q["tailLines"][0]) else b""
        follow = q.get("follow", ["false"])[0] == "true"
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        if not follow:
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        h.end_headers()
        try:
            h.wfile.write(data)
            h.wfile.flush()
            with open(path, "rb") as f:
                f.seek(0, 2)
                while not self._stop.is_set():
                    chunk = f.read()
                    if chunk:
                        h.wfile.write(chunk)
                        h.wfile.flush()
                    else:
                        time.sleep(0.5)  # poll interval of the followed file
        except OSError:
            return  # the client went away
