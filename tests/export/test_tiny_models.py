"""export_random_decoder, which the engine benchmark and gpu-check make their packages with."""

import pytest

from export.tiny_models import export_random_decoder


def test_packages_already_there_are_kept_and_a_failed_export_is_named(sources, tmp_path):
    out = tmp_path / "packages"
    (out / "kept").mkdir(parents=True)
    (out / "kept" / "manifest.json").write_text("{}")  # not re-exported, so never read either
    with pytest.raises(RuntimeError, match=r"^export on-cpu-fp16: appliance-export: --precision fp16 is for GPU"):
        export_random_decoder(sources["llama"], {"kept": [], "on-cpu-fp16": ["--precision", "fp16"]}, out)
    assert (out / "kept" / "manifest.json").read_text() == "{}"
