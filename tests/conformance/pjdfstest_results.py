"""pjdfstest results: prove's verbose output parsed into per-group counts and failed
subtests, failures attributed to the earlier failure they follow from, and the reports
(tables, kinds of failures, JSON)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional

@dataclasses.dataclass
class Failure:
    file: str            # "chmod/00.t"
    subtest: int
    line: Optional[int]  # line of the .t file (bash only)
    message: str         # "tried 'chmod ...', expected 0, got EPERM"
    cause: Optional[str] = None   # signature of the earlier failure this one follows from

    def text(self) -> str:
        where = f":{self.line}" if self.line else ""
        return f"{self.file}{where} #{self.subtest}: {self.message}"


@dataclasses.dataclass
class FileResult:
    file: str
    planned: Optional[int] = None
    ran: int = 0
    not_ok: int = 0
    todo: int = 0            # "not ok ... # TODO": expected failures, not counted as failed
    failures: list = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return self.planned if self.planned is not None else self.ran

    @property
    def failed(self) -> int:
        """Failed subtests plus planned ones that never ran (crash, timeout), as prove."""
        missing = max(0, self.planned - self.ran) if self.planned is not None else 0
        return self.not_ok + missing


@dataclasses.dataclass
class GroupResult:
    group: str
    failed: int = 0
    total: int = 0
    files: int = 0
    seconds: float = 0.0
    status: str = "ok"                  # ok | fail | timeout | error
    timed_out_in: Optional[str] = None  # the .t file running when the timeout expired
    prove_tests: Optional[int] = None   # prove's own "Tests=" (subtests run)
    prove_result: Optional[str] = None  # PASS / FAIL
    error: Optional[str] = None
    workdir: Optional[str] = None
    failures: list = dataclasses.field(default_factory=list)
    file_results: list = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["failures"] = [dataclasses.asdict(f) for f in self.failures]
        d["file_results"] = [{"file": f.file, "planned": f.planned, "ran": f.ran, "failed": f.failed,
                              "todo": f.todo} for f in self.file_results]
        return d


# calls that create a name (index of the name among the arguments)
CREATORS = {"create": 0, "open": 0, "mkdir": 0, "mkfifo": 0, "mknod": 0, "bind": 0, "symlink": 1,
            "link": 1, "rename": 1}
REMOVERS = {"unlink": 0, "rmdir": 0, "rename": 0}
NAME_RE = re.compile(r"^(?:[^/\s]*/)*(?:pjdfstest_[0-9a-f]{32}|[0-9a-f]{20,})")
ERRNO_RE = re.compile(r"\bE[A-Z0-9]{2,}\b")


class CauseTracker:
    """Follows the names of one .t file through its subtests to tell root failures from
    the ones that only follow from them. A name is *tainted* by a failure when a call
    that should have created or removed it failed (it is missing, or still there), or when
    a consequential failure changed it (a rename that should have failed moved it). Any
    later failure that names a tainted name (or a path below one; for rmdir and rename also
    a directory above one: its emptiness is off), or a test_check that
    compared an errno instead of a timestamp, or an expect whose expectation is a variable
    holding an errno (``inode=`lstat ...``` failed), follows from that failure. A subtest
    that passes with 0, a value or ENOENT clears the taint of the names it uses (except a
    symlink to a tainted name: it dangles)."""

    def __init__(self, source: Optional[list] = None):
        self.tainted: dict = {}      # name -> signature of the root failure
        self.last_cause: Optional[str] = None
        self.source = source or []   # lines of the .t file
        self.dangling: set = set()   # tainted names that are symlinks to a tainted name

    def _expects_variable(self, line: Optional[int]) -> bool:
        """Whether the expect at this line of the .t file takes its expectation from a
        variable (``expect ${inode} lstat ...``): an errno there is the failure of an
        earlier call that captured it, not what the test wants."""
        if not line or line > len(self.source):
            return False
        m = re.match(r"\s*[jt]?expect\s+(\S+)", self.source[line - 1])
        return bool(m) and m.group(1).lstrip('"').startswith("$")

    def _hit(self, names, emptiness: bool = False):
        """The cause tainting one of names or a directory above one; with emptiness (rmdir,
        rename: the result depends on whether a directory is empty) also below one."""
        for name in names:
            parts = name.split("/")
            for k in range(len(parts), 0, -1):
                cause = self.tainted.get("/".join(parts[:k]))
                if cause:
                    return cause
            if emptiness:
                for tainted, cause in self.tainted.items():
                    if tainted.startswith(name + "/"):
                        return cause
        return None

    def subtest(self, ok: bool, msg: str, failure: Optional[Failure] = None):
        lm = LINE_RE.search(msg)
        line = int(lm.group(1)) if lm else (failure.line if failure is not None else None)
        msg = LINE_RE.sub("", msg)
        if msg.startswith("test_check "):
            if not ok and failure is not None and ERRNO_RE.search(msg) and self.last_cause:
                failure.cause = self.last_cause
            return
        m = TRIED_RE.match(msg) if not ok else TRIED_OK_RE.match(msg)
        if not m:
            return
        calls = _calls(m.group("cmd"))
        if not calls:
            return
        op, args = calls[0][0], calls[0][1:]
        names = [a for c in calls for a in c[1:] if NAME_RE.match(a)]
        changed = [args[i] for table in (CREATORS, REMOVERS) if op in table
                   for i in [table[op]] if i < len(args)]
        borrowed = ERRNO_RE.search(m.group("exp") or "") and self._expects_variable(line)
        if ok:
            exp = m.group("exp") or "0"
            if borrowed or (ERRNO_RE.search(exp) and exp != "ENOENT"):
                # passed only because an earlier call failed too; or failed as expected,
                # which does not tell that the name is what the test thinks (EEXIST from
                # a directory left where a fifo should be)
                return
            # these names are as the test expects them again; a symlink's target need not
            # exist, and a symlink to a missing file dangles
            target = args[0] if op == "symlink" and len(args) == 2 else None
            if target is not None and "/" in args[1] and not target.startswith("/"):
                target = args[1].rsplit("/", 1)[0] + "/" + target      # relative to the link
            for name in names:
                if name in (target, args[0] if target else None):
                    continue
                if name in self.dangling and name not in changed:
                    continue          # lstat of a dangling symlink passes, following it fails
                self.tainted.pop(name, None)
                self.dangling.discard(name)
            if target is not None:
                cause = self._hit([target])
                if cause:
                    self.tainted[args[1]] = cause
                    self.dangling.add(args[1])
            return
        cause = self._hit(names, emptiness=op in ("rmdir", "rename"))
        if not cause and borrowed:
            cause = self.last_cause
        if cause:
            failure.cause = cause
            for name in changed:                       # its state is off now as well
                self.tainted[name] = cause
        else:
            cause = signature(failure)
            for name in changed:
                self.tainted[name] = cause
        self.last_cause = cause


FILE_RE = re.compile(r"^(?P<path>\S+?/tests/(?P<rel>[\w-]+/[\w.-]+\.t)) \.\.+ ?(?P<rest>.*)$")
TAP_RE = re.compile(r"^(?P<not>not )?ok (?P<n>\d+)\b(?: - )?(?P<msg>.*)$")
PLAN_RE = re.compile(r"^1\.\.(\d+)")
LINE_RE = re.compile(r"\s*\[line (\d+)\]\s*$")
PROVE_TESTS_RE = re.compile(r"^Files=\d+, Tests=(\d+)")
PROVE_RESULT_RE = re.compile(r"^Result: (\w+)")


def _source(src: Optional[Path], rel: str) -> list:
    if src is None:
        return []
    try:
        return (Path(src) / "tests" / rel).read_text(errors="replace").splitlines()
    except OSError:
        return []


def parse_prove(output: str, group: str = "", src: Optional[Path] = None) -> GroupResult:
    """Parse the output of ``prove -v`` (one test file after another); src: the pjdfstest
    tree, whose .t files help to attribute failures to earlier ones."""
    res = GroupResult(group)
    cur: Optional[FileResult] = None
    tracker = CauseTracker()
    for raw in output.splitlines():
        line = raw.rstrip("\n")
        m = FILE_RE.match(line)
        if m:
            cur = FileResult(m.group("rel"))
            tracker = CauseTracker(_source(src, cur.file))
            res.file_results.append(cur)
            line = m.group("rest")          # non-verbose prove puts "ok" here; verbose nothing
            if not line or line in ("ok", "skipped") or line.startswith("Failed"):
                continue
        m = PROVE_TESTS_RE.match(line)
        if m:
            res.prove_tests = int(m.group(1))
            cur = None
            continue
        m = PROVE_RESULT_RE.match(line)
        if m:
            res.prove_result = m.group(1)
            continue
        if cur is None:
            continue
        m = PLAN_RE.match(line)
        if m and cur.planned is None:
            cur.planned = int(m.group(1))
            continue
        m = TAP_RE.match(line)
        if m:
            cur.ran += 1
            msg = m.group("msg").strip()
            if "# TODO" in msg:
                cur.todo += 1 if m.group("not") else 0
                continue
            if m.group("not"):
                cur.not_ok += 1
                lm = LINE_RE.search(msg)
                ln = int(lm.group(1)) if lm else None
                if lm:
                    msg = msg[:lm.start()]
                f = Failure(cur.file, int(m.group("n")), ln, msg)
                cur.failures.append(f)
                tracker.subtest(False, msg, f)
            else:
                tracker.subtest(True, msg)
    res.files = len(res.file_results)
    res.total = sum(f.total for f in res.file_results)
    res.failed = sum(f.failed for f in res.file_results)
    res.failures = [x for f in res.file_results for x in f.failures]
    res.status = "fail" if res.failed else "ok"
    return res


def format_table(results: list, title: str = "") -> str:
    rows = [title] if title else []
    rows.append(f"{'group':<16} {'failed/total':>13} {'files':>5} {'seconds':>8}  status")
    failed = total = 0
    secs = 0.0
    for r in results:
        failed, total, secs = failed + r.failed, total + r.total, secs + r.seconds
        status = r.status + (f" ({r.timed_out_in})" if r.timed_out_in else "") \
            + (f" {r.error}" if r.status == "error" else "")
        rows.append(f"{r.group:<16} {f'{r.failed}/{r.total}':>13} {r.files:>5} {r.seconds:>8.1f}  {status}")
    pct = f" ({100.0 * failed / total:.0f}% failed)" if total else ""
    rows.append(f"{'TOTAL':<16} {f'{failed}/{total}':>13} {'':>5} {secs:>8.1f}{pct}")
    return "\n".join(rows)


def format_failures(results: list) -> str:
    rows = []
    for r in results:
        for f in r.failures:
            rows.append(f"  {short(f.text())}")
        for fr in r.file_results:
            if fr.planned is not None and fr.ran < fr.planned:
                rows.append(f"  {fr.file}: ran {fr.ran} of {fr.planned} planned subtests")
    return "\n".join(rows)


LONG_TOKEN_RE = re.compile(r"[^\s']{64,}")


def short(text: str) -> str:
    """A message with its long (PATH_MAX/NAME_MAX) arguments abbreviated."""
    return LONG_TOKEN_RE.sub(lambda m: f"<{len(m.group(0))}-char name>", text)


TRIED_RE = re.compile(r"^tried '(?P<cmd>.*)', expected (?P<exp>.*), got (?P<got>.*?)\s*$")
TRIED_OK_RE = re.compile(r"^tried '(?P<cmd>.*)', expected (?P<exp>.*?)\s*$")


def _calls(cmd: str) -> list:
    """pjdfstest arguments -> [[syscall, arg, ...], ...] ([-U m] [-u u] [-g g] syscall args [: ...])."""
    calls, cur = [], []
    words = cmd.split()
    i = 0
    while i < len(words):
        if not calls and not cur and words[i] in ("-U", "-u", "-g"):
            i += 2
            continue
        if not calls and not cur and words[i] == "--":
            i += 1
            continue
        if words[i] == ":":
            calls.append(cur)
            cur = []
        else:
            cur.append(words[i])
        i += 1
    if cur:
        calls.append(cur)
    return calls


def signature(f: Failure) -> str:
    """What failed, without names: "mkfifo: ENOSYS (expected 0)", "open+fstat: ...",
    "test_check -lt" (a timestamp comparison: ctime/mtime not updated)."""
    m = TRIED_RE.match(f.message)
    if not m:
        words = f.message.split()
        if words[:1] == ["test_check"]:
            ops = [w for w in words[1:] if w.startswith("-")]
            return "test_check " + " ".join(ops)
        return short(f.message)
    words = m.group("cmd").split()
    ops, i, first = [], 0, True
    while i < len(words):            # [-U umask] [-u uid] [-g gid] syscall args [: syscall args]
        if first and words[i] in ("-U", "-u", "-g"):
            i += 2
            continue
        if first:
            ops.append(words[i])
            first = False
        elif words[i] == ":":
            first = True
        i += 1
    got = m.group("got") or "(nothing)"
    exp = m.group("exp")
    # inode numbers, timestamps, sizes vary from run to run: "N" (not modes 0NNN, not the
    # uids/gids the tests use)
    def norm(text):
        return re.sub(r"\b(?!655\d\d\b|123\b|456\b)[1-9]\d{2,}\b", "N", text)
    return f"{'+'.join(ops)}: got {short(norm(got))} (expected {short(norm(exp))})"


def format_signatures(results: list, examples: int = 4) -> str:
    """Failed subtests grouped by signature, with counts and file:line (#subtest) examples."""
    rows = []
    for r in results:
        by_sig: dict = {}
        for f in r.failures:
            key = f"(follows from {f.cause})" if f.cause else signature(f)
            by_sig.setdefault(key, []).append(f)
        for sig, fs in sorted(by_sig.items(), key=lambda kv: -len(kv[1])):
            where = sorted({f"{f.file}:{f.line}" if f.line else f"{f.file}#{f.subtest}" for f in fs})
            more = f" +{len(where) - examples}" if len(where) > examples else ""
            rows.append(f"  {r.group:<10} {len(fs):>4}  {sig}   [{' '.join(where[:examples])}{more}]")
        for fr in r.file_results:
            if fr.planned is not None and fr.ran < fr.planned:
                rows.append(f"  {r.group:<10} {fr.planned - fr.ran:>4}  not run: {fr.file} stopped after "
                            f"{fr.ran} of {fr.planned} subtests")
    return "\n".join(rows)


def results_from_json(doc: dict) -> list:
    out = []
    for g in doc["groups"].values():
        r = GroupResult(**{k: v for k, v in g.items() if k not in ("failures", "file_results")})
        r.failures = [Failure(**f) for f in g["failures"]]
        r.file_results = [FileResult(f["file"], f["planned"], f["ran"], f["failed"], f["todo"])
                          for f in g["file_results"]]   # not_ok := failed (planned-ran added back below)
        for fr in r.file_results:
            if fr.planned is not None:
                fr.not_ok -= max(0, fr.planned - fr.ran)
        out.append(r)
    return out


def results_json(results: list, **meta) -> dict:
    return dict(meta, groups={r.group: r.as_dict() for r in results},
                failed=sum(r.failed for r in results), total=sum(r.total for r in results))


def format_compare(docs: list) -> str:
    """Side-by-side failed/total and seconds per group of several results_json() documents."""
    labels = [d.get("label") or d.get("mount", "?") for d in docs]
    groups = []
    for d in docs:
        groups += [g for g in d["groups"] if g not in groups]
    width = max(14, *(len(x) for x in labels))
    rows = [f"{'group':<16}" + "".join(f" {x:>{width}} {'s':>6}" for x in labels)]
    for g in groups:
        cells = ""
        for d in docs:
            r = d["groups"].get(g)
            if r is None:
                cells += f" {'-':>{width}} {'':>6}"
            else:
                mark = {"timeout": " T", "error": " E"}.get(r["status"], "")
                cells += f" {str(r['failed']) + '/' + str(r['total']) + mark:>{width}} {r['seconds']:>6.0f}"
        rows.append(f"{g:<16}{cells}")
    rows.append(f"{'TOTAL':<16}" + "".join(
        f" {str(d['failed']) + '/' + str(d['total']):>{width}} {sum(r['seconds'] for r in d['groups'].values()):>6.0f}"
        for d in docs))
    return "\n".join(rows)
