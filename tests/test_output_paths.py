"""An output path that is an existing *file* is refused with a sentence by every save
of the library too, not only by the commands: a user's file is never replaced by a
folder, even with overwrite=True (issue 12, §3)."""
from __future__ import annotations

import warnings

import pytest

from minipeft import GPT2, LoraConfig, MinipeftError, convert_checkpoint, get_peft_model
from minipeft.io.paths import bundled_dir

BUNDLED = "tiny-shakespeare"
pytestmark = pytest.mark.skipif(bundled_dir(BUNDLED) is None,
                                reason="the bundled model weights/tiny-shakespeare is missing")


def lora():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(GPT2.from_pretrained(BUNDLED), LoraConfig(r=2, target_modules=["c_attn"]))


SAVES = {
    "convert_checkpoint": lambda dst: convert_checkpoint(bundled_dir(BUNDLED), dst, overwrite=True),
    "GPT2.save_pretrained": lambda dst: GPT2.from_pretrained(BUNDLED).save_pretrained(dst, overwrite=True),
    "PeftModel.save_pretrained": lambda dst: lora().save_pretrained(dst),
}


@pytest.mark.parametrize("save", SAVES)
@pytest.mark.parametrize("where", ["the file itself", "a folder under it"])
def test_a_save_never_replaces_a_users_file(tmp_path, save, where):
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's own file")
    dst = mine if where == "the file itself" else mine / "model"
    with pytest.raises(MinipeftError) as info:
        SAVES[save](dst)
    assert "notes.txt is a file" in str(info.value) and "folder" in str(info.value), str(info.value)
    assert mine.read_text() == "the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]     # nothing left beside it


def test_compare_refuses_an_output_file_before_training(tmp_path):
    from minipeft import compare
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's own file")
    with pytest.raises(MinipeftError, match="notes.txt is a file, not a folder"):
        compare.run(methods=["lora"], quick=True, out=mine, overwrite=True, verbose=False,
                    learning_rates={"lora": 1e-2, "full": 1e-3})
    assert mine.read_text() == "the user's own file"
