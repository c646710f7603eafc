"""scripts/setup_data.py and oft.setup.download against a local HTTP server on 127.0.0.1 (offline).

The server serves small archives built here from the task table (good, truncated, corrupt, wrong layout,
404, redirects); each test checks what lands on disk and the one error line a user would see.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from oft.cli import setup_data as setup_data_cli
from oft.setup import download
from oft.setup.layout import LayoutError, check_control_dataset
from oft.specs.subjects import PROMPTS_FILE, SUBJECTS
from oft.specs.tasks import TASKS, get_task
from tests.helpers.setup import REPO, Route, closed_port_url, error_line, server, zip_bytes

setup_data = setup_data_cli
__all__ = ["server"]  # the fixture, imported for pytest


def control_files(dataset_dir: str, prefix: str = "", n: int = 3, skip: str = "") -> dict[str, bytes]:
    """Every file the tasks stored in ``dataset_dir`` read, with ``n`` items per split (from ``TASKS``)."""
    files: dict[str, bytes] = {}
    for task in (t for t in TASKS.values() if t.dataset_dir == dataset_dir):
        for split in ("train", "val"):
            if task.caption_format == "json_list":
                entries = [{"image": f"{split}{i}.jpg", "prompt": f"face {i}"} for i in range(n)]
                text = json.dumps(entries)
            else:
                entries = [
                    {
                        "source": f"source/{split}{i}.png",
                        "target": f"target/{split}{i}.png",
                        "prompt": f"a scene {i}",
                    }
                    for i in range(n)
                ]
                text = "".join(json.dumps(e) + "\n" for e in entries)
            for full in (False, True):
                files[f"{task.split_subdir(split)}/{task.caption_name(split, full)}".lstrip("/")] = (
                    text.encode()
                )
            for entry in entries:
                for rel in task.item_files(entry, split):
                    files[rel] = f"{dataset_dir}:{rel}".encode() * 50
    return {f"{prefix}{name}": data for name, data in files.items() if not (skip and skip in name)}


def ade20k_zip(**kwargs) -> bytes:
    return zip_bytes(control_files("ADE20K", prefix=kwargs.pop("prefix", "ADE20K/"), **kwargs))


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """main() in-process, quiet and without waits between retries; returns (status, stdout, stderr)."""
    rc = setup_data.main(
        setup_data.parse_args([*argv, "--retry-wait", "0", "--timeout", "5", "--no-progress"])
    )
    out, err = capsys.readouterr()
    return rc, out, err


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(".unpack-*"))


@pytest.fixture
def unpinned_sd15(monkeypatch):
    """sd15 without its published size and SHA-256: the local server serves a small stand-in file."""
    source = setup_data.SOURCES["sd15"]
    monkeypatch.setitem(setup_data.SOURCES, "sd15", dataclasses.replace(source, sha256=None, size_bytes=None))


# ------------------------------------------------------------------------------------------ tests


def test_task_table_names_caption_files_and_items():
    assert get_task("canny1k").caption_file("train") == "COCO/train/prompt_train_blip_1k.json"
    assert get_task("canny50k").caption_file("val", full=True) == "COCO/val/prompt_val_blip_full.json"
    assert get_task("segm").caption_file("val") == "ADE20K/val/prompt_val_blip.json"
    landmark = get_task("landmark")
    assert landmark.caption_file("train") == "celebhq-text/prompt_train_blip.json"
    assert landmark.item_files({"image": "29970.jpg"}, "val") == (
        "celeba-hq-landmark2d_cond_512/29970.png",
        "celeba-hq-img/29970.jpg",
    )
    assert get_task("densepose").item_files(
        {"source": "source/7.png", "target": "target/7.png"}, "train"
    ) == ("train/densepose/7.png", "train/color/7.png")
    for task in TASKS.values():
        if task.setup_script:
            assert (REPO / task.setup_script).is_file(), task.setup_script


def test_setup_places_checked_dataset_and_second_run_is_a_noop(server, tmp_path, capsys):
    archive = ade20k_zip()
    server.routes["/ade.zip"] = Route(archive)
    (tmp_path / ".unpack-ADE20K-stale").mkdir()  # left by a killed run: must be discarded
    rc, out, _ = run(["ade20k", "--data-root", str(tmp_path), "--url", server.url("/ade.zip")], capsys)
    assert rc == 0
    assert "ready" in out and hashlib.sha256(archive).hexdigest() in out
    check_control_dataset(tmp_path / "ADE20K", "ADE20K")
    assert (tmp_path / "ADE20K/val/segm/val2.png").read_bytes() == b"ADE20K:val/segm/val2.png" * 50
    assert not (tmp_path / ".downloads/ade20k.zip").exists() and leftovers(tmp_path) == []
    manifest = json.loads((tmp_path / download.MANIFEST).read_text())
    assert manifest["ade20k.zip"] == {
        "url": server.url("/ade.zip"),
        "size": len(archive),
        "sha256": hashlib.sha256(archive).hexdigest(),
    }

    requests = len(server.log)
    rc, out, _ = run(["ade20k", "--data-root", str(tmp_path), "--url", server.url("/ade.zip")], capsys)
    assert rc == 0 and "nothing to do" in out
    assert len(server.log) == requests  # no network at all on the second run


def test_interrupted_download_resumes_from_where_it_stopped(server, tmp_path, capsys):
    archive = ade20k_zip()
    cut = len(archive) // 3
    server.routes["/ade.zip"] = Route(archive, truncate=1, cut=cut)
    args = ["ade20k", "--data-root", str(tmp_path), "--url", server.url("/ade.zip"), "--retries", "0"]
    rc, _, err = run(args, capsys)
    assert rc == 1
    line = error_line(err)
    assert "stopped at" in line and "rerun the same command to resume" in line
    assert (tmp_path / ".downloads/ade20k.zip.part").stat().st_size == cut
    assert not (tmp_path / "ADE20K").exists()

    rc, _, _ = run(args, capsys)
    assert rc == 0
    assert server.log[-1][1].get("Range") == f"bytes={cut}-"  # only the rest was asked for
    sha = json.loads((tmp_path / download.MANIFEST).read_text())["ade20k.zip"]["sha256"]
    assert sha == hashlib.sha256(archive).hexdigest()  # the stitched file is the archive, byte for byte
    check_control_dataset(tmp_path / "ADE20K", "ADE20K")


def test_retries_resume_within_one_run(server, tmp_path):
    body = bytes(range(256)) * 400
    server.routes["/f.bin"] = Route(body, truncate=2, cut=10_000)
    dest = tmp_path / "f.bin"
    download.fetch(server.url("/f.bin"), dest, retries=2, retry_wait=0, progress=False)
    assert dest.read_bytes() == body and not (tmp_path / "f.bin.part").exists()
    assert [h.get("Range") for _, h in server.log] == [None, "bytes=10000-", "bytes=20000-"]


def test_server_errors_are_retried(server, tmp_path):
    server.routes["/f.bin"] = Route(b"y" * 3000, errors=[503, 502])
    download.fetch(server.url("/f.bin"), tmp_path / "f.bin", retries=2, retry_wait=0, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == b"y" * 3000 and len(server.log) == 3


def test_complete_part_file_is_accepted_on_416(server, tmp_path):
    body = b"x" * 5000
    server.routes["/f.bin"] = Route(body)
    (tmp_path / "f.bin.part").write_bytes(body)  # killed after the last byte, before the rename
    download.fetch(server.url("/f.bin"), tmp_path / "f.bin", retries=0, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == body


def _corrupt_crc() -> bytes:
    """A stored (uncompressed) archive whose member data was altered: the zip structure is fine, the CRC is not."""
    data = bytearray(zip_bytes(control_files("ADE20K", prefix="ADE20K/"), compress=zipfile.ZIP_STORED))
    pos = data.index(b"ADE20K:train/color/train0.png")
    data[pos] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize(
    "case, body, expected",
    [
        ("404", None, ["404", "--url", "by hand"]),
        ("login", Route(errors=[401]), ["401", "--token", "HF_TOKEN"]),
        ("no network", None, ["cannot download from 127.0.0.1", "network", "rerun"]),
        ("not a zip", b"<html>Service unavailable</html>" * 20, ["not a valid zip archive", "rerun"]),
        ("bad crc", _corrupt_crc(), ["corrupt archive", "rerun"]),
        ("wrong layout", ade20k_zip(skip="val/segm"), ["layout", "ADE20K/val/segm/val0.png", "kept at"]),
        (
            "no captions",
            ade20k_zip(skip="prompt_train_blip.json"),
            ["missing ADE20K/train/prompt_train_blip.json"],
        ),
    ],
)
def test_each_failure_is_one_clear_line_and_leaves_nothing_half_done(
    server, tmp_path, capsys, case, body, expected
):
    if body is not None:
        server.routes["/ade.zip"] = body if isinstance(body, Route) else Route(body)
    url = closed_port_url() if case == "no network" else server.url("/ade.zip")
    rc, out, err = run(["ade20k", "--data-root", str(tmp_path), "--url", url, "--retries", "1"], capsys)
    assert rc == 1 and out == ""
    line = error_line(err)
    for part in expected:
        assert part in line, line
    assert not (tmp_path / "ADE20K").exists() and leftovers(tmp_path) == []
    # A bad download is deleted so that a rerun fetches it again; a sound one with the wrong layout is kept.
    assert (tmp_path / ".downloads/ade20k.zip").exists() == (case in ("wrong layout", "no captions"))


def test_checksum_recorded_in_manifest_is_enforced(server, tmp_path, capsys):
    server.routes["/ade.zip"] = Route(ade20k_zip())
    (tmp_path / download.MANIFEST).write_text(json.dumps({"ade20k.zip": {"sha256": "0" * 64}}))
    rc, _, err = run(["ade20k", "--data-root", str(tmp_path), "--url", server.url("/ade.zip")], capsys)
    assert rc == 1 and "SHA-256" in error_line(err)
    assert not (tmp_path / ".downloads/ade20k.zip").exists() and not (tmp_path / "ADE20K").exists()


def test_disk_space_is_checked_before_writing(server, tmp_path, capsys, monkeypatch):
    server.routes["/ade.zip"] = Route(ade20k_zip())
    monkeypatch.setattr(
        download.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 100)
    )
    rc, _, err = run(["ade20k", "--data-root", str(tmp_path), "--url", server.url("/ade.zip")], capsys)
    assert rc == 1 and "not enough disk space" in error_line(err) and "--data-root" in error_line(err)


def test_disk_full_while_writing_is_reported(server, tmp_path, capsys, monkeypatch):
    server.routes["/ade.zip"] = Route(ade20k_zip())

    class FullDisk(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(download, "open", lambda path, mode: FullDisk(), raising=False)
    rc, _, err = run(["ade20k", "--data-root", str(tmp_path), "--url", server.url("/ade.zip")], capsys)
    assert rc == 1 and "disk full" in error_line(err)


def test_an_empty_existing_folder_is_filled(server, tmp_path, capsys):
    server.routes["/ade.zip"] = Route(ade20k_zip())
    (tmp_path / "ADE20K").mkdir()
    rc, _, _ = run(["ade20k", "--data-root", str(tmp_path), "--url", server.url("/ade.zip")], capsys)
    assert rc == 0 and check_control_dataset(tmp_path / "ADE20K", "ADE20K")


def test_incomplete_existing_folder_is_left_untouched(server, tmp_path, capsys):
    (tmp_path / "ADE20K/train").mkdir(parents=True)
    (tmp_path / "ADE20K/train/mine.txt").write_text("user data")
    rc, _, err = run(["ade20k", "--data-root", str(tmp_path), "--url", server.url("/ade.zip")], capsys)
    assert rc == 1 and "exists but is incomplete" in error_line(err)
    assert (tmp_path / "ADE20K/train/mine.txt").read_text() == "user data" and server.log == []


@pytest.mark.parametrize("prefix", ["ADE20K/", "release/ADE20K/", "release/", ""])
def test_archive_wrappers_are_recognised_by_their_layout(tmp_path, capsys, prefix):
    """A file saved by hand in .downloads/ is verified and unpacked without any network."""
    (tmp_path / ".downloads").mkdir()
    (tmp_path / ".downloads/ade20k.zip").write_bytes(ade20k_zip(prefix=prefix))
    rc, _, _ = run(["ade20k", "--data-root", str(tmp_path), "--url", closed_port_url()], capsys)
    assert rc == 0
    assert check_control_dataset(tmp_path / "ADE20K", "ADE20K").startswith("ADE20K for segm")


def test_data_root_comes_from_the_environment(server, tmp_path, capsys, monkeypatch):
    server.routes["/ade.zip"] = Route(ade20k_zip())
    monkeypatch.setenv("OFT_DATA_ROOT", str(tmp_path / "shared"))
    rc, _, _ = run(["ade20k", "--url", server.url("/ade.zip")], capsys)
    assert rc == 0 and (tmp_path / "shared/ADE20K/train/prompt_train_blip.json").is_file()


def dreambooth_files(prefix: str) -> dict[str, bytes]:
    files = {f"{prefix}{PROMPTS_FILE}": b"Classes\nbackpack,backpack\n"}
    files.update({f"{prefix}{subject}/0{i}.jpg": b"jpeg" for subject, _ in SUBJECTS for i in range(2)})
    files[f"{prefix.rsplit('dataset/', 1)[0]}README.md"] = b"readme"
    return files


def test_dreambooth_from_the_github_archive(server, tmp_path, capsys):
    server.routes["/main.zip"] = Route(zip_bytes(dreambooth_files("dreambooth-main/dataset/")))
    rc, out, _ = run(
        ["dreambooth", "--data-root", str(tmp_path), "--method", "zip", "--url", server.url("/main.zip")],
        capsys,
    )
    assert rc == 0 and "30 subjects, 60 images" in out
    assert sorted(p.name for p in (tmp_path / "dreambooth").iterdir()) == sorted(
        [s for s, _ in SUBJECTS] + [PROMPTS_FILE]
    )


def test_dreambooth_from_git_clone(tmp_path, capsys):
    repo = tmp_path / "upstream"
    for name, data in dreambooth_files("dataset/").items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "data"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=env)
    source = download.Source(**{**vars(setup_data.SOURCES["dreambooth"]), "git_url": repo.as_uri()})
    summary = download.setup(source, tmp_path / "data", method="git", progress=False)
    assert "30 subjects" in summary and (tmp_path / "data/dreambooth/dog8/00.jpg").read_bytes() == b"jpeg"
    assert not (tmp_path / "data/dreambooth/README.md").exists() and leftovers(tmp_path / "data") == []


def test_dreambooth_layout_check_names_the_missing_subject(tmp_path):
    files = dreambooth_files("")
    for name, data in files.items():
        if not name.startswith("wolf_plushie/"):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(data)
    with pytest.raises(LayoutError, match="wolf_plushie"):
        setup_data.SOURCES["dreambooth"].check(tmp_path)


def test_model_download_uses_mirrors_and_sends_the_token_only_to_the_first_host(
    server, tmp_path, capsys, unpinned_sd15
):
    ckpt = zip_bytes({"archive/data.pkl": b"\x80\x02}q\x00." * 100})  # PyTorch checkpoints are zip files
    server.routes["/hf/v1-5-pruned.ckpt"] = Route(redirect="/cdn/signed")
    server.routes["/cdn/signed"] = Route(ckpt)
    rc, out, _ = run(
        [
            "sd15",
            "--models-root",
            str(tmp_path),
            "--token",
            "secret",
            "--url",
            server.url("/gone.ckpt"),
            "--url",
            server.url("/hf/v1-5-pruned.ckpt"),
        ],
        capsys,
    )
    assert rc == 0 and "v1-5-pruned.ckpt" in out
    assert (tmp_path / "v1-5-pruned.ckpt").read_bytes() == ckpt
    headers = {path: h for path, h in server.log}
    assert headers["/hf/v1-5-pruned.ckpt"]["Authorization"] == "Bearer secret"
    assert "Authorization" not in headers["/cdn/signed"]  # the signed CDN link gets no second credential


def test_model_failure_says_how_to_get_the_file_by_hand(server, tmp_path, capsys, unpinned_sd15):
    server.routes["/v1-5-pruned.ckpt"] = Route(b"<html>log in to continue</html>")
    rc, _, err = run(
        ["sd15", "--models-root", str(tmp_path), "--url", server.url("/v1-5-pruned.ckpt")], capsys
    )
    line = error_line(err)
    assert rc == 1 and "not a PyTorch checkpoint" in line
    assert f"save it as {tmp_path / 'v1-5-pruned.ckpt'}" in line
    assert not (tmp_path / "v1-5-pruned.ckpt").exists()


def test_hf_token_from_the_environment_only_goes_to_hugging_face(
    server, tmp_path, capsys, monkeypatch, unpinned_sd15
):
    ckpt = zip_bytes({"archive/data.pkl": b"weights"})
    server.routes["/v1-5-pruned.ckpt"] = Route(ckpt)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    rc, _, _ = run(["sd15", "--models-root", str(tmp_path), "--url", server.url("/v1-5-pruned.ckpt")], capsys)
    assert rc == 0 and "Authorization" not in server.log[0][1]  # 127.0.0.1 is not huggingface.co
    assert download._host_matches("https://huggingface.co/x", setup_data.HF_HOSTS)
    assert download._host_matches("https://cdn-lfs.hf.co/x", setup_data.HF_HOSTS)
    assert not download._host_matches("https://huggingface.co.evil.org/x", setup_data.HF_HOSTS)


def test_a_second_concurrent_setup_is_refused(server, tmp_path, capsys):
    import fcntl

    (tmp_path / ".downloads").mkdir()
    with open(tmp_path / ".downloads/ade20k.zip.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        rc, _, err = run(["ade20k", "--data-root", str(tmp_path), "--url", server.url("/ade.zip")], capsys)
    assert rc == 1 and "another setup of ade20k is running" in error_line(err) and server.log == []


@pytest.mark.parametrize(
    "script", sorted(p.name for p in (REPO / "scripts").glob("*.sh") if not p.name.startswith("_"))
)  # _python.sh is sourced by the others, not run
def test_every_script_explains_itself(script):
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / script), "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "--data-root" in proc.stdout


def test_pinned_downloads_refuse_a_wrong_size_or_hash(server, tmp_path, capsys, monkeypatch):
    """sd15's published size and SHA-256 are pinned: a download that differs is refused and deleted, and the
    pins outrank what a manifest recorded."""
    stand_in = zip_bytes({"archive/data.pkl": b"\x80\x02}q\x00." * 100})
    server.routes["/v1-5-pruned.ckpt"] = Route(stand_in)
    argv = ["sd15", "--models-root", str(tmp_path), "--url", server.url("/v1-5-pruned.ckpt")]
    source = setup_data.SOURCES["sd15"]
    assert source.size_bytes == 7_703_807_346 and source.sha256.startswith("e1441589a6f3")

    def refused(expected: str) -> None:
        rc, _, err = run(argv, capsys)
        line = error_line(err)
        assert rc == 1 and expected in line and "the published value" in line, line
        assert not (tmp_path / "v1-5-pruned.ckpt").exists()
        assert not (tmp_path / ".downloads/v1-5-pruned.ckpt").exists()  # deleted: a rerun fetches it again

    refused(f"has {len(stand_in):,} bytes but 7,703,807,346 is")  # the size is checked before the checksum
    monkeypatch.setitem(setup_data.SOURCES, "sd15", dataclasses.replace(source, size_bytes=len(stand_in)))
    refused("but e1441589a6f3… is")
    digest = hashlib.sha256(stand_in).hexdigest()
    pinned = dataclasses.replace(source, size_bytes=len(stand_in), sha256=digest)
    monkeypatch.setitem(setup_data.SOURCES, "sd15", pinned)
    (tmp_path / download.MANIFEST).write_text(
        json.dumps({"v1-5-pruned.ckpt": {"size": 1, "sha256": "0" * 64}})
    )
    rc, out, _ = run(argv, capsys)
    assert rc == 0 and digest in out and (tmp_path / "v1-5-pruned.ckpt").read_bytes() == stand_in


def test_unpinned_sources_are_held_to_the_size_recorded_on_first_use(server, tmp_path, capsys):
    archive = ade20k_zip()
    server.routes["/ade.zip"] = Route(archive)
    assert setup_data.SOURCES["ade20k"].sha256 is None  # the keeper archives publish no checksum
    record = {"size": len(archive) + 1, "sha256": hashlib.sha256(archive).hexdigest()}
    (tmp_path / download.MANIFEST).write_text(json.dumps({"ade20k.zip": record}))
    rc, _, err = run(["ade20k", "--data-root", str(tmp_path), "--url", server.url("/ade.zip")], capsys)
    line = error_line(err)
    assert rc == 1 and f"has {len(archive):,} bytes but {len(archive) + 1:,} was recorded" in line
    assert not (tmp_path / "ADE20K").exists()


def test_help_says_which_sources_are_pinned(capsys):
    with pytest.raises(SystemExit):
        setup_data.parse_args(["--help"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    for name, source in setup_data.SOURCES.items():
        expected = "pinned SHA-256" if source.sha256 else "trust on first use"
        assert expected in lines[name], lines[name]
    assert {n for n, s in setup_data.SOURCES.items() if s.sha256} == {
        "sd15",
        "coco_train2017",
        "coco_val2017",
        "coco_annotations",
    }
