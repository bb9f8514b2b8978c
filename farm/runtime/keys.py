"""CURVE keys for remote nodes ("Ironhouse": both sides authenticate).

A key directory holds, for the router (the machine running ``Farm(listen=...)``)::

    keys/server.key            public key, copied to every node
    keys/server.key_secret     secret key, stays on the router
    keys/authorized/*.key      public keys of the nodes allowed to join

and, on each node::

    keys/server.key            the router's public key
    keys/<name>.key_secret     the node's own key pair (its .key goes to the router)

``rknn-farm keygen DIR --name NAME`` writes a key pair; see docs/multi-board.md.
"""

from __future__ import annotations

import os
from typing import Optional

import zmq
import zmq.auth

__all__ = ["client_keys", "generate_keys", "server_keys"]


def generate_keys(directory: str, name: str) -> tuple[str, str]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return public, secret


def _load(path: str, what: str, remedy: str = "") -> tuple[bytes, Optional[bytes]]:
    if not os.path.isfile(path):
        remedy = remedy or "create one with: rknn-farm keygen DIR --name NAME"
        raise FileNotFoundError(f"{what} not found: {path} ({remedy})")
    return zmq.auth.load_certificate(path)


def server_keys(directory: str) -> tuple[bytes, bytes, str]:
    """(public, secret, authorized-clients directory) of a router's key directory."""
    public, secret = _load(os.path.join(directory, "server.key_secret"), "the router's secret key")
    authorized = os.path.join(directory, "authorized")
    if not os.path.isdir(authorized):
        raise FileNotFoundError(
            f"no directory of authorised node keys: {authorized} (copy each node's NAME.key there)"
        )
    assert secret is not None
    return public, secret, authorized


def client_keys(directory: str, name: str) -> tuple[bytes, bytes, bytes]:
    """(own public, own secret, server public) of a node's key directory."""
    public, secret = _load(
        os.path.join(directory, f"{name}.key_secret"),
        f"node key pair {name!r}",
        f"create it with: rknn-farm keygen {directory} --name {name}, then copy {name}.key into the "
        "router's keys/authorized/",
    )
    server_public, _ = _load(
        os.path.join(directory, "server.key"),
        "the router's public key",
        "copy server.key from the router's key directory here",
    )
    assert secret is not None
    return public, secret, server_public
