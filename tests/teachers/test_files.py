"""Teacher files: TorchScript loads; pickles only with trust_pickle, never by default."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from labelzip.errors import InputError
from labelzip.teachers import build_small_teacher, load_teacher_file


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_small_teacher("resnet", num_classes=4, in_channels=3).eval()


def _save_script(module: torch.jit.ScriptModule, path: Path) -> Path:
    torch.jit.save(module, str(path))
    return path


# TorchScript is deprecated in torch 2.13 (but loads); tracing warns about the
# teachers' input checks, which are constants of the traced shape.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_and_scripted_teachers_load(tmp_path: Path) -> None:
    model = _model()
    images = torch.randint(0, 256, (2, 3, 24, 24)).float()
    traced = _save_script(torch.jit.trace(model, images), tmp_path / "t.ts")
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    scripted = _save_script(torch.jit.script(linear), tmp_path / "s.pt")
    loaded = load_teacher_file(traced)
    assert not loaded.training
    torch.testing.assert_close(loaded(images), model(images))
    x = torch.rand(3, 3, 2, 2)
    torch.testing.assert_close(load_teacher_file(scripted)(x), linear(x))


def test_malicious_pickle_is_never_unpickled_by_default(
    evil_pickle: tuple[Path, Path],
) -> None:
    path, marker = evil_pickle
    with pytest.raises(
        InputError,
        match=r"is a torch.save pickle, not TorchScript.*does not unpickle.*"
        r"torch.jit.save\(torch.jit.script\(model\).*--trust-pickle",
    ):
        load_teacher_file(path)
    assert not marker.exists()
    # The control: trusting the file runs its code (and then it is no module).
    with pytest.raises(InputError, match="not an nn.Module"):
        load_teacher_file(path, trust_pickle=True)
    assert marker.exists()


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    model = _model()
    torch.save(model, tmp_path / "whole.pt")
    torch.save(model, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    for name, kind in (("whole", "a torch.save pickle"), ("legacy", "not a zip")):
        with pytest.raises(InputError, match=f"is {kind}.*--trust-pickle"):
            load_teacher_file(tmp_path / f"{name}.pt")
        loaded = load_teacher_file(tmp_path / f"{name}.pt", trust_pickle=True)
        assert isinstance(loaded, type(model)) and not loaded.training
    with pytest.raises(InputError, match="holds a OrderedDict, not an nn.Module"):
        load_teacher_file(tmp_path / "weights.pt", trust_pickle=True)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="teacher file .* does not exist"):
        load_teacher_file(tmp_path / "missing.ts")
    (tmp_path / "empty.ts").write_bytes(b"")
    with pytest.raises(InputError, match="is not a zip archive"):
        load_teacher_file(tmp_path / "empty.ts")
    # Looks like TorchScript from its directory, but its records are garbage.
    with zipfile.ZipFile(tmp_path / "broken.ts", "w") as archive:
        archive.writestr("broken/constants.pkl", b"\x80\x02garbage")
        archive.writestr("broken/code/__torch__.py", "def forward(")
        archive.writestr("broken/data.pkl", b"\x80\x02garbage")
    with pytest.raises(InputError, match="cannot load TorchScript teacher"):
        load_teacher_file(tmp_path / "broken.ts")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(InputError, match="zip archive without TorchScript code"):
        load_teacher_file(tmp_path / "other.zip")
