"""lbt_plugin.files: an interrupted save keeps the previous file; a load reads tensors and refuses anything else."""
import os
import pickle

import pytest
import torch

from lbt_plugin import files
from lbt_plugin.files import load_tensors, save_atomic


def test_a_crash_while_saving_keeps_the_last_good_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"step": 1}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_the_file_is_flushed_to_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    order = []
    monkeypatch.setattr(files.os, "fsync", lambda fd: order.append("fsync"))
    replace = files.os.replace
    monkeypatch.setattr(files.os, "replace", lambda a, b: (order.append("replace"), replace(a, b)))
    save_atomic({"x": torch.ones(2)}, tmp_path / "sub" / "a.pt")
    assert order == ["fsync", "replace"]
    assert torch.equal(load_tensors(tmp_path / "sub" / "a.pt")["x"], torch.ones(2))


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_load_tensors_refuses_a_pickle_payload_unrun_and_names_the_file(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pt"
    torch.save({"w": _Payload(marker)}, bad)
    with pytest.raises(ValueError, match=r"cannot read the cache .*bad\.pt \(it holds objects other than tensors "
                                         r"and plain containers: .*posix.system.*nothing in it was run\); delete it"):
        load_tensors(bad, "the cache", "delete it")
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump(_Payload(marker), f)
    with pytest.raises(ValueError, match="cannot read checkpoint .*nothing in it was run"):
        load_tensors(tmp_path / "raw.pkl")
    truncated = tmp_path / "truncated.pt"
    save_atomic({"x": torch.ones(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*truncated\.pt \(not a zip archive as torch\.save "
                                         r"writes: truncated, or another format"):
        load_tensors(truncated)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_tensors(tmp_path / "missing.pt")
