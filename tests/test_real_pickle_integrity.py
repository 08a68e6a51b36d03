"""The legacy torch reader under attack: BUILD on stand-ins, truncation, overwrites.

Crafted pickles are written opcode by opcode (protocol 2); the tiny files come
from ``real_fixtures``. Two tests copy the real EfficientNet checkpoint and
skip without it.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedjax_mm.real import assets, efficientnet, torch_pickle
from real_fixtures import Storage, Tensor, legacy_header, write_legacy  # tests/ is on sys.path

FLOATS = np.arange(6, dtype=np.float32) - 2.5


def _normal_file(path: Path) -> Path:
  storage = Storage("0", FLOATS, "FloatStorage")
  write_legacy(path, {"w": Tensor(storage, 0, (2, 3), (3, 1))}, [storage])
  return path


def _unicode(text: str) -> bytes:
  return pickle.SHORT_BINUNICODE + bytes([len(text.encode())]) + text.encode()


def _build_on_global(module: str, name: str, key: str, value: bytes) -> bytes:
  """A state-dict pickle that BUILDs ``{key: value}`` onto global ``module.name``,
  drops it and returns ``{}``."""
  return (pickle.PROTO + b"\x02" + pickle.GLOBAL + f"{module}\n{name}\n".encode()
          + pickle.EMPTY_DICT + _unicode(key) + value + pickle.SETITEM + pickle.BUILD
          + pickle.POP + pickle.EMPTY_DICT + pickle.STOP)


@pytest.mark.parametrize("module, name, key, value", [
    ("torch", "FloatStorage", "dtype", _unicode("bogus")),      # breaks later float loads
    ("torch", "FloatStorage", "name", _unicode("LongStorage")),
    ("torch._utils", "_rebuild_tensor_v2", "hook", pickle.NONE),
])
def test_build_on_a_whitelisted_stand_in_is_refused(tmp_path, module, name, key, value):
  crafted = tmp_path / "crafted.pth"
  crafted.write_bytes(legacy_header() + _build_on_global(module, name, key, value)
                      + pickle.dumps([], protocol=2))
  with pytest.raises(torch_pickle.UnsafePickleError,
                     match=rf"refusing BUILD \(setstate\) on _\w+, got state {{'{key}'"):
    torch_pickle.load(crafted)
  # A later, normal load in the same process is unaffected.
  got = torch_pickle.load(_normal_file(tmp_path / "normal.pth"))
  np.testing.assert_array_equal(got["w"], FLOATS.reshape(2, 3))
  assert got["w"].dtype == np.float32


def test_build_on_a_tensor_is_refused(tmp_path):
  storage = Storage("0", FLOATS, "FloatStorage")
  path = tmp_path / "shifted.pth"        # BUILD would move the view by one element
  write_legacy(path, {"w": Tensor(storage, 0, (2, 2), (2, 1), state={"offset": 1})},
               [storage])
  with pytest.raises(torch_pickle.UnsafePickleError, match=r"BUILD .* on _TensorRef"):
    torch_pickle.load(path)


def test_every_truncation_names_the_file_and_fix(tmp_path):
  data = _normal_file(tmp_path / "w.pth").read_bytes()
  path = tmp_path / "cut.pth"
  for cut in range(len(data)):           # header, state, keys, storage header and data
    path.write_bytes(data[:cut])
    with pytest.raises(assets.DamagedFileError) as info:
      torch_pickle.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: truncated or damaged legacy torch file (")
    assert message.endswith("; replace it with an intact copy") and "\n" not in message


def test_system_info_must_be_a_dict(tmp_path):
  path = tmp_path / "info.pth"
  path.write_bytes(b"".join(pickle.dumps(h, protocol=2) for h in (
      torch_pickle.MAGIC_NUMBER, torch_pickle.PROTOCOL_VERSION, 5)))
  with pytest.raises(assets.DamagedFileError, match=r"system info is a int, not a dict"):
    torch_pickle.load(path)


def test_every_overwritten_byte_loads_or_fails_in_one_line(tmp_path):
  """Each byte set to 0x00 or 0xFF: inside the data it may load (an unpinned
  file has no digest), otherwise one DamagedFileError line (or the whitelist's
  refusal, where a global's name changed), never a bare low-level error."""
  data = _normal_file(tmp_path / "w.pth").read_bytes()
  path, causes = tmp_path / "flip.pth", set()
  for i in range(len(data)):
    for byte in (b"\x00", b"\xff"):
      path.write_bytes(data[:i] + byte + data[i + 1:])
      try:
        torch_pickle.load(path)
      except torch_pickle.UnsafePickleError:
        continue
      except assets.DamagedFileError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
        causes.add(type(e.__cause__).__name__ if e.__cause__ else "view")
  # Every exception type the reader wraps occurs (EOFError: truncation, above),
  # and out-of-bounds views.
  assert causes >= {"UnpicklingError", "ValueError", "UnicodeDecodeError", "KeyError",
                    "TypeError", "view"}, causes


NAME = "efficientnet_lite0"


def _real_copy(tmp_path: Path) -> Path:
  try:
    source = assets.path(NAME)
  except FileNotFoundError as e:
    pytest.skip(str(e))
  (tmp_path / NAME).mkdir()
  return Path(shutil.copy(source, tmp_path / NAME / source.name))


def test_overwritten_real_checkpoint_is_refused_not_loaded_as_nan(tmp_path):
  path = _real_copy(tmp_path)
  with open(path, "r+b") as f:           # the last storage's floats become NaN
    f.seek(path.stat().st_size - 400)
    f.write(b"\xff" * 400)
  with pytest.raises(assets.DamagedFileError,
                     match=rf"SHA-256 .* `scripts/fetch_real\.sh {NAME} --root "):
    efficientnet.load_params(path)


def test_truncated_real_checkpoint_names_the_refetch_command(tmp_path):
  path = _real_copy(tmp_path)
  path.write_bytes(path.read_bytes()[:4096])
  with pytest.raises(assets.DamagedFileError,
                     match=rf"^{path}: truncated .* `scripts/fetch_real\.sh {NAME} --root "):
    torch_pickle.load(path)
