"""The bridge recipe reads its classification and ASR manifests the way the
package's own manifest reader does: a CSV saved by a spreadsheet program
(UTF-8 with a byte-order mark) keeps its first column name."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bridge_train(monkeypatch):
    """``recipes/LibriSpeech/LLM_bridge/train.py`` as a module."""
    folder = os.path.join(REPO, "recipes", "LibriSpeech", "LLM_bridge")
    monkeypatch.syspath_prepend(folder)  # train.py imports librispeech_prepare
    path = os.path.join(folder, "train.py")
    spec = importlib.util.spec_from_file_location("bridge_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifests_with_a_byte_order_mark_keep_their_first_column(
    tmp_path, monkeypatch
):
    train = load_bridge_train(monkeypatch)
    asr = tmp_path / "asr.csv"
    asr.write_text("ID,duration,wav,wrd\nu1,1.5,/a/u1.flac,HELLO THERE\n", "utf-8-sig")
    sounds = tmp_path / "sounds.csv"
    sounds.write_text(
        "ID,duration,wav,class_name\ns1,2.0,/a/s1.wav,dog_bark\n", "utf-8-sig"
    )
    data = train.task_data({"cls_task": "sound"}, [str(asr)], str(sounds))
    assert data["asr/u1"]["text"] == "HELLO THERE"
    assert data["sound/s1"]["text"] == "dog bark"
