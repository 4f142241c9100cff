#!/usr/bin/env python3
"""Builds an OCI image layout (or OCI archive) from local directories, offline.

Each --layer DIR[:gzip|zstd|none] becomes one layer (files owned by 0:0,
mtime 0, sorted, so builds are reproducible); a file named .wh.NAME in DIR is
a whiteout, .wh..wh..opq makes its directory opaque. With --platforms the
image is wrapped in an image index with one manifest per platform (sharing
the layers), plus --attestation adds an attestation manifest entry as
BuildKit writes them.

  tools/oci-build.py OUT --ref 127.0.0.1:5000/busybox:latest \\
      --layer rootfs:gzip --cmd '["sh"]' [--archive OUT.tar]
"""
import argparse, gzip, hashlib, io, json, os, subprocess, sys, tarfile

def sha(b): return "sha256:" + hashlib.sha256(b).hexdigest()

KEEP_OWNERS = False
EXCLUDE = set()

def layer_tar(d):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(path, arc):
            if arc in EXCLUDE: return
            ti = t.gettarinfo(path, arc)
            if not KEEP_OWNERS: ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""; ti.mtime = 0
            if ti.isreg():
                with open(path, "rb") as f: t.addfile(ti, f)
            else:
                t.addfile(ti)
            if os.path.isdir(path) and not os.path.islink(path):
                for n in sorted(os.listdir(path)):
                    add(os.path.join(path, n), arc + "/" + n if arc != "." else n)
        for n in sorted(os.listdir(d)):
            add(os.path.join(d, n), n)
    return buf.getvalue()

def compress(data, how):
    if how == "gzip": return gzip.compress(data, 6, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, stdout=subprocess.PIPE, check=True).stdout, \
            "application/vnd.oci.image.layer.v1.tar+zstd"
    return data, "application/vnd.oci.image.layer.v1.tar"

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out"); ap.add_argument("--ref", required=True)
    ap.add_argument("--layer", action="append", default=[])
    ap.add_argument("--cmd"); ap.add_argument("--entrypoint")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--workdir", default=""); ap.add_argument("--user", default="")
    ap.add_argument("--platforms", default="")
    ap.add_argument("--attestation", action="store_true")
    ap.add_argument("--archive")
    ap.add_argument("--docker-archive", help="also write OUT.tar as `docker save` does "
                    "(manifest.json, a config, DIR/layer.tar; a repeated layer as a symlink)")
    ap.add_argument("--push", help="http://HOST:PORT/REPO:TAG (the OCI distribution push API)")
    ap.add_argument("--user-pass", help="USER:PASS for basic auth when pushing")
    ap.add_argument("--keep-owners", action="store_true", help="keep uid/gid (default 0:0)")
    ap.add_argument("--exclude", action="append", default=[], help="skip this path (relative)")
    a = ap.parse_args()
    global KEEP_OWNERS
    KEEP_OWNERS = a.keep_owners
    EXCLUDE.update(a.exclude)
    os.makedirs(os.path.join(a.out, "blobs", "sha256"), exist_ok=True)
    def put(b):
        d = sha(b)
        with open(os.path.join(a.out, "blobs", "sha256", d[7:]), "wb") as f: f.write(b)
        return d
    layers, diff_ids, raws = [], [], []
    for spec in a.layer:
        d, _, how = spec.partition(":")
        raw = layer_tar(d)
        raws.append(raw)
        blob, mt = compress(raw, how or "gzip")
        layers.append({"mediaType": mt, "digest": put(blob), "size": len(blob)})
        diff_ids.append(sha(raw))
    configs = []
    def manifest(os_, arch):
        cfg = {"architecture": arch, "os": os_, "rootfs": {"type": "layers", "diff_ids": diff_ids},
               "config": {"Env": a.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}}
        if a.cmd: cfg["config"]["Cmd"] = json.loads(a.cmd)
        if a.entrypoint: cfg["config"]["Entrypoint"] = json.loads(a.entrypoint)
        if a.workdir: cfg["config"]["WorkingDir"] = a.workdir
        if a.user: cfg["config"]["User"] = a.user
        cb = json.dumps(cfg).encode()
        configs.append(cb)
        m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
             "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(cb), "size": len(cb)},
             "layers": layers}
        mb = json.dumps(m).encode()
        return {"mediaType": m["mediaType"], "digest": put(mb), "size": len(mb)}
    if a.platforms:
        entries = []
        for p in a.platforms.split(","):
            os_, arch = p.split("/")[:2]
            e = manifest(os_, arch); e["platform"] = {"os": os_, "architecture": arch}
            entries.append(e)
        if a.attestation:
            st = b'{"_type":"https://in-toto.io/Statement/v0.1"}'
            am = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(b"{}"), "size": 2},
                  "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": put(st), "size": len(st)}]}
            ab = json.dumps(am).encode()
            entries.append({"mediaType": am["mediaType"], "digest": put(ab), "size": len(ab),
                            "platform": {"os": "unknown", "architecture": "unknown"},
                            "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                            "vnd.docker.reference.digest": entries[0]["digest"]}})
        ib = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                         "manifests": entries}).encode()
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": put(ib), "size": len(ib)}
    else:
        top = manifest("linux", "amd64")
    top["annotations"] = {"org.opencontainers.image.ref.name": a.ref}
    with open(os.path.join(a.out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [top]}, f)
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    if a.archive:
        with tarfile.open(a.archive, "w") as t:
            for n in ["oci-layout", "index.json", "blobs"]:
                t.add(os.path.join(a.out, n), n)
    if a.docker_archive:
        with tarfile.open(a.docker_archive, "w") as t:
            def member(name, data=None, link=None):
                ti = tarfile.TarInfo(name)
                if link is not None:
                    ti.type, ti.linkname = tarfile.SYMTYPE, link
                    t.addfile(ti)
                else:
                    ti.size = len(data)
                    t.addfile(ti, io.BytesIO(data))
            cfg_name = sha(configs[0])[7:] + ".json"
            member(cfg_name, configs[0])
            names, first = [], {}
            for i, raw in enumerate(raws):
                h = hashlib.sha256(raw + bytes([i])).hexdigest()
                name = h + "/layer.tar"
                if raw in first:
                    member(name, link="../" + first[raw])
                else:
                    first[raw] = name
                    member(name, raw)
                names.append(name)
            member("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": [a.ref],
                                                 "Layers": names}]).encode())
    if a.push:
        push(a.out, top, a.push, a.user_pass)
    print(top["digest"])

def push(layout, top, target, user_pass):
    import base64, urllib.request
    base, _, rest = target.rpartition("//")[2].partition("/")
    repo, _, tag = rest.rpartition(":")
    url = "http://" + base
    hdr = {}
    if user_pass:
        hdr["Authorization"] = "Basic " + base64.b64encode(user_pass.encode()).decode()
    def req(method, u, data=None, headers=None):
        r = urllib.request.Request(u, data=data, method=method, headers={**hdr, **(headers or {})})
        return urllib.request.urlopen(r)
    blobdir = os.path.join(layout, "blobs", "sha256")
    def blob(d):
        with open(os.path.join(blobdir, d[7:]), "rb") as f: return f.read()
    def put_blob(d):
        loc = req("POST", url + "/v2/%s/blobs/uploads/" % repo).headers["Location"]
        if loc.startswith("/"): loc = url + loc
        req("PUT", loc + ("&" if "?" in loc else "?") + "digest=" + d, blob(d),
            {"Content-Type": "application/octet-stream"})
    def put_manifest(desc, ref):
        body = blob(desc["digest"])
        doc = json.loads(body)
        if "manifests" in doc:
            for m in doc["manifests"]: put_manifest(m, m["digest"])
        else:
            put_blob(doc["config"]["digest"])
            for l in doc["layers"]: put_blob(l["digest"])
        req("PUT", url + "/v2/%s/manifests/%s" % (repo, ref), body, {"Content-Type": desc["mediaType"]})
    put_manifest(top, tag)

if __name__ == "__main__":
    main()
