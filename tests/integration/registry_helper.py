#!/usr/bin/env python3
"""Test helpers for the registry tests (loopback only).

  registry_helper.py token PORT KEY CERT SERVICE   a bearer token service: signs
      RS256 JWTs carrying the cert in x5c, as docker-registry's token auth
      expects (rootcertbundle = CERT); requires basic auth user:pass "tok:en".
  registry_helper.py flaky PORT UPSTREAM CUT [pass|drop]   an HTTP proxy to
      UPSTREAM that cuts the first response of each blob after CUT bytes;
      Range headers of the retries are passed through (206) or dropped (the
      upstream then answers 200 with the whole blob); each is logged to stderr.
  registry_helper.py retype PORT UPSTREAM TYPE     a proxy that answers every
      manifest with Content-Type TYPE.
  registry_helper.py keys DIR                      writes DIR/key.pem, DIR/cert.pem
  registry_helper.py redirect PORT SINKPORT UPSTREAM BLOBS LOG
      a front on 127.0.0.1:PORT passing requests (with Authorization) to
      UPSTREAM, except blob GETs, answered 307 to http://127.0.0.2:SINKPORT;
      the sink serves them from BLOBS (an anonymous registry) and appends the
      Authorization header it received (or "none") to LOG.
"""
import base64, http.server, json, socketserver, sys, time, urllib.request, uuid

def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def keys(d):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    import datetime
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloister-test-token")])
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(k, hashes.SHA256()))
    open(d + "/key.pem", "wb").write(k.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    open(d + "/cert.pem", "wb").write(cert.public_bytes(serialization.Encoding.PEM))

def token(port, keyfile, certfile, service):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    key = serialization.load_pem_private_key(open(keyfile, "rb").read(), None)
    cert = x509.load_pem_x509_certificate(open(certfile, "rb").read())
    der = cert.public_bytes(serialization.Encoding.DER)
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_GET(self):
            from urllib.parse import urlparse, parse_qs
            q = parse_qs(urlparse(self.path).query)
            auth = self.headers.get("Authorization", "")
            access = []
            if auth == "Basic " + base64.b64encode(b"tok:en").decode():
                for s in q.get("scope", []):
                    t, name, actions = s.split(":")
                    access.append({"type": t, "name": name, "actions": actions.split(",")})
            now = int(time.time())
            hdr = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
            claims = {"iss": "cloister-test", "sub": "tok", "aud": service, "exp": now + 300,
                      "nbf": now - 10, "iat": now, "jti": str(uuid.uuid4()), "access": access}
            signing = b64(json.dumps(hdr).encode()) + "." + b64(json.dumps(claims).encode())
            sig = key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
            body = json.dumps({"token": signing + "." + b64(sig)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    socketserver.TCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", int(port)), H) as s: s.serve_forever()

def flaky(port, upstream, cut, ranges="pass"):
    cut = int(cut)
    keep = ("authorization", "accept", "range") if ranges == "pass" else ("authorization", "accept")
    seen = set()
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_GET(self):
            hdrs = {k: v for k, v in self.headers.items() if k.lower() in keep}
            if self.headers.get("Range"):
                with open("/dev/stderr", "w") as f: f.write("range %s %s\n" % (ranges, self.headers["Range"]))
            req = urllib.request.Request(upstream + self.path, headers=hdrs)
            try:
                r = urllib.request.urlopen(req)
                status, body, rh = r.status, r.read(), r.headers
            except urllib.error.HTTPError as e:
                status, body, rh = e.code, e.read(), e.headers
            blob = "/blobs/sha256:" in self.path and status == 200
            self.send_response(status)
            for k in ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate", "Content-Range"):
                if rh.get(k): self.send_header(k, rh.get(k))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if blob and self.path not in seen and len(body) > cut:
                seen.add(self.path)
                self.wfile.write(body[:cut]); self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)
    socketserver.TCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", int(port)), H) as s: s.serve_forever()

def redirect(port, sinkport, upstream, blobs, log):
    import threading
    def passthrough(h, base, extra=None):
        hdrs = {k: v for k, v in h.headers.items() if k.lower() in ("authorization", "accept", "range")}
        try:
            r = urllib.request.urlopen(urllib.request.Request(base + h.path, headers=hdrs))
            status, body, rh = r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            status, body, rh = e.code, e.read(), e.headers
        h.send_response(status)
        for k in ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate", "Content-Range"):
            if rh.get(k): h.send_header(k, rh.get(k))
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    class Front(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_GET(self):
            if "/blobs/sha256:" in self.path and self.headers.get("Authorization"):
                self.send_response(307)
                self.send_header("Location", "http://127.0.0.2:%s%s" % (sinkport, self.path))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            passthrough(self, upstream)
    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_GET(self):
            with open(log, "a") as f: f.write((self.headers.get("Authorization") or "none") + "\n")
            passthrough(self, blobs)
    socketserver.TCPServer.allow_reuse_address = True
    sink = socketserver.ThreadingTCPServer(("127.0.0.2", int(sinkport)), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    with socketserver.ThreadingTCPServer(("127.0.0.1", int(port)), Front) as s: s.serve_forever()

def retype(port, upstream, ctype):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_GET(self):
            hdrs = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept", "range")}
            try:
                r = urllib.request.urlopen(urllib.request.Request(upstream + self.path, headers=hdrs))
                status, body, rh = r.status, r.read(), r.headers
            except urllib.error.HTTPError as e:
                status, body, rh = e.code, e.read(), e.headers
            self.send_response(status)
            ct = ctype if "/manifests/" in self.path else rh.get("Content-Type")
            if ct: self.send_header("Content-Type", ct)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    socketserver.TCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", int(port)), H) as s: s.serve_forever()

if __name__ == "__main__":
    {"token": token, "flaky": flaky, "keys": keys, "redirect": redirect,
     "retype": retype}[sys.argv[1]](*sys.argv[2:])
