"""Downloader tests: real HTTP on 127.0.0.1 with injected faults, local mirrors, the stage CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from miniature_datasets import UNREACHABLE_BASE, md5_of, write_miniature, write_params
from miniature_server import closed_port_url, http_server  # noqa: F401  (fixture)

from fixmatch_bench.data.download import (
    MIRROR_ENV,
    ChecksumError,
    DownloadError,
    RemoteFile,
    SourcesError,
    SourceUnreachable,
    effective_mirror,
    fetch,
    fetch_dataset,
    load_sources,
    parse_sources,
)
from fixmatch_bench.data.raw_formats import READERS

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "params.yaml"
CATALOG = REPO / "conf" / "sources"  # the one place URLs and checksums live
NAME = "cifar-10-python.tar.gz"


def _remote(sources: dict, url: str | None = None) -> RemoteFile:
    entry = sources["datasets"]["cifar10"]["files"][0]
    return RemoteFile(name=entry["name"], url=url or entry["url"], md5=entry["md5"])


def _fetch(remote: RemoteFile, directory: Path, **kwargs) -> Path:
    return fetch(remote, directory, **{"retries": 3, "timeout_s": 10, "backoff_s": 0.01, **kwargs})


@pytest.fixture
def served(http_server):  # noqa: F811
    """The server plus the miniature CIFAR-10 it serves and its sources block."""
    sources = write_miniature("cifar10", http_server.directory, base_url=http_server.url)
    return http_server, sources


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- the sources block -------------------------------------------------------


def test_fixture_block_parses_with_published_md5s_and_a_reader_per_dataset():
    sources = load_sources(FIXTURE, CATALOG)
    assert set(sources.datasets) == set(READERS) | {"digits"}
    assert sources.mirror is None and sources.retries == 5 and sources.timeout_s == 60.0 and sources.backoff_s == 1.0
    assert sources.files("cifar10")[0] == RemoteFile(
        "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"
    )
    assert [f.name for f in sources.files("svhn")] == ["train_32x32.mat", "test_32x32.mat"]
    assert [f.md5 for f in sources.files("svhn_extra")][2] == "a93ce644f1a588dc4d68dda5feec44a7"
    assert sources.files("stl10")[0].md5 == "91f7769df0f17e558f3565bffb0c7dfb"


FIRST = "conf/sources/cifar10.yaml: files[0]"


def _first_file(block: dict) -> dict:
    return block["datasets"]["cifar10"]["files"][0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.update(retries=-1), "invalid params: sources.retries = -1 (must be an integer in [0, inf))"),
        (lambda b: b.update(timeout_s=0), "invalid params: sources.timeout_s = 0 (must be a number in (0.0, inf))"),
        (lambda b: b.update(mirror=3), "invalid params: sources.mirror = 3 (input should be a valid string)"),
        (lambda b: b.update(datasets={}), "conf/sources must hold one <dataset>.yaml with a files list per dataset"),
        (lambda b: _first_file(b).update(md5="xyz"), f"{FIRST}.md5 must be a hexadecimal md5 digest, got 'xyz'"),
        (lambda b: _first_file(b).update(name="../x"), f"{FIRST}.name must be a plain file name, got '../x'"),
        (lambda b: _first_file(b).update(sha1="ab"), f"{FIRST} has unknown keys ['sha1']"),
        (lambda b: _first_file(b).update(url="ftp://x/y"), f"{FIRST}.url must be an http:// or https:// URL or package://<package>/<path>, got 'ftp://x/y'"),
        (lambda b: b["datasets"]["cifar10"].update(files=[]), "conf/sources/cifar10.yaml: files must be a non-empty list"),
    ],
)
def test_malformed_sources_are_rejected_with_the_key_named(change, message):
    block = {**yaml.safe_load(FIXTURE.read_text())["sources"],
             "datasets": {path.stem: yaml.safe_load(path.read_text()) for path in CATALOG.glob("*.yaml")}}
    change(block)
    with pytest.raises(SourcesError) as error:
        parse_sources(block)
    assert message in str(error.value)


def test_unknown_dataset_and_missing_params_file(tmp_path):
    with pytest.raises(SourcesError, match=r"dataset 'mnist' has no .*conf/sources/mnist.yaml; configured: \['cifar10'"):
        load_sources(FIXTURE, CATALOG).files("mnist")
    with pytest.raises(SourcesError, match="params file .*nope.yaml does not exist"):
        load_sources(tmp_path / "nope.yaml", CATALOG)
    (tmp_path / "p.yaml").write_text("train: {}\n")
    with pytest.raises(SourcesError, match="has no top-level 'sources' block"):
        load_sources(tmp_path / "p.yaml", CATALOG)


def test_environment_mirror_overrides_params():
    assert effective_mirror("/params/dir", {MIRROR_ENV: "http://m/"}) == "http://m/"
    assert effective_mirror("/params/dir", {MIRROR_ENV: ""}) == "/params/dir"
    assert effective_mirror(None, {}) is None


# --- HTTP --------------------------------------------------------------------


def test_plain_download_verifies_and_renames_into_place(served, tmp_path):
    server, sources = served
    target = _fetch(_remote(sources), tmp_path / "raw")
    assert target == tmp_path / "raw" / NAME
    assert target.read_bytes() == (server.directory / NAME).read_bytes()
    assert _leftovers(tmp_path / "raw") == [NAME]
    assert [(r.name, r.range, r.status) for r in server.requests] == [(NAME, None, 200)]


def test_a_present_file_with_the_right_checksum_is_not_fetched_again(served, tmp_path):
    server, sources = served
    _fetch(_remote(sources), tmp_path / "raw")
    _fetch(_remote(sources), tmp_path / "raw")
    assert len(server.requests) == 1


def test_a_present_file_with_a_wrong_checksum_is_fetched_again(served, tmp_path):
    server, sources = served
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / NAME).write_bytes(b"stale")
    target = _fetch(_remote(sources), tmp_path / "raw")
    assert md5_of(target) == _remote(sources).md5
    assert len(server.requests) == 1


def test_unreachable_server_fails_fast_naming_the_url_and_the_mirror_settings(tmp_path):
    url = closed_port_url() + NAME
    remote = RemoteFile(NAME, url, "0" * 32)
    with pytest.raises(SourceUnreachable) as error:
        _fetch(remote, tmp_path / "raw", backoff_s=1000)  # a retry would sleep for ever
    message = str(error.value)
    assert message.startswith(f"could not reach {url} (")
    assert "the FIXMATCH_MIRROR environment variable, `dvc exp run -S sources.mirror=...`" in message
    assert _leftovers(tmp_path / "raw") == []


def test_404_is_not_retried_and_names_the_url(served, tmp_path):
    server, sources = served
    server.faults.missing.add(NAME)
    with pytest.raises(DownloadError) as error:
        _fetch(_remote(sources), tmp_path / "raw")
    assert str(error.value) == f"HTTP 404 Not Found for {server.url}{NAME} (not retried)"
    assert [r.status for r in server.requests] == [404]
    assert _leftovers(tmp_path / "raw") == []


def test_connection_dropped_mid_file_is_resumed_with_a_range_request(served, tmp_path):
    server, sources = served
    server.faults.drop_after[NAME] = 1000
    target = _fetch(_remote(sources), tmp_path / "raw")
    assert md5_of(target) == _remote(sources).md5
    assert [(r.range, r.status) for r in server.requests] == [(None, 200), ("bytes=1000-", 206)]
    assert _leftovers(tmp_path / "raw") == [NAME]


def test_connection_reset_mid_file_is_resumed(served, tmp_path):
    server, sources = served
    server.faults.reset_after[NAME] = 2000
    target = _fetch(_remote(sources), tmp_path / "raw")
    assert md5_of(target) == _remote(sources).md5
    assert [(r.range, r.status) for r in server.requests] == [(None, 200), ("bytes=2000-", 206)]


def test_a_stalled_transfer_times_out_and_is_resumed(served, tmp_path):
    server, sources = served
    server.faults.stall_after[NAME] = 1500
    target = _fetch(_remote(sources), tmp_path / "raw", timeout_s=0.2)
    assert md5_of(target) == _remote(sources).md5
    assert [(r.range, r.status) for r in server.requests] == [(None, 200), ("bytes=1500-", 206)]


def test_without_range_support_a_dropped_download_restarts_from_zero(served, tmp_path):
    server, sources = served
    server.faults.ignore_range = True
    server.faults.drop_after[NAME] = 1000
    target = _fetch(_remote(sources), tmp_path / "raw")
    assert md5_of(target) == _remote(sources).md5
    assert [(r.range, r.status) for r in server.requests] == [(None, 200), ("bytes=1000-", 200)]


def test_a_partial_file_left_by_an_earlier_run_is_resumed(served, tmp_path):
    server, sources = served
    (tmp_path / "raw").mkdir()
    data = (server.directory / NAME).read_bytes()
    (tmp_path / "raw" / f"{NAME}.part").write_bytes(data[:777])
    target = _fetch(_remote(sources), tmp_path / "raw")
    assert target.read_bytes() == data
    assert [(r.range, r.status) for r in server.requests] == [("bytes=777-", 206)]


def test_a_partial_file_past_the_end_is_discarded_after_416(served, tmp_path):
    server, sources = served
    (tmp_path / "raw").mkdir()
    data = (server.directory / NAME).read_bytes()
    (tmp_path / "raw" / f"{NAME}.part").write_bytes(data + b"junk")
    target = _fetch(_remote(sources), tmp_path / "raw")
    assert target.read_bytes() == data
    assert [(r.range, r.status) for r in server.requests] == [(f"bytes={len(data) + 4}-", 416), (None, 200)]


def test_server_errors_are_retried_with_backoff(served, tmp_path):
    server, sources = served
    server.faults.unavailable[NAME] = 2
    _fetch(_remote(sources), tmp_path / "raw")
    assert [r.status for r in server.requests] == [503, 503, 200]


def test_retries_are_bounded(served, tmp_path):
    server, sources = served
    server.faults.unavailable[NAME] = 10
    with pytest.raises(DownloadError, match=rf"giving up on {NAME} after 3 attempts; last error: HTTP 503 Service Unavailable"):
        _fetch(_remote(sources), tmp_path / "raw", retries=2)
    assert len(server.requests) == 3


def test_corrupted_byte_fails_the_checksum_and_deletes_the_file(served, tmp_path):
    server, sources = served
    server.faults.corrupt[NAME] = 500
    corrupted = bytearray((server.directory / NAME).read_bytes())
    corrupted[500] ^= 0xFF
    actual = hashlib.md5(corrupted).hexdigest()
    expected = _remote(sources).md5
    with pytest.raises(ChecksumError) as error:
        _fetch(_remote(sources), tmp_path / "raw")
    assert str(error.value) == (
        f"checksum mismatch for {NAME} from {server.url}{NAME}: expected md5 {expected}, got {actual}; the bad file was deleted"
    )
    assert _leftovers(tmp_path / "raw") == []


def test_sha256_is_checked_when_configured(served, tmp_path):
    server, sources = served
    remote = RemoteFile(NAME, _remote(sources).url, _remote(sources).md5, sha256="0" * 64)
    with pytest.raises(ChecksumError, match="expected sha256 0{64}, got [0-9a-f]{64}"):
        _fetch(remote, tmp_path / "raw")


# --- mirrors -----------------------------------------------------------------


def test_http_mirror_replaces_the_url(served, tmp_path):
    server, sources = served
    remote = _remote(sources, url=UNREACHABLE_BASE + NAME)
    target = _fetch(remote, tmp_path / "raw", mirror=server.url.rstrip("/"))
    assert md5_of(target) == remote.md5
    assert [r.name for r in server.requests] == [NAME]


def test_local_directory_mirror_is_copied_and_verified(tmp_path):
    sources = parse_sources(write_miniature("cifar10", tmp_path / "mirror"))
    assert sources.mirror == str(tmp_path / "mirror")
    [target] = fetch_dataset(sources, "cifar10", tmp_path / "raw", environ={})
    assert target.read_bytes() == (tmp_path / "mirror" / NAME).read_bytes()
    (tmp_path / "mirror" / NAME).write_bytes(b"tampered")
    target.unlink()
    with pytest.raises(ChecksumError, match=f"checksum mismatch for {NAME} from {tmp_path / 'mirror' / NAME}: expected md5"):
        fetch_dataset(sources, "cifar10", tmp_path / "raw", environ={})
    assert _leftovers(tmp_path / "raw") == []


def test_local_mirror_errors_name_the_directory(tmp_path):
    remote = RemoteFile(NAME, UNREACHABLE_BASE + NAME, "0" * 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DownloadError, match=f"{NAME} is not in the mirror directory {tmp_path / 'empty'}"):
        _fetch(remote, tmp_path / "raw", mirror=str(tmp_path / "empty"))
    with pytest.raises(SourceUnreachable, match="mirror '.*nowhere' is neither an http\\(s\\) URL nor an existing directory"):
        _fetch(remote, tmp_path / "raw", mirror=str(tmp_path / "nowhere"))


def test_environment_mirror_wins_over_the_params_mirror(tmp_path):
    sources = parse_sources({**write_miniature("cifar10", tmp_path / "good"), "mirror": str(tmp_path / "nowhere")})
    [target] = fetch_dataset(sources, "cifar10", tmp_path / "raw", environ={MIRROR_ENV: str(tmp_path / "good")})
    assert md5_of(target) == sources.files("cifar10")[0].md5


# --- the stage script --------------------------------------------------------


def _run_download(params: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != MIRROR_ENV} | (env or {})
    return subprocess.run(
        [sys.executable, str(REPO / "pipeline" / "download.py"), "--dataset", "cifar10", "--params", str(params), "--out", str(out)],
        capture_output=True, text=True, env=environ, timeout=120,
    )


def test_download_stage_over_http(served, tmp_path):
    server, sources = served
    result = _run_download(write_params(tmp_path / "params.yaml", sources), tmp_path / "raw")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'raw' / NAME}: checksum ok\n"
    assert md5_of(tmp_path / "raw" / NAME) == _remote(sources).md5


def test_download_stage_takes_the_mirror_from_the_environment(tmp_path):
    sources = write_miniature("cifar10", tmp_path / "mirror") | {"mirror": None}
    result = _run_download(write_params(tmp_path / "params.yaml", sources), tmp_path / "raw", {MIRROR_ENV: str(tmp_path / "mirror")})
    assert result.returncode == 0, result.stderr
    assert md5_of(tmp_path / "raw" / NAME) == sources["datasets"]["cifar10"]["files"][0]["md5"]


def test_download_stage_without_network_prints_one_line_and_fails(tmp_path):
    sources = write_miniature("cifar10", tmp_path / "unused", base_url=closed_port_url())
    result = _run_download(write_params(tmp_path / "params.yaml", sources), tmp_path / "raw")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    url = sources["datasets"]["cifar10"]["files"][0]["url"]
    assert result.stderr.startswith(f"download cifar10: error: could not reach {url} (")
    assert "FIXMATCH_MIRROR" in result.stderr and "sources.mirror" in result.stderr


def test_download_stage_with_a_bad_params_file_prints_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("sources: {retries: -2, datasets: {}}\n")
    result = _run_download(tmp_path / "params.yaml", tmp_path / "raw")
    assert result.returncode == 1
    assert result.stderr == "download cifar10: error: invalid params: sources.retries = -2 (must be an integer in [0, inf))\n"


def test_a_file_shipped_inside_an_installed_package_is_copied_and_verified(tmp_path):
    digits = load_sources(FIXTURE, CATALOG).files("digits")[0]
    path = fetch(digits, tmp_path)
    assert path == tmp_path / "digits.csv.gz" and path.stat().st_size > 0
    wrong = RemoteFile(digits.name, digits.url, "0" * 32)
    with pytest.raises(ChecksumError, match="checksum mismatch for digits.csv.gz from package://sklearn"):
        fetch(wrong, tmp_path / "other")
    with pytest.raises(DownloadError, match="no file 'nope.csv' in the installed package 'sklearn'"):
        fetch(RemoteFile("nope.csv", "package://sklearn/nope.csv", "0" * 32), tmp_path)
