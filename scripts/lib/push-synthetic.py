#!/usr/bin/env python3
"""Push N distinct synthetic images to a plain-http registry (for the memory benchmark).

    push-synthetic.py HOST N [--files 4000] [--prefix bench/mem]

Image i: one gzip layer of FILES files in 40 directories (hex text, about 2:1 compressible,
unique per image and file, 1-24 KiB each), its config and an OCI manifest, tagged PREFIX-i:latest. Standard
library only; blobs uploaded monolithically (POST then PUT ?digest=).
"""
import gzip, hashlib, io, json, random, sys, tarfile, time, urllib.request

def put_blob(host, repo, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    req = urllib.request.Request(f"http://{host}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(req) as r:
        loc = r.headers["Location"]
    if loc.startswith("/"):
        loc = f"http://{host}{loc}"
    sep = "&" if "?" in loc else "?"
    req = urllib.request.Request(f"{loc}{sep}digest={d}", method="PUT", data=data,
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req).close()
    return d

def layer(i, files):
    rnd = random.Random(i)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = [f"opt/img{i}/d{k:02d}" for k in range(40)]
        for dname in ["opt", f"opt/img{i}"] + dirs:
            ti = tarfile.TarInfo(dname); ti.type = tarfile.DIRTYPE; ti.mode = 0o755; ti.mtime = 1
            t.addfile(ti)
        for f in range(files):
            n = rnd.randint(1 << 10, 24 << 10)
            body = rnd.randbytes(n // 2 + 1).hex().encode()[:n]
            ti = tarfile.TarInfo(f"{dirs[f % 40]}/f{f:05d}.txt"); ti.size = len(body); ti.mtime = 1
            t.addfile(ti, io.BytesIO(body))
    diff = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0), diff

def main():
    host, n = sys.argv[1], int(sys.argv[2])
    files, prefix = 4000, "bench/mem"
    args = sys.argv[3:]
    while args:
        a = args.pop(0)
        if a == "--files": files = int(args.pop(0))
        elif a == "--prefix": prefix = args.pop(0)
        else: sys.exit(f"unknown argument {a}")
    for i in range(n):
        repo = f"{prefix}-{i}"
        gz, diff = layer(i, files)
        ld = put_blob(host, repo, gz)
        cfg = json.dumps({"architecture": "amd64", "os": "linux",
                          "config": {"Env": ["PATH=/bin"]},
                          "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
        cd = put_blob(host, repo, cfg)
        man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
                          "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": len(gz)}]}).encode()
        req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/latest", method="PUT", data=man,
                                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        urllib.request.urlopen(req).close()
        print(f"{host}/{repo}:latest {len(gz)}", flush=True)

main()
