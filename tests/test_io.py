import pytest
import torch

from erasekit.core.errors import MissingFileError
from erasekit.core.io import atomic_path, load_tensors, optimizer_tensors, read_json, restore_optimizer, save_tensors, write_json


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_directory_replace(tmp_path):
    target = tmp_path / "d"
    for v in ("1", "2"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "f").write_text(v)
    assert (target / "f").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_tensors_and_optimizer_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, extra = optimizer_tensors(opt)
    save_tensors(tmp_path / "o.safetensors", tensors)
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    restore_optimizer(opt2, load_tensors(tmp_path / "o.safetensors"), extra)
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    assert opt2.param_groups[0]["lr"] == 0.1


def test_missing_file_error(tmp_path):
    with pytest.raises(MissingFileError):
        load_tensors(tmp_path / "nope.safetensors")
