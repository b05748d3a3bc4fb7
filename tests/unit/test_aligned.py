"""Aligned-model specs as users write them: a folder, a Hub id, or a single .gguf file."""

import pytest

from poft.aligned import AlignedModelError, gguf_location, load_aligned_models, parse_model_spec


def test_a_gguf_file_is_its_folder_plus_gguf_file(tmp_path):
    file = tmp_path / "SmolLM2.Q4_1.gguf"
    file.write_bytes(b"GGUF")
    assert gguf_location(str(file)) == (str(tmp_path), {"gguf_file": "SmolLM2.Q4_1.gguf"})
    assert gguf_location(str(tmp_path)) is None and gguf_location("org/model") is None
    assert parse_model_spec(f"smol={file}") == ("smol", str(file))


def test_a_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(AlignedModelError, match=r"aligned model smol: .*nope\.gguf: no such GGUF file"):
        load_aligned_models([f"smol={tmp_path / 'nope.gguf'}"])
