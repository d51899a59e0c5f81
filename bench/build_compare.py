"""The build against django-distill, django-bakery and a bare loop: same pages, same run, on a tmpfs and on the disk.

    .venv/bin/python bench/build_compare.py [--sizes 1000,10000,100000] [--repeat 3] [--workers 1,N]
                                            [--filesystems tmpfs,disk] [--disk-dir DIR] [--json FILE] [--quick]
                                            [--tools ours,baseline,distill,bakery,bare]

Per size, one fresh SQLite database (in a temporary directory on the disk) gets that many published pages of about
2.4 KB (``benchlib.FILL_PAGES``: ``Page.published_copy``, live version = draft). Then, per file system and repeat, in
an order rotated every repeat so that no tool always runs first:

- ``buildstaticsite`` into an empty ``SITE_ROOT`` (a full build), then a one-page edit
  (``Page.objects.filter(slug=...).update(live_body=..., published_at=now)``, not timed) and ``buildstaticsite`` again
  (the second release: every folder is new), then another edit and build in the steady state (with
  ``SITE_RELEASES_KEPT=2`` there is now a release whose folder the build takes), then ``buildstaticsite --full`` over
  that live release;
- "today's" ``buildstaticsite``: the code of ``--baseline-rev`` (default ``a36901a``, before issue 11's work;
  ``git archive`` into the scratch folder, the same database), a full build into an empty ``SITE_ROOT``;
- django-distill ``distill generate --force --quiet --exclude-staticfiles`` and django-bakery ``build --skip-static
  --skip-media`` (bench-only extras from ``requirements-bench.txt``, installed into this virtualenv when missing), each
  through its own URLconf / view in ``bench/compare/`` rendering ``publisher/site/page.html`` for the same rows, under
  ``bench.compare.settings`` (the project's settings plus the two apps);
- the bare loop ``bench/compare/bare_loop.py``: ``render_to_string`` + write per page, no request, no heartbeat, no
  index, sitemap or manifest; with more than one ``--workers`` value, also the same loop in N forked processes that
  render a slice of the rows each: what this machine gives N independent renderers, the ceiling of any N-way build.

``--tools ours,bare`` runs only those kinds (ours, baseline, distill, bakery, bare) for a quicker look.

Each run is a child of a small parent process of its own, so ``getrusage(RUSAGE_CHILDREN)`` gives that run's CPU
(user + sys, including any worker processes it waited for) and its peak RSS (``ru_maxrss``: the largest single
process) and block writes (``ru_oublock``: what reached the file system's block layer; 0 on a tmpfs). Files and bytes
are counted in the tree the run produced (for ``buildstaticsite`` the new release); "written" counts files whose link
count is 1, i.e. not hard-linked from an earlier release. ``os.sync()`` runs before each measured run so that the
previous run's dirty pages are not flushed during it. Figures are medians over the repeats and are also given as
ratios to ``buildstaticsite``'s full build at the first ``--workers`` value (same size, same file system).

``--workers 1,N`` is passed to ``buildstaticsite`` as ``BUILD_WORKERS`` (DESIGN §1). Until the project reads that
setting, the benchmark says so and measures ``buildstaticsite`` once per repeat, without it.
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import benchlib

ROOT = benchlib.ROOT
PYTHON = benchlib.PYTHON
COMPARE_SETTINGS = "bench.compare.settings"
REQUIREMENTS = ROOT / "requirements-bench.txt"
EXTRAS = ("django-distill", "django-bakery")
#: "Today's" build for issue 11: the last commit before its work (its migrations are this schema's).
BASELINE_REV = "a36901a"
RUN_TIMEOUT = 3600
FILESYSTEMS = ("tmpfs", "disk")
#: ``manage.py shell -c`` code: change one page's live body (a queryset update: no build request, no launch).
EDIT = """
from django.utils import timezone
from publisher.models import Page
changed = Page.objects.filter(slug={slug!r}).update(live_body={body!r}, published_at=timezone.now())
assert changed == 1, changed
"""
#: Runs one command as its only child; prints wall seconds and the child's rusage as JSON.
PROBE = r"""
import json, resource, subprocess, sys, time
argv, err = json.loads(sys.argv[1]), sys.argv[2]
started = time.perf_counter()
with open(err, "wb") as stderr:
    code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr).returncode
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": code, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "user": usage.ru_utime,
                  "sys": usage.ru_stime, "maxrss_kib": usage.ru_maxrss, "oublock": usage.ru_oublock}))
"""


@dataclass(frozen=True)
class Tool:
    """One way of building the site; ``kind`` is what the runner branches on (see ``run_tool``)."""

    key: str
    label: str
    kind: str  # "ours", "baseline", "distill", "bakery", "bare"
    step: str = "full"  # for ours: "full", "edit", "steady", "forced"
    workers: int | None = None  # for ours: BUILD_WORKERS; for the bare loop: its processes


@dataclass
class Figures:
    """The measurements of one tool on one size and file system, one entry per repeat."""

    wall: list = field(default_factory=list)
    cpu: list = field(default_factory=list)
    rss_mib: list = field(default_factory=list)
    files: list = field(default_factory=list)
    bytes: list = field(default_factory=list)
    written_files: list = field(default_factory=list)
    written_bytes: list = field(default_factory=list)
    block_mib: list = field(default_factory=list)
    same_page: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    def median(self, name):
        values = getattr(self, name)
        return statistics.median(values) if values else float("nan")


# --- Preparing and running --------------------------------------------------------------------------------------


def ensure_extras():
    """django-distill and django-bakery in this virtualenv: installed from requirements-bench.txt when missing."""
    missing = [name for name in EXTRAS if not _installed(name)]
    if missing:
        print(f"Installing the bench-only extras ({', '.join(missing)}) from {REQUIREMENTS.name} ...", flush=True)
        subprocess.run(
            [PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
            check=True,
        )
    return {name: importlib.metadata.version(name) for name in EXTRAS}


def _installed(name):
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def extract_baseline(rev, folder):
    """The project at commit ``rev`` in ``folder`` (``git archive``), or ``None`` (said) when git cannot give it."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, timeout=120)
    if archive.returncode != 0:
        print(f"today's build not measured: git archive {rev} failed: {archive.stderr.decode(errors='replace')[:300]}")
        return None
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True, timeout=120)
    return folder


def filesystem_type(path):
    """The type of the file system ``path`` is on (``/proc/mounts``, longest mount point first)."""
    path = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


def django(env, *args):
    return subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )


def project_supports(env):
    """(reads BUILD_WORKERS, has ``buildstaticsite --full``) for the code as it is now."""
    probe = django(
        env,
        "shell",
        "-c",
        "from publisher.conf import get_config; print('workers' if hasattr(get_config(), 'BUILD_WORKERS') else '-')",
    )
    if probe.returncode != 0:
        raise RuntimeError(f"probing the settings failed:\n{probe.stdout}{probe.stderr}")
    helps = django(env, "buildstaticsite", "--help")
    return probe.stdout.strip().endswith("workers"), "--full" in helps.stdout


def measure(argv, env, errfile):
    """Run ``argv`` under its own small parent; returns the probe's figures (raises on a failed run)."""
    out = subprocess.run(
        [PYTHON, "-c", PROBE, json.dumps(argv), str(errfile)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    result = json.loads(out.stdout)
    if result["code"] != 0:
        tail = Path(errfile).read_text(errors="replace").strip().splitlines()[-30:]
        raise RuntimeError(f"{' '.join(argv)} exited {result['code']}:\n" + "\n".join(tail))
    return result


def tree_stats(root):
    """files, bytes, files with one link (written, not hard-linked), their bytes."""
    files = size = written = written_size = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
            if st.st_nlink == 1:
                written += 1
                written_size += st.st_size
    return files, size, written, written_size


class Runner:
    """Runs the tools of one size on one file system, in a scratch folder there."""

    def __init__(self, env, scratch, *, sample_slug, edit_slug, baseline=None):
        self.env = {**env, "SITE_RELEASES_KEPT": "2"}
        self.baseline = baseline
        self.scratch = Path(scratch)
        self.sample_slug = sample_slug
        self.edit_slug = edit_slug
        self.edits = 0
        self.site_root = None

    def run(self, tool):
        """Measure ``tool`` once; returns (probe figures, output folder)."""
        env, argv, output = dict(self.env), None, None
        if tool.kind == "ours":
            if tool.step == "full":
                self.site_root = self._fresh(f"site-{tool.key}")
            elif tool.step in ("edit", "steady"):
                self.edits += 1
                edit = EDIT.format(slug=self.edit_slug, body=f"An edited body, edit {self.edits}.\n\nSecond paragraph.")
                done = django(env, "shell", "-c", edit)
                if done.returncode != 0:
                    raise RuntimeError(f"the one-page edit failed:\n{done.stdout}{done.stderr}")
            env["SITE_ROOT"] = str(self.site_root)
            if tool.workers is not None:
                env["BUILD_WORKERS"] = str(tool.workers)
            argv = [PYTHON, "manage.py", "buildstaticsite", *(["--full"] if tool.step == "forced" else [])]
        elif tool.kind == "baseline":
            output = self._fresh("baseline")
            env["SITE_ROOT"] = str(output)
            argv = [PYTHON, str(self.baseline / "manage.py"), "buildstaticsite"]
        elif tool.kind == "distill":
            output = self._fresh("distill")
            shutil.rmtree(output)  # distill creates it (and would ask before deleting it)
            env["DJANGO_SETTINGS_MODULE"] = COMPARE_SETTINGS
            argv = [PYTHON, "manage.py", "distill", "generate", "--output-directory", str(output)]
            argv += ["--force", "--quiet", "--exclude-staticfiles"]
        elif tool.kind == "bakery":
            output = self._fresh("bakery")
            env.update(DJANGO_SETTINGS_MODULE=COMPARE_SETTINGS, BENCH_BUILD_DIR=str(output))
            argv = [PYTHON, "manage.py", "build", "--skip-static", "--skip-media"]
        elif tool.kind == "bare":
            output = self._fresh("bare")
            argv = [PYTHON, "-m", "bench.compare.bare_loop", str(output), "--processes", str(tool.workers or 1)]
        else:
            raise ValueError(tool.kind)
        os.sync()
        figures = measure(argv, env, self.scratch / "stderr.txt")
        if tool.kind == "ours":
            output = Path(os.path.realpath(self.site_root / "current"))
        elif tool.kind == "baseline":
            output = Path(os.path.realpath(output / "current"))
        return figures, output

    def _fresh(self, name):
        path = self.scratch / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def clean(self, tool, output):
        if tool.kind == "baseline":
            shutil.rmtree(self.scratch / "baseline", ignore_errors=True)
        elif tool.kind != "ours":
            shutil.rmtree(output, ignore_errors=True)

    def clean_ours(self):
        if self.site_root is not None:
            shutil.rmtree(self.site_root, ignore_errors=True)
            self.site_root = None
        os.sync()


def tools_for(workers, *, has_workers, has_full, versions, baseline=None):
    ours = []
    for count in workers if has_workers else [None]:
        suffix = f", {count} worker{'s' if count != 1 else ''}" if count is not None else ""
        ours.append(Tool(f"ours-full-{count}", f"buildstaticsite: full{suffix}", "ours", "full", count))
        ours.append(Tool(f"ours-edit-{count}", f"buildstaticsite: one-page edit{suffix}", "ours", "edit", count))
        label = f"  edit again, a folder to take{suffix}"
        ours.append(Tool(f"ours-steady-{count}", label, "ours", "steady", count))
        if has_full:
            label = f"buildstaticsite --full over it{suffix}"
            ours.append(Tool(f"ours-forced-{count}", label, "ours", "forced", count))
    others = [Tool("baseline", f"today's buildstaticsite ({baseline}): full", "baseline")] if baseline else []
    others += [
        Tool("distill", f"django-distill {versions['django-distill']} distill generate", "distill"),
        Tool("bakery", f"django-bakery {versions['django-bakery']} build", "bakery"),
        Tool("bare", "bare loop: render_to_string + write", "bare"),
    ]
    if len(workers) > 1:
        many = workers[-1]
        others.append(Tool(f"bare-{many}", f"  the same in {many} processes, a slice each", "bare", workers=many))
    return ours, others


def only(tools, kinds):
    """``tools`` whose kind is in ``kinds`` (all when empty)."""
    return [tool for tool in tools if not kinds or tool.kind in kinds]


def run_size(count, workdir, filesystems, *, repeat, ours, others, baseline=None):
    """All repeats of all tools for one size: {fs: {tool key: Figures}}."""
    env = benchlib.fresh_database("sqlite", workdir / f"db-{count}")
    started = time.perf_counter()
    filled = django(env, "shell", "-c", benchlib.FILL_PAGES.format(count=count))
    if filled.returncode != 0:
        raise RuntimeError(f"filling {count} pages failed:\n{filled.stdout}{filled.stderr}")
    print(f"{count:,} pages: filled in {time.perf_counter() - started:.1f} s", flush=True)
    sample_slug, edit_slug = f"page-{count // 2:07d}", f"page-{count // 3:07d}"
    results = {}
    for fs_name, fs_dir in filesystems.items():
        scratch = Path(tempfile.mkdtemp(prefix=f"bench-compare-{count}-", dir=fs_dir))
        runner = Runner(env, scratch, sample_slug=sample_slug, edit_slug=edit_slug, baseline=baseline)
        figures = results[fs_name] = {tool.key: Figures() for tool in ours + others}
        try:
            for rep in range(repeat):
                # Each group is one unit in the rotation: ours' steps run in order on the same SITE_ROOT.
                groups = _groups(ours) + [[tool] for tool in others]
                shift = rep % len(groups)
                order = groups[shift:] + groups[:shift]
                reference = None
                for group in order:
                    for tool in group:
                        try:
                            probe, output = runner.run(tool)
                        except (RuntimeError, subprocess.SubprocessError) as exc:
                            # One failed run is reported and the benchmark goes on with the others.
                            figures[tool.key].failures.append(str(exc))
                            print(f"  {fs_name:5} #{rep + 1} {tool.label:46} FAILED: {str(exc)[:2000]}", flush=True)
                            if tool.kind == "ours":
                                break  # the next steps build on this one
                            continue
                        files, size, written, written_size = tree_stats(output)
                        page = output / sample_slug / "index.html"
                        page_bytes = page.read_bytes() if page.exists() else None
                        if tool.key == "bare":
                            reference = page_bytes
                        f = figures[tool.key]
                        f.wall.append(probe["wall"])
                        f.cpu.append(probe["cpu"])
                        f.rss_mib.append(probe["maxrss_kib"] / 1024)
                        f.block_mib.append(probe["oublock"] * 512 / 2**20)
                        f.files.append(files)
                        f.bytes.append(size)
                        f.written_files.append(written)
                        f.written_bytes.append(written_size)
                        f.same_page.append(page_bytes)
                        runner.clean(tool, output)
                        print(
                            f"  {fs_name:5} #{rep + 1} {tool.label:46} {probe['wall']:7.2f} s wall "
                            f"{probe['cpu']:7.2f} s CPU {probe['maxrss_kib'] / 1024:6.1f} MiB {written:>8,} files",
                            flush=True,
                        )
                    runner.clean_ours()
                for f in figures.values():  # same sample page as the bare loop's, this repeat?
                    if f.same_page and not isinstance(f.same_page[-1], bool):
                        f.same_page[-1] = reference is not None and f.same_page[-1] == reference
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


def _groups(ours):
    """ours' tools grouped by worker count: a full build, then the steps that build on it."""
    groups = {}
    for tool in ours:
        groups.setdefault(tool.workers, []).append(tool)
    return list(groups.values())


# --- Report -------------------------------------------------------------------------------------------------------


def fmt(value, spec=".2f"):
    return "n/a" if value != value else format(value, spec)


def times(value):
    return "n/a" if value != value else f"{value:.2f}×"


def rel(figures, base, name):
    """The median of ``name`` in ``figures`` as a ratio to the same median in ``base``."""
    return times(benchlib.ratio(figures.median(name), base.median(name)))


def paired(a, b):
    """The median over repeats of ``a``'s wall time over ``b``'s in the same repeat (the machine's speed drifts
    between repeats; within one, the two ran minutes apart at most): "n/a" unless both ran every repeat."""
    if a.failures or b.failures or len(a.wall) != len(b.wall) or not a.wall:
        return "n/a"
    return times(statistics.median(x / y for x, y in zip(a.wall, b.wall, strict=True)))


def report(results, args, *, ours, others, filesystems, fs_types, has_workers, has_full, info):
    print()
    print(f"buildstaticsite against django-distill, django-bakery and a bare loop; medians of {args.repeat}")
    benchlib.print_machine(info)
    for name in filesystems:
        print(f"{name}: {filesystems[name]} ({fs_types[name]})")
    if has_workers:
        print(f"BUILD_WORKERS: {', '.join(str(w) for w in args.workers)} (ratios to the first)")
    else:
        print(
            "BUILD_WORKERS is not implemented yet (publisher.conf has no BUILD_WORKERS setting): buildstaticsite runs "
            f"in one process whatever the value, so --workers {','.join(str(w) for w in args.workers)} was not "
            "passed and it was measured once per repeat."
        )
    if not has_full:
        print("buildstaticsite has no --full option yet: the forced full rebuild over a live release is not measured.")
    print(
        "CPU = user+sys of the run and the processes it waited for; RSS = the largest single process; 'written' = "
        "files not hard-linked from an earlier release; blk = block writes (ru_oublock)."
    )
    header = (
        f"{'':48}{'wall s':>8}{'×':>7}{'CPU s':>8}{'×':>7}{'CPU/wall':>9}{'RSS MiB':>9}{'×':>7}"
        f"{'files':>9}{'written':>9}{'MiB written':>12}{'×':>7}{'blk MiB':>9}  same page"
    )
    for count, by_fs in results.items():
        for fs_name, figures in by_fs.items():
            print()
            print(f"{count:,} pages on {fs_name}")
            print(header)
            base = figures[ours[0].key]
            for tool in ours + others:
                f = figures[tool.key]
                same = "-" if tool.kind == "bare" else ("yes" if all(f.same_page) else "NO")
                if f.failures:
                    same += f"  ({len(f.failures)} of {len(f.failures) + len(f.wall)} runs FAILED)"
                print(
                    f"  {tool.label:46}{fmt(f.median('wall')):>8}{rel(f, base, 'wall'):>7}"
                    f"{fmt(f.median('cpu')):>8}{rel(f, base, 'cpu'):>7}"
                    f"{fmt(benchlib.ratio(f.median('cpu'), f.median('wall'))):>9}"
                    f"{fmt(f.median('rss_mib'), '.1f'):>9}{rel(f, base, 'rss_mib'):>7}"
                    f"{fmt(f.median('files'), ',.0f'):>9}{fmt(f.median('written_files'), ',.0f'):>9}"
                    f"{fmt(f.median('written_bytes') / 2**20, '.1f'):>12}{rel(f, base, 'written_bytes'):>7}"
                    f"{fmt(f.median('block_mib'), '.1f'):>9}  {same}"
                )
    print()
    print("the issue's goals, from the medians above")
    for count, by_fs in results.items():
        for fs_name, figures in by_fs.items():
            full, bare = figures[ours[0].key], figures.get("bare", Figures())
            steady = figures[ours[2].key]
            line = (
                f"  {count:>9,} {fs_name:5} CPU ours/bare {rel(full, bare, 'cpu')} (goal ≤ 1.2×); "
                f"edit/full wall {rel(steady, full, 'wall')}"
            )
            if "baseline" in figures:
                line += f", edit/today's full wall {rel(steady, figures['baseline'], 'wall')} (goal ≤ 0.20× at 100k)"
            if has_workers and len(args.workers) > 1:
                groups = _groups(ours)
                last = figures[groups[-1][0].key]
                few, many = args.workers[0], args.workers[-1]
                line += f"; full wall {few}/{many} workers {rel(full, last, 'wall')} (goal ≥ 1.7×"
                line += f", per repeat {paired(full, last)})"
                split = figures.get(f"bare-{many}")
                if split is not None and split.wall:
                    line += f", the bare loop's 1/{many} processes {rel(bare, split, 'wall')}"
                    line += f" (per repeat {paired(bare, split)})"
            print(line)


def to_json(results):
    return {
        str(count): {
            fs_name: {key: {k: v for k, v in vars(f).items() if k != "same_page"} for key, f in figures.items()}
            for fs_name, figures in by_fs.items()
        }
        for count, by_fs in results.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", default=f"1,{len(os.sched_getaffinity(0))}", help="BUILD_WORKERS values")
    parser.add_argument("--filesystems", default="tmpfs,disk", help="comma-separated: tmpfs, disk")
    parser.add_argument("--tmpfs-dir", default="/dev/shm")
    parser.add_argument("--disk-dir", default=tempfile.gettempdir())
    parser.add_argument("--json", metavar="FILE", help="also write every measurement to FILE")
    parser.add_argument(
        "--baseline-rev",
        default=BASELINE_REV,
        help="the commit measured as today's buildstaticsite (git archive; empty: not measured)",
    )
    parser.add_argument(
        "--tools",
        default="",
        help="comma-separated kinds to run (ours, baseline, distill, bakery, bare); default: all",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1,000 pages, one run each (make bench QUICK=1; explicit options win)"
    )
    args = parser.parse_args()
    if args.quick:
        for name, value in {"sizes": "1000", "repeat": 1}.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.workers = list(dict.fromkeys(int(w) for w in args.workers.split(",") if w.strip()))
    if args.repeat < 1 or not args.sizes or not args.workers:
        parser.error("--repeat, --sizes and --workers need at least one value")
    wanted = [name.strip() for name in args.filesystems.split(",") if name.strip()]
    dirs = {"tmpfs": args.tmpfs_dir, "disk": args.disk_dir}
    unknown = sorted(set(wanted) - set(FILESYSTEMS))
    if unknown:
        parser.error(f"--filesystems takes {', '.join(FILESYSTEMS)}, not {', '.join(unknown)}")
    benchlib.ensure_project_on_path()
    benchlib.exit_cleanly_on_sigterm()

    filesystems, fs_types = {}, {}
    for name in wanted:
        if not os.path.isdir(dirs[name]):
            print(f"{name}: {dirs[name]} does not exist; skipped.")
            continue
        filesystems[name], fs_types[name] = dirs[name], filesystem_type(dirs[name])
        if (name == "tmpfs") != (fs_types[name] == "tmpfs"):
            print(f"note: the {name} folder {dirs[name]} is on {fs_types[name]}")
    if not filesystems:
        parser.error("no file system to measure on")
    versions = ensure_extras()
    workdir = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    try:
        env = benchlib.fresh_database("sqlite", workdir / "probe")
        has_workers, has_full = project_supports(env)
        baseline = extract_baseline(args.baseline_rev, workdir / "baseline") if args.baseline_rev else None
        ours, others = tools_for(
            args.workers,
            has_workers=has_workers,
            has_full=has_full,
            versions=versions,
            baseline=args.baseline_rev if baseline else None,
        )
        kinds = {kind.strip() for kind in args.tools.split(",") if kind.strip()}
        unknown = sorted(kinds - {"ours", "baseline", "distill", "bakery", "bare"})
        if unknown or (kinds and "ours" not in kinds):
            parser.error(f"--tools: unknown kind {', '.join(unknown)}" if unknown else "--tools must include ours")
        others = only(others, kinds)
        results = {}
        for count in args.sizes:
            results[count] = run_size(
                count, workdir, filesystems, repeat=args.repeat, ours=ours, others=others, baseline=baseline
            )
            shutil.rmtree(workdir / f"db-{count}", ignore_errors=True)
            if args.json:  # after every size, so a run stopped later keeps what it measured
                Path(args.json).write_text(json.dumps({"versions": versions, "results": to_json(results)}, indent=1))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(
        results,
        args,
        ours=ours,
        others=others,
        filesystems=filesystems,
        fs_types=fs_types,
        has_workers=has_workers,
        has_full=has_full,
        info=benchlib.machine_info(),
    )
    failed = sum(len(f.failures) for by_fs in results.values() for figs in by_fs.values() for f in figs.values())
    if failed:
        print(f"\n{failed} run(s) FAILED (their errors are above); the figures are those of the runs that finished.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
