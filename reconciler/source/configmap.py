"""The ConfigMap recipe for a tree of folders: ``python -m reconciler.source.configmap DIR``.

A ConfigMap key cannot hold ``/``; the key of ``team-a/jobs/reindex.yaml`` is
``team-a__jobs__reindex.yaml`` (:func:`reconciler.source.files.configmap_key`), and the
directory source maps it back when it reads the mount. This prints one
``--from-file=KEY=PATH`` per manifest file under each folder given::

    kubectl create configmap manifests --dry-run=client -o yaml \\
      $(python -m reconciler.source.configmap manifests/) | kubectl apply -f -

Exit 1 (and nothing printed for it) for a file whose path cannot be a key (a part holding
``__``, a character outside ``[-._a-zA-Z0-9]``, more than 253 characters). Paths with spaces
cannot pass through ``$(...)``; neither can they be keys. A ConfigMap holds at most 1 MiB in
all: a larger tree needs git (``--git-url``) or a git-sync sidecar.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from reconciler.source.files import configmap_key, list_files

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Print ``--from-file=KEY=PATH`` for every manifest file under each folder given,
    for ``kubectl create configmap NAME $(python -m reconciler.source.configmap DIR)``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m reconciler.source.configmap DIR...", file=sys.stderr)
        return 2
    status = 0
    for folder in args:
        listing = list_files(folder, path_keys=False)
        for problem in listing.problems:
            print(problem, file=sys.stderr)
            status = 1
        for entry in listing.entries:
            # the lister walks the resolved root (git-sync's /git/current is a symlink)
            rel = os.path.relpath(os.path.realpath(entry.path), os.path.realpath(folder))
            try:
                key = configmap_key(rel)
            except ValueError as exc:
                print(f"{entry.display}: {exc}", file=sys.stderr)
                status = 1
                continue
            print(f"--from-file={key}={entry.path}")
    return status


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
