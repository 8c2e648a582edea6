"""A throw-away certificate authority for HTTPS test servers (openssl CLI, stdlib only).

``make_ca(directory, names)`` writes ``ca.pem`` (the CA certificate a client trusts, as
AWS_CA_BUNDLE or ``-o ca_bundle=``), and ``server.pem`` / ``server.key`` (a certificate
for ``names``, DNS names or IP addresses, wildcards allowed, signed by that CA).
"""
from __future__ import annotations

import ipaddress
import os
import subprocess


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def make_ca(directory: str, names: list) -> dict:
    os.makedirs(directory, exist_ok=True)
    ca_key, ca_pem = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    key, csr, pem = (os.path.join(directory, n) for n in ("server.key", "server.csr", "server.pem"))
    ext = os.path.join(directory, "server.ext")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=s3fuse test CA",
        "-keyout", ca_key, "-out", ca_pem)
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={names[0]}", "-keyout", key, "-out", csr)
    alt = ",".join(("IP:" if _is_ip(n) else "DNS:") + n for n in names)
    with open(ext, "w") as f:
        f.write(f"subjectAltName={alt}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
        "-extfile", ext, "-out", pem)
    os.chmod(key, 0o644)       # radosgw reads it
    return {"ca": ca_pem, "cert": pem, "key": key}
