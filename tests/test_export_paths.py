"""``export_inference_hparams`` makes paths absolute, never method names."""

import os

from speechbrain_moe.inference.export import export_inference_hparams

RECIPE = """\
method: soft_moa
source: tiny_model
backbone: !apply:speechbrain_moe.petl.apply_method
    backbone: !new:torch.nn.Linear [2, 2]
    method: !ref <method>
    overrides: {{}}
other: !ref <source>
"""


def test_method_name_stays_a_name_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    """A folder called ``soft_moa`` in the working directory (e.g. runs named
    after their method) must not turn the packaged method name into a path,
    while a real relative folder (a local backbone source) still becomes
    absolute."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("soft_moa")
    os.makedirs("tiny_model")
    (tmp_path / "train.yaml").write_text(RECIPE.format())
    out = tmp_path / "out"
    path = export_inference_hparams(
        str(tmp_path / "train.yaml"),
        {},
        str(out),
        keys=["backbone", "other"],
        loadables=["backbone"],
    )
    text = open(path, encoding="utf-8").read()
    assert "method: soft_moa" in text, text
    assert str(tmp_path / "soft_moa") not in text
    assert str(tmp_path / "tiny_model") in text
