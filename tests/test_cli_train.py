"""The commands a user runs, offline, on the bundled model: demo, finetune (and resume),
generate, merge, info, pretrain — and their errors, printed without a traceback."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from minipeft import GPT2, PeftModel
from minipeft.cli import main
from minipeft.io.paths import bundled_dir
from minipeft.tasks.restaurants import make_examples

BUNDLED = "tiny-shakespeare"
pytestmark = pytest.mark.skipif(bundled_dir(BUNDLED) is None,
                                reason="the bundled model weights/tiny-shakespeare is missing")


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_demo_short_run_improves_the_metric(tmp_path, capsys):
    rc, out, err = run(capsys, "demo", "--quick", "--out", tmp_path / "demo", "--no-progress")
    assert rc == 0, err
    for text in ("trainable params:", "Before fine-tuning", "After fine-tuning", "exact match",
                 "Saved to"):
        assert text in out
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["after"]["slot_error"] < metrics["before"]["slot_error"]
    assert (tmp_path / "demo" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "adapter" / "adapter_model.safetensors").is_file()
    rc, _, err = run(capsys, "demo", "--quick", "--out", tmp_path / "demo", "--no-progress")
    assert rc == 1 and "exists and is not empty" in err and "Traceback" not in err


def write_jsonl(path, examples):
    path.write_text("".join(json.dumps({"prompt": e["prompt"], "completion": e["completion"]}) + "\n"
                            for e in examples))
    return path


def test_finetune_resume_generate_merge(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", make_examples(48, seed=1))
    held = write_jsonl(tmp_path / "eval.jsonl", make_examples(8, seed=2))
    common = ["--batch-size", 8, "--save-steps", 2, "--eval-steps", 2, "--no-progress",
              "--target-modules", "c_attn,mlp.c_fc"]
    rc, out, err = run(capsys, "finetune", BUNDLED, data, tmp_path / "run", "--eval-data", held,
                       "--steps", 4, *common)
    assert rc == 0, err
    assert "trainable params:" in out and "eval loss" in out
    rc, out, err = run(capsys, "finetune", BUNDLED, data, tmp_path / "run", "--eval-data", held,
                       "--steps", 6, "--resume", *common)
    assert rc == 0, err
    assert "trained 6 steps" in out
    adapter = tmp_path / "run" / "adapter"
    rc, out, err = run(capsys, "generate", BUNDLED, make_examples(1, seed=3)[0]["prompt"],
                       "--adapter", adapter, "--max-new-tokens", 8)
    assert rc == 0 and out.strip(), err
    rc, out, err = run(capsys, "merge", BUNDLED, adapter, tmp_path / "merged")
    assert rc == 0, err
    ids = np.array([[5, 6, 7, 8]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = PeftModel.from_pretrained(GPT2.from_pretrained(BUNDLED), adapter)
    merged = GPT2.from_pretrained(tmp_path / "merged")
    assert np.max(np.abs(merged(ids) - pm(ids))) < 1e-4 * np.max(np.abs(pm(ids)))  # float32 merge
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


METHOD_RUNS = {
    "ia3": ["--target-modules", "c_attn,mlp.c_proj", "--c-attn-slices", "k,v"],
    "prefix": ["--num-virtual-tokens", 4, "--prefix-projection", "--encoder-hidden-size", 16],
    "prompt": ["--num-virtual-tokens", 4, "--prompt-init", "text", "--prompt-init-text",
               "name: The Eagle"],
    "bottleneck": ["--adapter-preset", "houlsby", "--reduction-factor", 8],
}


@pytest.mark.parametrize("method", list(METHOD_RUNS))
def test_finetune_every_method(tmp_path, capsys, method):
    """Each method trains from the command line (the loss falls), saves in peft's format,
    and its adapter generates; merge takes the weight-changing ones only."""
    data = write_jsonl(tmp_path / "train.jsonl", make_examples(32, seed=1))
    rc, out, err = run(capsys, "finetune", BUNDLED, data, tmp_path / "run", "--method", method,
                       "--steps", 6, "--batch-size", 8, "--lr", 1e-2, "--no-progress",
                       *METHOD_RUNS[method])
    assert rc == 0, err
    assert "trainable params:" in out and "trained 6 steps" in out
    adapter = tmp_path / "run" / "adapter"
    # the training loss on the training examples fell: adapter against base, same batches
    from minipeft import load_tokenizer
    from minipeft.train.data import batches, encode_examples, read_jsonl
    from minipeft.train.trainer import evaluate
    tok = load_tokenizer(BUNDLED)
    base = GPT2.from_pretrained(BUNDLED)
    enc = encode_examples(read_jsonl(data), tok, base.config.n_positions - 4,
                          tok.token_to_id("<|endoftext|>"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned = PeftModel.from_pretrained(GPT2.from_pretrained(BUNDLED), adapter)
    assert (evaluate(tuned, batches(enc, 8, 0, 0))["eval_loss"]
            < evaluate(base, batches(enc, 8, 0, 0))["eval_loss"])
    rc, out, err = run(capsys, "generate", BUNDLED, "name: The Eagle", "--adapter", adapter,
                       "--max-new-tokens", 6)
    assert rc == 0 and out.strip(), err
    rc, out, err = run(capsys, "merge", BUNDLED, adapter, tmp_path / "merged")
    if method == "ia3":
        assert rc == 0, err
    else:
        assert rc == 1 and "cannot be merged" in err and "Traceback" not in err


def test_finetune_refuses_a_flag_of_another_method(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", make_examples(8, seed=1))
    rc, _, err = run(capsys, "finetune", BUNDLED, data, tmp_path / "run", "--method", "ia3",
                     "--r", 4)
    assert rc == 1 and "--r is a flag of --method lora, not of --method ia3" in err


@pytest.mark.parametrize("content,message", [
    ('{"prompt": "a", "completion": " b"}\n{"prompt": "a", "completion": " b"}\nnot json\n', "line 3"),
    ("", "no examples"),
    ('{"prompt": "a"}\n', "line 1"),
])
def test_finetune_bad_data_is_reported_without_a_traceback(tmp_path, capsys, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    rc, _, err = run(capsys, "finetune", BUNDLED, tmp_path / "bad.jsonl", tmp_path / "out",
                     "--steps", 1, "--no-progress")
    assert rc == 1 and message in err and "Traceback" not in err
    assert err.startswith("minipeft finetune: error:")


def test_finetune_refuses_an_occupied_output_folder(tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", make_examples(8, seed=1))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    rc, _, err = run(capsys, "finetune", BUNDLED, data, tmp_path / "out", "--steps", 1)
    assert rc == 1 and "exists and is not empty" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_info_table(capsys):
    rc, out, err = run(capsys, "info", BUNDLED)
    assert rc == 0, err
    for text in ("full fine-tuning", "LoRA r=8 c_attn", "DoRA r=8 c_attn", "IA3 (peft's placement)",
                 "prefix P=20, with the MLP", "prompt P=20 ", "bottleneck houlsby", "train memory"):
        assert text in out
    # the tiny model's counts follow the README's formulas: IA3 = L (3C + 4C), prompt = P C
    L, C = 4, 128
    assert re.search(rf"IA3 \(peft's placement\)\s+{L * 7 * C:,}\s", out)
    assert re.search(rf"prompt P=20\s+{20 * C:,}\s", out)


def test_pretrain_smoke_and_python_dash_m(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("\n".join(e["completion"] for e in make_examples(300, seed=4)))
    rc, out, err = run(capsys, "pretrain", text, tmp_path / "m", "--vocab-size", 300, "--n-layer", 1,
                       "--n-head", 2, "--n-embd", 16, "--block-size", 16, "--batch-size", 4,
                       "--steps", 3, "--warmup-steps", 1, "--no-progress")
    assert rc == 0, err
    model = GPT2.from_pretrained(tmp_path / "m")
    assert model.config.vocab_size == 300 and (tmp_path / "m" / "checksums.json").is_file()
    (tmp_path / "m" / "model.safetensors").write_bytes(
        (tmp_path / "m" / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    rc, _, err = run(capsys, "info", tmp_path / "m")
    assert rc == 1 and "does not match its checksum" in err
    result = subprocess.run([sys.executable, "-m", "minipeft", "demo", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--steps" in result.stdout


# --- text that is not UTF-8 and output paths that are files: a sentence, never an errno ----

def test_a_prompt_that_is_not_utf8_is_refused_with_a_sentence(capsys):
    """Bytes on the command line that are not UTF-8 reach Python as lone surrogates
    ("caf\\xe9" in Latin-1 -> "caf\\udce9"); the tokenizer would raise a traceback."""
    rc, _, err = run(capsys, "generate", BUNDLED, "caf\udce9", "--max-new-tokens", 2)
    assert rc == 1 and "Traceback" not in err
    assert "the prompt is not UTF-8 text: character 3 is the byte 0xe9" in err


def test_argv_bytes_that_are_not_utf8_in_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "minipeft", "generate", BUNDLED, b"caf\xe9 au lait",
                             "--max-new-tokens", "2"], capture_output=True, timeout=120)
    err = result.stderr.decode("utf-8", "backslashreplace")
    assert result.returncode == 1 and "Traceback" not in err, err
    assert "the prompt is not UTF-8 text" in err and "byte 0xe9" in err


@pytest.mark.parametrize("flags, name", [
    (["--target-modules", "c_attn,mlp.c_f\udcffc"], "--target-modules"),
    (["--method", "prompt", "--prompt-init", "text", "--prompt-init-text", "name: \udce9"],
     "--prompt-init-text"),
])
def test_every_text_flag_is_checked(tmp_path, capsys, flags, name):
    data = write_jsonl(tmp_path / "train.jsonl", make_examples(4, seed=1))
    rc, _, err = run(capsys, "finetune", BUNDLED, data, tmp_path / "run", "--steps", 1, *flags)
    assert rc == 1 and f"{name} is not UTF-8 text" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_path_that_is_not_utf8_is_still_a_path(tmp_path, capsys):
    """Paths may hold any bytes the file system takes: only text arguments are checked."""
    rc, _, err = run(capsys, "info", tmp_path / "caf\udce9")
    assert rc == 1 and "not UTF-8" not in err and "caf" in err


def test_pretrain_corpus_that_is_not_utf8(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(("To be, or not to be\n" * 200).encode() + "Ophélie\n".encode("latin-1"))
    rc, _, err = run(capsys, "pretrain", corpus, tmp_path / "m", "--steps", 1, "--no-progress")
    assert rc == 1 and "Traceback" not in err
    assert "corpus.txt, line 201: not UTF-8 text (byte 0xe9 at column 4)" in err
    assert not (tmp_path / "m").exists()


def test_finetune_data_that_is_not_utf8(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_bytes('{"prompt": "café", "completion": " x"}\n'.encode("cp1252"))
    rc, _, err = run(capsys, "finetune", BUNDLED, data, tmp_path / "run", "--steps", 1)
    assert rc == 1 and "train.jsonl, line 1: not UTF-8 text (byte 0xe9" in err


def _commands_writing_to(out, tmp_path):
    """Every command that writes a folder, with ``out`` as that folder."""
    data = write_jsonl(tmp_path / "train.jsonl", make_examples(4, seed=1))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 100)
    model = bundled_dir(BUNDLED)
    return {
        "demo": ["demo", "--quick", "--out", out, "--no-progress"],
        "demo --overwrite": ["demo", "--quick", "--out", out, "--overwrite", "--no-progress"],
        "finetune": ["finetune", BUNDLED, data, out, "--steps", 1, "--no-progress"],
        "finetune --overwrite": ["finetune", BUNDLED, data, out, "--steps", 1, "--overwrite"],
        "pretrain": ["pretrain", corpus, out, "--steps", 1, "--no-progress"],
        "pretrain --overwrite": ["pretrain", corpus, out, "--steps", 1, "--overwrite"],
        "merge": ["merge", BUNDLED, tmp_path / "no-adapter", out],
        "merge --overwrite": ["merge", BUNDLED, tmp_path / "no-adapter", out, "--overwrite"],
        "convert": ["convert", model, out],
        "convert --overwrite": ["convert", model, out, "--overwrite"],
    }


COMMANDS = ["demo", "demo --overwrite", "finetune", "finetune --overwrite", "pretrain",
            "pretrain --overwrite", "merge", "merge --overwrite", "convert", "convert --overwrite"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_path_that_is_a_file(tmp_path, capsys, command):
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's own file")
    rc, out, err = run(capsys, *_commands_writing_to(mine, tmp_path)[command])
    assert rc == 1, out
    assert "notes.txt is a file, not a folder" in err and "Errno" not in err, err
    assert mine.read_text() == "the user's own file"


@pytest.mark.parametrize("command", ["demo", "finetune", "pretrain", "merge", "convert"])
def test_an_output_path_under_a_file(tmp_path, capsys, command):
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's own file")
    rc, out, err = run(capsys, *_commands_writing_to(mine / "run", tmp_path)[command])
    assert rc == 1, out
    assert "cannot be created" in err and "notes.txt is a file, not a folder" in err, err
    assert "Errno" not in err and mine.read_text() == "the user's own file"


def test_an_unforeseen_os_error_is_a_sentence(capsys, monkeypatch):
    import minipeft.info

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", "/data/run/loss.png")
    monkeypatch.setattr(minipeft.info, "print_info", full_disk)
    rc, _, err = run(capsys, "info", BUNDLED)
    assert rc == 1 and "Errno" not in err and "Traceback" not in err
    assert "No space left on device (/data/run/loss.png)" in err


def test_exercises_report_refuses_an_output_file_before_running_anything(tmp_path, capsys):
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's own file")
    notebook = tmp_path / "student.ipynb"
    notebook.write_text("{}")
    rc, _, err = run(capsys, "exercises", "report", notebook, "--out", mine)
    assert rc == 1 and "--out" in err and "notes.txt is a file, not a folder" in err, err
    assert mine.read_text() == "the user's own file"
