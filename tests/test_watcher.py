"""FileWatch: content changes count; touches, identical saves and brief absences do not."""

from __future__ import annotations

import os

from modserver.server.watcher import FileWatch, content_digest


def watched(tmp_path, text="one", read=None):
    path = tmp_path / "module.py"
    path.write_text(text)
    watch = FileWatch()
    watch.track(str(path), read)
    return watch, path


def test_nothing_changed_nothing_reported(tmp_path):
    watch, _ = watched(tmp_path)
    assert watch.poll() == [] and watch.poll() == []


def test_a_content_change_is_reported_once(tmp_path):
    watch, path = watched(tmp_path)
    path.write_text("two")
    assert watch.poll() == [str(path)]
    assert watch.poll() == []


def test_a_touch_is_not_a_change(tmp_path):
    watch, path = watched(tmp_path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert watch.poll() == []


def test_saving_identical_content_is_not_a_change(tmp_path):
    watch, path = watched(tmp_path)
    path.unlink()
    path.write_text("one")  # a new inode, the same bytes
    assert watch.poll() == []


def test_a_briefly_missing_file_is_not_a_change(tmp_path):
    watch, path = watched(tmp_path)
    path.unlink()
    assert watch.poll() == []
    path.write_text("one")
    assert watch.poll() == []
    path.unlink()
    assert watch.poll() == []
    path.write_text("three")
    assert watch.poll() == [str(path)]


def test_a_save_between_reading_and_watching_is_caught(tmp_path):
    """The worker imported "one"; by the time the server watches, it is "two"."""
    watch, path = watched(tmp_path, text="two", read=content_digest(b"one"))
    assert watch.poll() == [str(path)]


def test_watching_from_what_was_read_ignores_an_unchanged_file(tmp_path):
    watch, _ = watched(tmp_path, text="one", read=content_digest(b"one"))
    assert watch.poll() == []


def test_a_file_that_appears_later_is_a_change(tmp_path):
    path = tmp_path / "extra.ini"
    watch = FileWatch()
    watch.track(str(path))
    assert watch.poll() == []
    path.write_text("gain = 1")
    assert watch.poll() == [str(path)]


def test_forgotten_files_are_not_looked_at(tmp_path):
    watch, path = watched(tmp_path)
    watch.forget(str(path))
    path.write_text("two")
    assert watch.poll() == [] and watch.paths == set()
