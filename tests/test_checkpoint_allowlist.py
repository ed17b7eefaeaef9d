"""The numpy allow-list of safe checkpoint loading: same on every supported torch, for one load only."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch

from gcnet.checkpoint import CheckpointError, read_checkpoint


def _allowed() -> set:
    """The allow-list as a set: torch >= 2.5 keeps a set, so its list order is not stable."""
    return set(torch.serialization.get_safe_globals())


def _numpy_file(path, zipfile: bool = False):
    meta = {"best": np.float64(0.5), "ids": np.arange(4, dtype=np.int64), "dt": np.dtype("f8")}
    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": meta}, path, _use_new_zipfile_serialization=zipfile)
    return path


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_allow_list_is_restored_after_load_and_after_error(tmp_path, zipfile):
    before = _allowed()
    _, meta = read_checkpoint(_numpy_file(tmp_path / "np.pth", zipfile))
    assert meta["best"] == 0.5 and meta["ids"].tolist() == [0, 1, 2, 3] and meta["dt"] == np.float64
    assert _allowed() == before
    # the extras were for that one load: a plain weights_only load still refuses numpy metadata
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "np.pth", weights_only=True)
    (tmp_path / "bad.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "bad.pth")
    assert _allowed() == before


def test_entries_allowed_by_the_caller_stay_allowed(tmp_path):
    before = list(torch.serialization.get_safe_globals())
    torch.serialization.add_safe_globals([np.ndarray])
    try:
        read_checkpoint(_numpy_file(tmp_path / "np.pth"))
        assert np.ndarray in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def test_concurrent_loads_do_not_undo_each_other(tmp_path):
    path = _numpy_file(tmp_path / "np.pth")
    before = _allowed()
    errors: list[BaseException] = []

    def load_many() -> None:
        try:
            for _ in range(20):
                read_checkpoint(path)
        except BaseException as err:  # reported below, from the main thread
            errors.append(err)

    threads = [threading.Thread(target=load_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _allowed() == before
