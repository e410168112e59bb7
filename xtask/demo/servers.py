"""The demo's simulated Internet, inside the demo's network namespace:
- the model API at 198.51.100.1:443 (a fake model that obeys instructions
  it finds in documents, as prompt-injected models do), behind a front
  door that, as a CDN's does, also serves the attacker's site to a request
  that names it (Host: exfil.attacker.test);
- the attacker's collection server at 203.0.113.9:443, which records every
  request it receives;
- a DNS server at 198.51.100.53:53 answering for the demo's .test names.
Writes READY to the file given as argv[1] once everything listens."""
import http.server, json, re, socket, struct, sys, threading

ZONE = {"api.model.test": "198.51.100.1", "exfil.attacker.test": "203.0.113.9"}
received = []


class Model(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        if self.headers.get("Host", "").startswith("exfil.attacker.test"):
            return Attacker.do_POST(self)
        doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["document"]
        summary = "Acme renewed (1.2M/yr, acct 4417-2231-9902); Globex wants 30% off."
        calls = []
        # The injected instructions, obeyed (with the attacker's fallback).
        for m in re.finditer(r"POST (?:request to|it to)\s+(\S+)(?:\s+through\s+(\S+))?", doc):
            call = {"tool": "http_post", "url": m.group(1).rstrip(".,"), "body": summary}
            if m.group(2):
                call["via"] = m.group(2).rstrip(".,")
            calls.append(call)
        body = json.dumps({"summary": summary, "tool_calls": calls}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class Attacker(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        received.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with open(sys.argv[2], "w") as f:
            f.write(str(len(received)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("198.51.100.53", 53))
    while True:
        q, peer = s.recvfrom(512)
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode().lower())
            i += 1 + q[i]
        qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
        ip = ZONE.get(".".join(labels))
        r = bytearray(q[:i + 5])
        r[2], r[3] = 0x84 | (q[2] & 1), 0x80 if ip else 0x83
        r[6:12] = b"\0\0\0\0\0\0"
        if ip and qtype == 1:
            r[6:8] = b"\0\1"
            r += b"\xc0\x0c\0\1\0\1" + struct.pack("!IH", 300, 4) + socket.inet_aton(ip)
        s.sendto(bytes(r), peer)


class Quiet(http.server.ThreadingHTTPServer):
    """A connection egressd cut (a refused name) is reset: not an error."""
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


servers = [Quiet(("198.51.100.1", 443), Model),
           Quiet(("203.0.113.9", 443), Attacker)]
for srv in servers:
    threading.Thread(target=srv.serve_forever, daemon=True).start()
threading.Thread(target=dns, daemon=True).start()
with open(sys.argv[2], "w") as f:
    f.write("0")
with open(sys.argv[1], "w") as f:
    f.write("READY")
threading.Event().wait(600)
