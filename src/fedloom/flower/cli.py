"""The ``fedloom server``, ``fedloom client`` and ``fedloom certs`` commands.

    fedloom server -c CONF --address HOST:PORT --out DIR (--insecure | --tls-dir DIR) [--resume]
    fedloom client -c CONF --server HOST:PORT --client-id I [--data FILE] (--insecure | --root-cert FILE --key FILE)
    fedloom certs DIR [--clients N] [--host NAME ...] [--days N]

``add_parsers`` registers them on ``fedloom``'s sub-parsers, each with ``handler`` set to its function.
Nothing here imports flwr until a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parsers", "cmd_server", "cmd_client", "cmd_certs"]


def _conf(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-c", "--config", required=True, help="the federation's config (the same file on every machine)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    srv = sub.add_parser("server", help="run a federation as a Flower server (SuperLink + ServerApp)")
    _conf(srv)
    srv.add_argument("--address", required=True, metavar="HOST:PORT", help="where clients connect, e.g. 0.0.0.0:9092")
    srv.add_argument("--out", help="output directory (default runs/<name>-<time>)")
    mode = srv.add_mutually_exclusive_group(required=True)
    mode.add_argument("--insecure", action="store_true", help="no TLS (trusted networks and tests only)")
    mode.add_argument(
        "--tls-dir", metavar="DIR", help="ca.pem, server.pem, server.key and clients.json (see `fedloom certs`)"
    )
    srv.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    srv.add_argument(
        "--wait",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long the first round waits for the whole cohort before going on with runtime.min_clients",
    )
    srv.set_defaults(handler=cmd_server)

    cli = sub.add_parser("client", help="join a federation as one client (Flower SuperNode + warm ClientApp)")
    _conf(cli)
    cli.add_argument("--server", required=True, metavar="HOST:PORT", help="the server's --address as reachable here")
    cli.add_argument("--client-id", required=True, type=int, metavar="I", help="which client this is, 0..no_models-1")
    cli.add_argument("--data", metavar="FILE", help="this client's own CSV (header row, label column data.label)")
    mode = cli.add_mutually_exclusive_group(required=True)
    mode.add_argument("--insecure", action="store_true", help="no TLS (the server must run --insecure too)")
    mode.add_argument("--root-cert", metavar="FILE", help="the CA certificate that signed the server's (ca.pem)")
    cli.add_argument("--key", metavar="FILE", help="this client's private key (clients/<id>.key of `fedloom certs`)")
    cli.set_defaults(handler=cmd_client)

    crt = sub.add_parser("certs", help="make a test CA, a server certificate for TLS and client keys")
    crt.add_argument("dir", help="directory to write ca.pem, server.pem, server.key, ca/ca.key (and client keys) into")
    crt.add_argument("--clients", type=int, default=0, metavar="N", help="also write keys for clients 0..N-1")
    crt.add_argument("--host", action="append", default=[], help="a name or IP clients use to reach the server")
    crt.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    crt.set_defaults(handler=cmd_certs)


def cmd_server(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..runs import default_out_dir
    from .launch import TlsFiles
    from .server_main import serve

    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else default_out_dir(cfg.name)
    tls = None if args.insecure else TlsFiles.from_dir(args.tls_dir)
    return serve(cfg, args.address, out, tls, args.resume, args.quiet, args.wait)


def cmd_client(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..errors import FedloomError
    from .client_main import join

    cfg = load_config(args.config, args.set)
    root = None if args.insecure else Path(args.root_cert)
    if root is not None and args.key is None:
        raise FedloomError("--root-cert needs --key FILE: this client's key (clients/<id>.key of `fedloom certs`)")
    if root is None and args.key is not None:
        raise FedloomError("--key needs --root-cert: an --insecure server authenticates no client")
    key = Path(args.key) if args.key else None
    return join(cfg, args.server, args.client_id, args.data, root, args.quiet, key)


def cmd_certs(args: argparse.Namespace) -> int:
    from .certs import make_certs

    paths = make_certs(args.dir, args.host, args.days, args.clients)
    for role, p in paths.items():
        print(f"{role:>11}: {p}")
    registry = ", clients.json" if args.clients else ""
    print(f"server machine: {paths['ca']}, {paths['cert']}, {paths['key']}{registry}")
    print(f"  fedloom server ... --tls-dir DIR    (never copy {paths['ca_key']} there: keep it offline)")
    print(f"client i: {paths['ca']} and clients/<i>.key")
    print("  fedloom client ... --client-id i --root-cert ca.pem --key <i>.key")
    if not args.clients:
        print("note: no client keys (--clients N): `fedloom server --tls-dir` needs them")
    return 0
