"""``s3fuse uploads BUCKET[:/PREFIX] -o ... [--abort] [--older-than=S] [--force]``: list
(and abort) the multipart uploads in progress under the prefix; those this cache_dir's
journal can still resume are kept unless --force."""
from __future__ import annotations

import os
import time

from ...fs.cachedir import CacheDir
from ...write.journal import Journal
from ..commandline import Parsed
from ..connect import CommandFailed, offline_client
from ..progress import ProgressBar


def run(parsed: Parsed) -> int:
    try:
        cfg, client = offline_client(parsed)
    except CommandFailed as exc:
        return exc.code
    older = parsed.get("older_than", 0.0)
    prefix = (cfg.prefix + "/") if cfg.prefix else ""
    ours = set()
    journal_dir = CacheDir(cfg.cache_dir).journal
    if os.path.isdir(journal_dir):
        ours = {e.upload_id for e in Journal(journal_dir).entries() if e.upload_id}
    now = time.time()
    uploads = [u for u in client.list_uploads(prefix) if now - u[2] >= older]
    for key, upload_id, started in uploads:
        mark = " (in this cache_dir's journal: resumable)" if upload_id in ours else ""
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(started))}  {key}  {upload_id}{mark}")
    if not parsed.get("abort"):
        print(f"{len(uploads)} upload(s) in progress" + ("; --abort to abort them" if uploads else ""))
        return 0
    victims = [u for u in uploads if u[1] not in ours or parsed.get("force")]
    bar = ProgressBar("aborting", len(victims))
    for key, upload_id, _ in victims:
        client.abort_multipart(key, upload_id)
        bar.update(1)
    bar.close()
    print(f"aborted {len(victims)} upload(s)" + (f", kept {len(uploads) - len(victims)} resumable (--force aborts them)"
                                                 if len(victims) < len(uploads) else ""))
    return 0
