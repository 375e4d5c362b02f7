"""DirectorySource.wait: directories that appear late or are re-created are watched."""

import os
import shutil
import time

import pytest

from shoal.routing.source import DirectorySource

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

POD = "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nstatus: {{podIP: {ip}}}\n"


def test_overlay_created_after_start_wakes_the_watcher(tmp_path):
    cfg, overlay = tmp_path / "cfg", tmp_path / "overlay"
    cfg.mkdir()
    src = DirectorySource(cfg, overlay=overlay)
    try:
        src.load()
        overlay.mkdir()
        (overlay / "pods.yaml").write_text(POD.format(name="a", ip="10.0.0.1"))
        assert src.wait(5.0) is True
        assert [p.ips for p in src.load()[1]] == [("10.0.0.1",)]
        (overlay / "pods.yaml").write_text(POD.format(name="a", ip="10.0.0.22"))
        assert src.wait(5.0) is True            # and it is watched from then on
        assert [p.ips for p in src.load()[1]] == [("10.0.0.22",)]
    finally:
        src.close()


def test_recreated_directory_is_watched_again(tmp_path):
    cfg = tmp_path / "cfg"
    (cfg / "sub").mkdir(parents=True)
    src = DirectorySource(cfg)
    try:
        src.load()
        shutil.rmtree(cfg / "sub")
        assert src.wait(5.0) is True
        src.load()
        (cfg / "sub").mkdir()
        src.wait(0.3)                           # the parent saw the mkdir
        (cfg / "sub" / "p.yaml").write_text(POD.format(name="b", ip="10.0.0.2"))
        assert src.wait(5.0) is True
        assert [r.meta.name for r in src.load()[0].resources] == ["b"]
    finally:
        src.close()


def test_single_file_source_wakes_on_change(tmp_path):
    f = tmp_path / "mesh.yaml"
    f.write_text(POD.format(name="c", ip="10.0.0.3"))
    src = DirectorySource(f)                # inotify cannot watch a file as a directory
    try:
        src.load()
        assert src.wait(0.1) is False
        f.write_text(POD.format(name="c", ip="10.0.0.33"))
        assert src.wait(5.0) is True
        assert src.load()[0].resources[0].ips == ("10.0.0.33",)
    finally:
        src.close()


def test_rewrite_with_same_fingerprint_is_not_missed(tmp_path):
    """Same size, same inode, same mtime (a coarse-clock kernel, or a recycled inode):
    the cached parse must not hide the new content."""
    f = tmp_path / "mesh.yaml"
    stamp = time.time_ns() + 10**9           # as a coarse clock would: one shared mtime
    f.write_text(POD.format(name="d", ip="10.0.0.4"))
    os.utime(f, ns=(stamp, stamp))
    src = DirectorySource(tmp_path, use_inotify=False)
    first = src.load()[0].resources
    assert src.load()[0].resources[0] is first[0]     # unchanged: same objects, no re-parse
    with open(f, "r+") as fh:                          # in place: same inode, same size
        fh.write(POD.format(name="d", ip="10.0.0.5"))
    os.utime(f, ns=(stamp, stamp))
    assert src.load()[0].resources[0].ips == ("10.0.0.5",)
