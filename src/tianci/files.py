"""Files tianci writes: one atomic-write helper, and the manifest that says which files are tianci's.

Every file tianci writes goes through `atomic_write`: the bytes land in a temporary file beside the
target (`.NAME.XXXX.tmp`) and are moved into place with os.replace, so a kill at any moment leaves
the old file or the new one, never half of one. A full disk is a `RunError` that names the file
(the temporary file is removed; the old file is untouched).

A run or data directory holds `manifest.json`: the kind of directory and the relative paths tianci
wrote there. `--force` removes exactly those and nothing else; a non-empty directory without a
manifest is someone else's and is never deleted from. Pure Python: no torch, no numpy.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import RunError

MANIFEST = "manifest.json"
TMP_SUFFIX = ".tmp"


def atomic_write(path, data: bytes | str | None = None, *, writer=None) -> Path:
    """Write `data` (or call `writer(f)` with the open binary file, for torch.save) to `path`
    atomically. OSError (disk full, read-only, permission) becomes a RunError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise RunError(f"{path} is a directory; tianci needs to write a file there")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if writer is None:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            else:
                writer(f)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path, obj) -> Path:
    return atomic_write(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def _write_error(path: Path, e: OSError) -> RunError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on the device"
    else:
        why = e.strerror or str(e)
    return RunError(f"could not write {path}: {why}; the file tianci had there before is unchanged")


def read_text(path, what: str) -> str:
    """A UTF-8 text file, with one clear line (naming `what` and the path) for every way it can be
    unreadable."""
    from .errors import DataError

    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{what} {path} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is not UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{what} {path} cannot be read: {e.strerror or e}") from None


def read_json(path, what: str):
    """A JSON file tianci wrote or reads, with one clear line for every way it can be unusable."""
    from .errors import DataError

    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{what} {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise DataError(f"{what} {path} is nested too deeply to be a real {what}") from None


def json_objects(data, path) -> list[dict]:
    """`data` (a parsed corpus file) as its list of poem objects; one clear line when it is not one."""
    from .errors import DataError

    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of poems, got {type(data).__name__}")
    for k, d in enumerate(data):
        if not isinstance(d, dict):
            raise DataError(f"{path}: poem index {k} is a {type(d).__name__}, expected an object")
    return data


def clean_temp(directory) -> list[Path]:
    """Remove the temporary files a killed writer left (`.NAME.XXXX.tmp`), in `directory` and its
    `ckpt/`; returns what was removed. Only names of atomic_write's own pattern are touched."""
    removed = []
    for d in (Path(directory), Path(directory) / "ckpt"):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# ----------------------------------------------------------------------------- the manifest

class Manifest:
    """`manifest.json` of a run or data directory: its kind and the paths tianci owns there.

    Paths are relative, with '/' separators; a directory entry ends in '/' (tb/, wandb/) and is
    removed whole. Paths may be recorded before the file exists (the names a fresh run will
    write): removing a missing path is a no-op."""

    def __init__(self, directory, kind: str, owned: list[str] | None = None):
        self.dir, self.kind = Path(directory), kind
        self.owned: list[str] = list(dict.fromkeys(owned or []))

    @classmethod
    def read(cls, directory) -> "Manifest | None":
        """The directory's manifest, or None when it has none (not tianci's, or an older tianci)."""
        p = Path(directory) / MANIFEST
        if not p.is_file():
            return None
        d = read_json(p, "manifest")
        if not (isinstance(d, dict) and d.get("tianci") == 1 and isinstance(d.get("kind"), str)
                and isinstance(d.get("owned"), list) and all(isinstance(x, str) for x in d["owned"])):
            return None  # someone else's manifest.json: then the directory is not tianci's
        return cls(directory, d["kind"], d["owned"])

    def save(self) -> None:
        atomic_write_json(self.dir / MANIFEST, {"tianci": 1, "kind": self.kind, "owned": self.owned})

    def add(self, *paths: str) -> None:
        new = [p for p in paths if p not in self.owned]
        if new:
            self.owned.extend(new)
            self.save()

    def discard(self, *paths: str) -> None:
        if any(p in self.owned for p in paths):
            self.owned = [p for p in self.owned if p not in paths]
            self.save()

    def remove_owned(self) -> None:
        """Delete every owned path (and then the manifest); anything else in the directory stays.
        Directories that only held owned files (ckpt/) are removed when left empty."""
        parents = set()
        for rel in self.owned:
            p = self.dir / rel.rstrip("/")
            if rel.endswith("/") and p.is_dir():
                shutil.rmtree(p)
            elif p.is_file() or p.is_symlink():
                p.unlink()
            if "/" in rel.rstrip("/"):
                parents.add(p.parent)
        for d in sorted(parents, key=lambda q: -len(q.parts)):
            try:
                d.rmdir()  # only if empty: a user's file in ckpt/ keeps ckpt/
            except OSError:
                pass
        clean_temp(self.dir)
        self.owned = []
        (self.dir / MANIFEST).unlink(missing_ok=True)

    def foreign(self) -> list[str]:
        """Top-level entries of the directory that tianci did not write (the user's files)."""
        tops = {rel.rstrip("/").split("/")[0] for rel in self.owned} | {MANIFEST}
        return sorted(p.name for p in self.dir.iterdir()
                      if p.name not in tops and not (p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)))


# ----------------------------------------------------------------------------- swapping a whole directory

PID_FILE = ".tianci-pid"


class Staging:
    """Build a directory's new contents in a temporary folder beside it, then swap them in whole:
    a kill at any moment leaves the old contents or the new ones, never a mix. Files in the target
    that tianci did not write (not in its manifest) are moved over into the new contents.

        with Staging(target, "data") as tmp:
            ... write the files into tmp ...
            stage.owned = [...]    # what was written: the new manifest

    Leftovers of a killed build are dealt with when the next Staging of the same target starts."""

    def __init__(self, target, kind: str):
        self.target, self.kind = Path(target), kind
        self.tmp: Path | None = None
        self.owned: list[str] = []

    def __enter__(self) -> Path:
        parent = self.target.parent
        parent.mkdir(parents=True, exist_ok=True)
        salvage(self.target)
        try:
            self.tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.target.name}.tianci-new-"))
        except OSError as e:
            raise _write_error(parent, e) from None
        (self.tmp / PID_FILE).write_text(str(os.getpid()))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        Manifest(self.tmp, self.kind, self.owned).save()  # the mark of a complete build
        t = self.target
        if t.is_dir() and not any(t.iterdir()):
            t.rmdir()
        if t.is_dir():
            # The user's own files get a second name (a hard link) in the new set before the swap,
            # so at every instant the target holds them: a kill right after the swap must not leave
            # them only in the hidden swapped-out folder until the next start salvages it.
            for e in _foreign(t):
                if not (self.tmp / e.name).exists():
                    _link_tree(e, self.tmp / e.name)
        if not t.exists():
            os.rename(self.tmp, t)
            old = None
        elif _exchange(self.tmp, t):  # atomic: t is the old set, then the new set, nothing between
            old = self.tmp
        else:  # no renameat2 (not Linux): two renames; a kill between them is undone by salvage()
            old = Path(tempfile.mkdtemp(dir=t.parent, prefix=f".{t.name}.tianci-old-"))
            old.rmdir()
            os.rename(t, old)
            os.rename(self.tmp, t)
        (t / PID_FILE).unlink(missing_ok=True)
        if old is not None:
            _rescue(old, t)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise _write_error(b, OSError(err, os.strerror(err)))


def _foreign(d: Path) -> list[Path]:
    """The entries of directory d that tianci did not write (not in its manifest)."""
    man = Manifest.read(d)
    ours = {rel.rstrip("/").split("/")[0] for rel in (man.owned if man else [])} | {MANIFEST, PID_FILE}
    return [e for e in d.iterdir()
            if e.name not in ours and not (e.name.startswith(".") and e.name.endswith(TMP_SUFFIX))]


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link src (a file, or a folder recursively) at dst; where links are impossible, leave
    nothing at dst (then _rescue moves src over after the swap instead)."""
    def link(a, b):
        os.link(a, b, follow_symlinks=False)
    try:
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, copy_function=link)
        else:
            link(src, dst)
    except OSError:
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst, ignore_errors=True)
        else:
            dst.unlink(missing_ok=True)


def _same_tree(a: Path, b: Path) -> bool:
    """b holds exactly a's files under the same inodes (what _link_tree made)."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    if not (a.is_dir() and not a.is_symlink()):
        return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)
    return b.is_dir() and all(_same_tree(e, b / e.name) for e in a.iterdir())


def _rescue(old: Path, target: Path) -> None:
    """Move what tianci did not write from a swapped-out directory into target, then remove it.
    Anything that cannot move (its name is taken by something else) stays, and the folder with it."""
    kept = []
    for e in _foreign(old):
        if target.is_dir() and not (target / e.name).exists():
            os.rename(e, target / e.name)
        elif not _same_tree(e, target / e.name):  # already in target under the same inodes: done
            kept.append(e.name)
    if kept:
        import warnings
        warnings.warn(f"{old} keeps files that were not tianci's ({', '.join(kept[:5])}); move them yourself",
                      stacklevel=2)
        return
    shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def salvage(target) -> None:
    """Finish or undo what a killed Staging of `target` left: an unfinished build is removed, a
    finished one whose swap was cut short is put in place, swapped-out old contents give back the
    user's files and go. Refuses (DataError) while another live process is building `target`."""
    from .errors import DataError

    t = Path(target)
    if not t.parent.is_dir():
        return
    for d in sorted(t.parent.glob(f".{t.name}.tianci-new-*")):
        pid_file = d / PID_FILE
        if pid_file.is_file():
            try:
                pid = int(pid_file.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise DataError(f"another tianci process (pid {pid}) is writing {t}; wait for it, or remove {d} "
                                "if no such process is running")
            if not t.exists() and Manifest.read(d) is not None:
                pid_file.unlink()
                os.rename(d, t)  # a complete build whose swap was cut short
            else:
                shutil.rmtree(d, ignore_errors=True)  # an unfinished build: only tianci's files
        else:
            _rescue(d, t)  # the old contents, swapped out
    for d in sorted(t.parent.glob(f".{t.name}.tianci-old-*")):
        if not t.exists():
            os.rename(d, t)
        else:
            _rescue(d, t)
    if t.is_dir():
        (t / PID_FILE).unlink(missing_ok=True)
