"""``reface-assets``: list, locate, fetch and verify pretrained assets."""

from __future__ import annotations

import argparse
import sys

from . import assets as A


def _status_rows(names: list[str] | None = None, package: str | None = None, check: bool = True):
    """(asset, path or None, problem or None) per asset: ``problem`` is the one-line reason
    an asset that is there is refused (checksum, a bad ``$REFACE_ASSET_*``)."""
    rows = []
    for asset in A.list_assets():
        if names and asset.name not in names:
            continue
        if package and package not in asset.used_by:
            continue
        problem = None
        try:
            found = A.find(asset, check=check)
        except A.AssetIntegrityError as e:
            found, problem = None, str(e)
        except A.AssetNotFoundError:
            found = None
        rows.append((asset, found, problem))
    return rows


def cmd_list(args) -> int:
    rows = _status_rows(package=args.package)
    print(f"cache root ($REFACE_HOME): {A.reface_home()}")
    w = max(len(a.name) for a, _, _ in rows) if rows else 10
    for asset, found, problem in rows:
        state = "present" if found else ("REFUSED" if problem else "missing")
        print(f"{asset.name:<{w}}  {state:<7}  {', '.join(asset.used_by):<28}  "
              f"{found if found else (problem or asset.how_to_get().split(';')[0])}")
        if args.verbose:
            for how, p in A.candidate_paths(asset):
                print(f"{'':<{w}}    searched {how}: {p if p is not None else '(not set)'}")
    n_present = sum(1 for _, f, _ in rows if f)
    print(f"{n_present}/{len(rows)} assets present")
    return 0


def cmd_where(args) -> int:
    for name in args.names:
        asset = A.get_asset(name)
        print(f"{asset.name}: {asset.description} [{asset.license}]")
        for how, p in A.candidate_paths(asset):
            mark = "FOUND  " if p is not None and A._is_present(asset, p) else "absent "
            print(f"  {mark}{how}: {p if p is not None else '(not set)'}")
        if asset.url:
            print(f"  download: {asset.url}" + (f" (sha256 {asset.sha256})" if asset.sha256 else ""))
        print(f"  to get it: {asset.how_to_get()}")
    return 0


def _fetch_failure(name: str, error: BaseException) -> str:
    """One line naming the asset, the URL it came from and the cause."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, A.AssetNotFoundError) or text.startswith(name):
        return text  # names the asset and where to get it already
    try:
        url = A.get_asset(name).url
    except (KeyError, ValueError):
        url = None
    return f"{name}: download " + (f"from {url} " if url else "") + f"failed: {text}"


def cmd_fetch(args) -> int:
    """Exit 0: all fetched; 1: some failed (each named); 2: none could be fetched."""
    failed = 0
    for name in args.names:
        try:
            path = A.fetch(name, progress=not args.quiet)
            print(f"{name}: {path}")
        except (A.AssetNotFoundError, A.AssetChecksumError, OSError, ValueError) as e:
            print(f"error: {_fetch_failure(name, e)}", file=sys.stderr)
            failed += 1
    return 0 if not failed else 2 if failed == len(args.names) else 1


def cmd_verify(args) -> int:
    status = 0
    for asset, found, problem in _status_rows(names=args.names or None, check=False):
        if problem:
            print(f"{asset.name}: REFUSED  {problem}", file=sys.stderr)
            status = 1
            continue
        if not found:
            if args.names:
                print(f"{asset.name}: MISSING", file=sys.stderr)
                status = 1
            continue
        path, digest, ok = A.verify(asset.name)
        label = {True: "OK", False: "CHECKSUM MISMATCH", None: "present (no pinned checksum"
                 + (f": {asset.unpinned}" if asset.unpinned else "") + ")"}[ok]
        print(f"{asset.name}: {label}  {path}" + (f"  sha256={digest}" if digest else ""))
        if ok is False:
            status = 1
    return status


def add_subcommands(sub: argparse._SubParsersAction, package: str | None = None) -> None:
    """Add ``assets`` to a package CLI (lists the assets that package uses)."""
    p = sub.add_parser("assets", help="list the pretrained assets this package uses and where they are")
    p.add_argument("-v", "--verbose", action="store_true", help="show every path searched")
    p.set_defaults(func=cmd_list, package=package)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reface-assets",
        description="Pretrained assets of the toolkit: which are present, where each is looked "
                    "for, and how to get the missing ones. Search order: explicit path, "
                    "$REFACE_ASSET_<NAME>, $REFACE_HOME (default ~/.cache/reface), files shipped "
                    "in PyPI packages, other tools' caches; downloads only on `fetch` or with "
                    "REFACE_ALLOW_DOWNLOAD=1.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every registered asset, present or missing")
    p.add_argument("--package", help="only assets used by this package (faces, mgfr, ...)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every path searched")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("where", help="every place an asset is looked for")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_where)
    p = sub.add_parser("fetch", help="download assets into $REFACE_HOME (checksum verified)")
    p.add_argument("names", nargs="+")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fetch)
    p = sub.add_parser("verify", help="check present assets against their pinned checksums")
    p.add_argument("names", nargs="*")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .cli import run_main
    # An unknown asset name (UnknownAssetError), a bad path or Ctrl-C: one line, shared codes.
    return run_main(build_parser, argv)


if __name__ == "__main__":
    from .cli import exit_with
    exit_with(main)
