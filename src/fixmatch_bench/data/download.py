"""Fetch the raw dataset files named in the ``sources`` block of params.yaml.

Every file is streamed into ``<name>.part`` and renamed into place only once its
checksum matches, so a target that exists is always a verified copy. The download
stage keeps the ``.part`` files outside its output folder (DVC deletes a stage's
outputs before running it), so a download interrupted in one ``dvc repro``
resumes in the next. Transient failures (connection drops, timeouts, HTTP 5xx, a body
shorter than announced) are retried with exponential backoff, and a retry
resumes the partial file with an HTTP ``Range`` request when the server answers
206; otherwise it restarts from byte 0.

A host that cannot be reached at all on the first contact (no DNS, connection
refused, no route) is not retried: that is what a machine without network sees,
and waiting through the backoff would only delay the message telling the user
to set a mirror. HTTP 4xx answers (404 and the like) are not retried either.

A mirror (``sources.mirror``, overridden by the ``FIXMATCH_MIRROR`` environment
variable) replaces every file's URL by ``<mirror>/<file name>``; it is either a
base URL or a local directory. When a mirror is set it is the only source used.

A ``package://<package>/<path>`` URL names a file shipped inside an installed
Python package (the quick suite's digits, inside scikit-learn): it is copied and
checksum-verified like any other file, with no network and no mirror.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.resources
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from tqdm import tqdm

from ..core.errors import params_error
from ..core.progress import LogProgress, progress
from ..core.schema import SourcesParams

MIRROR_ENV = "FIXMATCH_MIRROR"
MIRROR_HINT = (
    f"set a mirror (a base URL or a local directory holding the files): the {MIRROR_ENV} environment "
    "variable, `dvc exp run -S sources.mirror=...`, or sources.mirror in conf/config.yaml, then `make params`"
)
CHUNK_BYTES = 1 << 20
MAX_BACKOFF_S = 60.0
_HEX = {"md5": re.compile(r"^[0-9a-f]{32}$"), "sha256": re.compile(r"^[0-9a-f]{64}$")}
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class DownloadError(RuntimeError):
    """A file could not be fetched; the message says which and why."""


class SourceUnreachable(DownloadError):
    """The host could not be contacted at all (no network, wrong mirror)."""


class ChecksumError(DownloadError):
    """A fetched file does not match its configured checksum."""


CATALOG_DIR = "conf/sources"


class SourcesError(ValueError):
    """The ``sources`` block of the params file is malformed."""


class _Transient(Exception):
    """A failure worth retrying (after contact with the server was made)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its local name, its canonical URL and checksums."""

    name: str
    url: str
    md5: str
    sha256: str | None = None


@dataclass(frozen=True)
class Sources:
    """Where the raw files come from: params.yaml's ``sources`` block (how to fetch) and
    the catalog conf/sources/<dataset>.yaml (what to fetch: URLs and checksums)."""

    mirror: str | None
    retries: int
    timeout_s: float
    backoff_s: float
    datasets: dict[str, tuple[RemoteFile, ...]]
    catalog: str = CATALOG_DIR

    def files(self, dataset: str) -> tuple[RemoteFile, ...]:
        """The files of ``dataset``; a clear error if it is not configured."""
        if dataset not in self.datasets:
            raise SourcesError(f"dataset {dataset!r} has no {self.catalog}/{dataset}.yaml; configured: "
                               f"{sorted(self.datasets)}")
        return self.datasets[dataset]


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise SourcesError(f"{where} must have a {key!r} entry")
    return mapping[key]


def _parse_file(entry: Any, where: str) -> RemoteFile:
    if not isinstance(entry, Mapping):
        raise SourcesError(f"{where} must be a mapping with name, url, md5 (and optional sha256), got {entry!r}")
    unknown = set(entry) - {"name", "url", "md5", "sha256"}
    if unknown:
        raise SourcesError(f"{where} has unknown keys {sorted(unknown)}; allowed: name, url, md5, sha256")
    name = str(_require(entry, "name", where))
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise SourcesError(f"{where}.name must be a plain file name, got {name!r}")
    checksums = {}
    for kind in ("md5", "sha256"):
        value = entry.get(kind)
        if value is None and kind == "sha256":
            continue
        if not isinstance(value, str) or not _HEX[kind].match(value.lower()):
            raise SourcesError(f"{where}.{kind} must be a hexadecimal {kind} digest, got {value!r}")
        checksums[kind] = value.lower()
    url = _require(entry, "url", where)
    if not isinstance(url, str) or not (_is_url(url) or url.startswith(PACKAGE_SCHEME)):
        raise SourcesError(f"{where}.url must be an http:// or https:// URL or {PACKAGE_SCHEME}<package>/<path>, "
                           f"got {url!r}")
    return RemoteFile(name=name, url=url, **checksums)


def parse_sources(block: Any, catalog: str = CATALOG_DIR) -> Sources:
    """Validate the ``sources`` block (mirror, retries, ...) with the catalog's files under ``datasets``."""
    if not isinstance(block, Mapping):
        raise SourcesError(f"sources must be a mapping, got {type(block).__name__}")
    try:
        settings = SourcesParams.model_validate({key: value for key, value in block.items() if key != "datasets"})
    except ValidationError as error:
        raise SourcesError(str(params_error(error, within=("sources",)))) from None
    raw_datasets = _require(block, "datasets", "sources")
    if not isinstance(raw_datasets, Mapping) or not raw_datasets:
        raise SourcesError(f"{catalog} must hold one <dataset>.yaml with a files list per dataset")
    datasets = {}
    for dataset, spec in raw_datasets.items():
        where = f"{catalog}/{dataset}.yaml"
        if not isinstance(spec, Mapping):
            raise SourcesError(f"{where} must be a mapping with a files list")
        files = _require(spec, "files", where)
        if not isinstance(files, list) or not files:
            raise SourcesError(f"{where}: files must be a non-empty list")
        parsed = tuple(_parse_file(entry, f"{where}: files[{i}]") for i, entry in enumerate(files))
        names = [f.name for f in parsed]
        if len(set(names)) != len(names):
            raise SourcesError(f"{where}: files has duplicate names: {names}")
        datasets[str(dataset)] = parsed
    return Sources(mirror=settings.mirror or None, retries=settings.retries, timeout_s=settings.timeout_s,
                   backoff_s=settings.backoff_s, datasets=datasets, catalog=catalog)


def load_sources(params_path: str | Path, catalog: str | Path | None = None) -> Sources:
    """Read and validate the ``sources`` block of a params file and the catalog directory
    (default: conf/sources beside the params file)."""
    path = Path(params_path)
    params = _read_yaml(path, "params file")
    if not isinstance(params, Mapping) or "sources" not in params:
        raise SourcesError(f"params file {path} has no top-level 'sources' block")
    catalog = Path(catalog) if catalog is not None else path.parent / CATALOG_DIR
    datasets = {entry.stem: _read_yaml(entry, "sources file") for entry in sorted(catalog.glob("*.yaml"))}
    return parse_sources({**params["sources"], "datasets": datasets}, str(catalog))


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SourcesError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as error:
        raise SourcesError(f"{what} {path} is not valid YAML: {error}") from None


def effective_mirror(configured: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The mirror to use: ``FIXMATCH_MIRROR`` if set and non-empty, else the configured one."""
    return environ.get(MIRROR_ENV) or configured or None


def file_digest(path: str | Path, kind: str) -> str:
    """Hex digest (``md5`` or ``sha256``) of a file, read in chunks."""
    digest = hashlib.new(kind, usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_mismatch(path: str | Path, remote: RemoteFile) -> str | None:
    """None if ``path`` matches every configured checksum, else a description of the mismatch."""
    for kind in ("md5", "sha256"):
        expected = getattr(remote, kind)
        if expected is None:
            continue
        actual = file_digest(path, kind)
        if actual != expected:
            return f"expected {kind} {expected}, got {actual}"
    return None


PACKAGE_SCHEME = "package://"


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _local_mirror(mirror: str) -> Path:
    if mirror.startswith("file://"):
        return Path(urllib.request.url2pathname(mirror[len("file://"):]))
    return Path(mirror)


def _package_file(url: str) -> Path:
    """The file behind ``package://<package>/<path>``: shipped inside an installed Python package."""
    package, _, inner = url[len(PACKAGE_SCHEME):].partition("/")
    try:
        location = importlib.resources.files(package).joinpath(inner)
    except ModuleNotFoundError as error:
        raise SourceUnreachable(f"{url}: package {package!r} is not installed") from error
    if not location.is_file():
        raise DownloadError(f"{url}: no file {inner!r} in the installed package {package!r}")
    return Path(str(location))


def _progress(name: str, total: int | None, initial: int) -> tqdm | LogProgress:
    return progress(total, name, unit="B", initial=initial, unit_scale=True)


def _copy_local(source: Path, part: Path) -> None:
    with open(source, "rb") as reader, open(part, "wb") as writer, _progress(source.name, source.stat().st_size, 0) as bar:
        while chunk := reader.read(CHUNK_BYTES):
            writer.write(chunk)
            bar.update(len(chunk))


def _body_offset(response: http.client.HTTPResponse, offset: int, part: Path, url: str) -> int:
    """The byte offset the response body starts at: ``offset`` for a matching 206, 0 for a 200.

    A 206 for any other range than the one asked for discards the partial file.
    """
    if response.status != 206:
        return 0
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if offset and match and int(match.group(1)) == offset:
        return offset
    part.unlink(missing_ok=True)
    content_range = response.headers.get("Content-Range")
    raise _Transient(f"unexpected partial answer (Content-Range {content_range!r}) to a resume at byte {offset} of {url}; restarting")


def _stream(url: str, part: Path, name: str, timeout_s: float, contacted: bool) -> None:
    """One attempt: fetch ``url`` into ``part``, resuming it if the server allows.

    Raises _Transient for failures worth retrying and DownloadError for the rest.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fixmatch-bench", "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416:
            part.unlink(missing_ok=True)
            raise _Transient(f"HTTP 416 for a resume at byte {offset} of {url}; restarting from scratch") from None
        if error.code >= 500 or error.code in (408, 429):
            raise _Transient(f"HTTP {error.code} {error.reason} from {url}") from None
        raise DownloadError(f"HTTP {error.code} {error.reason} for {url} (not retried)") from None
    except urllib.error.URLError as error:
        if not contacted:
            raise SourceUnreachable(f"could not reach {url} ({error.reason}); {MIRROR_HINT}") from None
        raise _Transient(f"could not reach {url} ({error.reason})") from None
    except (OSError, http.client.HTTPException) as error:
        raise _Transient(f"{type(error).__name__} while requesting {url}: {error}") from None
    with response:
        start = _body_offset(response, offset, part, url)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        received = start
        try:
            with open(part, "r+b" if start else "wb") as writer, _progress(name, total, start) as bar:
                writer.seek(start)
                writer.truncate()
                while chunk := response.read1(CHUNK_BYTES):  # read1: bytes received before a failure are kept
                    writer.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            raise _Transient(f"{type(error).__name__} after {received} bytes of {url}: {error}") from None
    if total is not None and received < total:
        raise _Transient(f"connection closed after {received} of {total} bytes of {url}")


def _download(url: str, part: Path, name: str, retries: int, timeout_s: float, backoff_s: float) -> None:
    contacted = False
    for attempt in range(retries + 1):
        try:
            _stream(url, part, name, timeout_s, contacted)
            return
        except _Transient as failure:
            contacted = True
            if attempt == retries:
                raise DownloadError(f"giving up on {name} after {retries + 1} attempts; last error: {failure}") from None
            wait = min(backoff_s * 2**attempt, MAX_BACKOFF_S)
            tqdm.write(f"{failure}; retrying in {wait:.1f} s ({attempt + 1}/{retries})")
            time.sleep(wait)


def fetch(
    remote: RemoteFile,
    directory: str | Path,
    *,
    mirror: str | None = None,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 1.0,
    partial_dir: str | Path | None = None,
) -> Path:
    """Make ``directory/<remote.name>`` a verified copy of ``remote``; return its path.

    A file already there with the right checksum is kept as it is. ``mirror`` is
    a base URL or a local directory holding the file under the same name; pass
    ``effective_mirror(...)`` so that ``FIXMATCH_MIRROR`` takes precedence.
    The partial file lives in ``partial_dir`` (default: ``directory``), on the
    same file system as ``directory``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / remote.name
    if target.exists():
        if checksum_mismatch(target, remote) is None:
            return target
        tqdm.write(f"{target} exists but fails its checksum; fetching it again")
        target.unlink()
    part = Path(partial_dir or directory) / f"{remote.name}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    if remote.url.startswith(PACKAGE_SCHEME):  # ships with an installed package: no network, no mirror
        source = remote.url
        _copy_local(_package_file(remote.url), part)
    elif mirror is None:
        source = remote.url
        _download(remote.url, part, remote.name, retries, timeout_s, backoff_s)
    elif _is_url(mirror):
        source = mirror.rstrip("/") + "/" + remote.name
        _download(source, part, remote.name, retries, timeout_s, backoff_s)
    else:
        local = _local_mirror(mirror)
        if not local.is_dir():
            raise SourceUnreachable(f"mirror {mirror!r} is neither an http(s) URL nor an existing directory; {MIRROR_HINT}")
        source = str(local / remote.name)
        if not (local / remote.name).is_file():
            raise DownloadError(f"{remote.name} is not in the mirror directory {local}")
        _copy_local(local / remote.name, part)
    mismatch = checksum_mismatch(part, remote)
    if mismatch is not None:
        part.unlink()
        raise ChecksumError(f"checksum mismatch for {remote.name} from {source}: {mismatch}; the bad file was deleted")
    os.replace(part, target)
    return target


def partial_dir_for(directory: str | Path) -> Path:
    """Where the download stage keeps partial files for ``directory``: ``<parent>/.partial/<name>``,
    beside its output folder rather than inside it."""
    directory = Path(directory)
    return directory.parent / ".partial" / directory.name


def fetch_dataset(sources: Sources, dataset: str, directory: str | Path, environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Fetch every file of ``dataset`` into ``directory`` (partial files in :func:`partial_dir_for`);
    return their paths in params order."""
    mirror = effective_mirror(sources.mirror, environ)
    partial = partial_dir_for(directory)
    paths = [
        fetch(remote, directory, mirror=mirror, retries=sources.retries, timeout_s=sources.timeout_s,
              backoff_s=sources.backoff_s, partial_dir=partial)
        for remote in sources.files(dataset)
    ]
    shutil.rmtree(partial, ignore_errors=True)
    return paths


__all__ = [
    "ChecksumError",
    "DownloadError",
    "MIRROR_ENV",
    "RemoteFile",
    "SourceUnreachable",
    "Sources",
    "SourcesError",
    "checksum_mismatch",
    "effective_mirror",
    "fetch",
    "fetch_dataset",
    "file_digest",
    "load_sources",
    "parse_sources",
]
