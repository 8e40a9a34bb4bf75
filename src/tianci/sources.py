"""Where the data sets come from, and the one fetch-and-cache for all of them.

Three remote sources, each a local directory or an http(s) base URL:

    poetry   the chinese-poetry corpus (宋词/ci.song.<N>.json)        --source          TIANCI_POETRY_SOURCE
    cipu     the 词谱 of hulbji/couyun (ci_index.json, ci_list/)       --cipu-source     TIANCI_CIPU_SOURCE
    rhyme    the rhyme tables of chinese_word_rhyme (Cilin_Rhyme.json)  --rhyme-source    TIANCI_RHYME_SOURCE

Which one is used: the flag, else the environment variable, else the source remembered from an
earlier command, else the upstream URL. A source given by flag or environment variable that worked
is remembered in `sources.json` under the user's config directory ($TIANCI_CONFIG_DIR, else
$XDG_CONFIG_HOME/tianci, else ~/.config/tianci), so a new shell finds it without the variable.

Files from a URL are downloaded once (retries with backoff) into the user's cache directory
($TIANCI_CACHE_DIR, else $XDG_CACHE_HOME/tianci, else ~/.cache/tianci), one folder per URL: after
the first use every command works offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .files import atomic_write, atomic_write_json


@dataclass(frozen=True)
class Source:
    name: str
    what: str
    flag: str
    env: str
    upstream: str
    holds: str  # what a valid local copy holds, for the hint


SOURCES = {
    "poetry": Source("poetry", "chinese-poetry corpus", "--source", "TIANCI_POETRY_SOURCE",
                     "https://raw.githubusercontent.com/chinese-poetry/chinese-poetry/master",
                     "a local copy of github.com/chinese-poetry/chinese-poetry: the folder holding 宋词/"),
    "cipu": Source("cipu", "词谱", "--cipu-source", "TIANCI_CIPU_SOURCE",
                   "https://raw.githubusercontent.com/hulbji/couyun/HEAD/ci_pu",
                   "a local copy of the ci_pu folder of github.com/hulbji/couyun (ci_index.json, ci_list/)"),
    "rhyme": Source("rhyme", "rhyme tables", "--rhyme-source", "TIANCI_RHYME_SOURCE",
                    "https://raw.githubusercontent.com/charlesix59/chinese_word_rhyme/HEAD/data",
                    "a local copy of the data folder of github.com/charlesix59/chinese_word_rhyme "
                    "(Cilin_Rhyme.json)"),
}
RETRIES, BACKOFF_S, TIMEOUT_S = 3, 1.0, 30


def _source(name: str) -> Source:
    return SOURCES[name]


def is_url(s) -> bool:
    return bool(re.match(r"https?://", str(s)))


def config_dir() -> Path:
    if os.environ.get("TIANCI_CONFIG_DIR"):
        return Path(os.environ["TIANCI_CONFIG_DIR"])
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "tianci"


def cache_dir() -> Path:
    if os.environ.get("TIANCI_CACHE_DIR"):
        return Path(os.environ["TIANCI_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tianci"


def hint(name: str) -> str:
    s = _source(name)
    return (f"if you are offline, point {s.flag} (or the {s.env} environment variable) at {s.holds}; "
            "once given it is remembered")


# ----------------------------------------------------------------------------- which source

def remembered() -> dict[str, str]:
    p = config_dir() / "sources.json"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return {k: v for k, v in d.items() if k in SOURCES and isinstance(v, str)} if isinstance(d, dict) else {}


def resolve(name: str, given=None) -> tuple[str, str]:
    """(source, how it was chosen: flag|env|remembered|upstream)."""
    s = _source(name)
    if given:
        return str(given), "flag"
    if os.environ.get(s.env):
        return os.environ[s.env], "env"
    mem = remembered().get(name)
    if mem:
        return mem, "remembered"
    return s.upstream, "upstream"


def remember(name: str, source: str) -> None:
    """Record a source that worked, so later commands (in any shell) use it. Best effort: a
    read-only home directory costs the memory, never the command."""
    src = str(source)
    if src.rstrip("/") == _source(name).upstream:
        return  # the default needs no memory
    if not is_url(src):
        src = str(Path(src).expanduser().resolve())
    mem = remembered()
    if mem.get(name) == src:
        return
    try:
        config_dir().mkdir(parents=True, exist_ok=True)
        atomic_write_json(config_dir() / "sources.json", {**mem, name: src})
    except (OSError, DataError):
        pass


# ----------------------------------------------------------------------------- fetching

def url_cache(name: str, base_url: str) -> Path:
    """The cache folder of one base URL (one per URL, so two sources never mix)."""
    return cache_dir() / name / hashlib.sha256(base_url.rstrip("/").encode()).hexdigest()[:16]


def fetch(name: str, rel: str, source=None) -> Path:
    """The local path of file `rel` of source `name`: in the local directory, or downloaded once
    from the URL into the cache. Errors are DataErrors that name the file and say what to do."""
    src, how = resolve(name, source)
    if not is_url(src):
        p = Path(src).expanduser() / rel
        if not Path(src).expanduser().is_dir():
            raise DataError(f"{_source(name).what} source {src} is not a directory; {hint(name)}")
        return p
    target = url_cache(name, src) / rel
    if target.is_file():
        return target
    url = f"{src.rstrip('/')}/{urllib.parse.quote(rel)}"
    body = _download(url, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, body)  # never a half-written file in the cache
    return target


def _download(url: str, name: str) -> bytes:
    for attempt in range(RETRIES):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
                return r.read()
        except urllib.error.HTTPError as e:  # the server answered: retrying will not help
            if e.code < 500 or attempt == RETRIES - 1:
                raise DataError(f"could not download {url} (HTTP {e.code}); {hint(name)}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            if attempt == RETRIES - 1:
                raise DataError(f"could not download {url} ({getattr(e, 'reason', e)}); {hint(name)}") from None
        time.sleep(BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")


def read_json(name: str, rel: str, source=None, what: str | None = None):
    """Parse file `rel` of source `name` (fetched and cached if remote); remembers the source."""
    from .files import read_json as read_local

    src, how = resolve(name, source)
    s = _source(name)
    path = fetch(name, rel, src)
    try:
        data = read_local(path, what or f"{s.what} file")
    except DataError as e:
        raise DataError(f"cannot read {s.what} file {rel!r} from {src!r} ({e}); {hint(name)}") from None
    if how in ("flag", "env"):
        remember(name, src)
    return data


def local_tree(name: str, rels: list[str], source=None, progress: bool = False) -> tuple[Path, str, str]:
    """(a local directory holding `rels`, the source, how chosen): the source itself when local,
    else its cache folder after downloading what is missing."""
    src, how = resolve(name, source)
    if not is_url(src):
        return Path(src).expanduser(), src, how
    root = url_cache(name, src)
    missing = [r for r in rels if not (root / r).is_file()]
    if missing:
        from tqdm import tqdm
        for rel in tqdm(missing, desc=f"downloading {_source(name).what}", unit="file", disable=not progress):
            fetch(name, rel, src)
    return root, src, how
