"""The README's example runs as printed (in a temporary folder, offline)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README has no python example"
    result = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "(1, 5, 50257)" in result.stdout and "(768, 2304)" in result.stdout


def test_readme_lora_example_runs(tmp_path):
    """The LoRA section's example, after the first one (it reads the folder that one wrote)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 2, "README has no LoRA example"
    for code in blocks[:2]:
        result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364" in result.stdout
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in result.stdout
    assert "(1, 5, 50257)" in result.stdout
    assert (tmp_path / "out" / "my-lora" / "adapter_model.safetensors").is_file()


def test_readme_training_example_runs(tmp_path):
    """The training section's example (bundled model, 60 LoRA steps, a checkpoint, generation)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    code = next(b for b in blocks if "Trainer(" in b)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert (tmp_path / "out" / "run" / "checkpoint-60" / "adapter" / "adapter_model.safetensors").is_file()


def test_readme_methods_example_runs(tmp_path):
    """The other methods' example: each trains, saves and loads back as its own model."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    code = next(b for b in blocks if "PrefixTuningConfig(" in b)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for line in ("trainable params: 3,584 || all params: 1,075,456",
                 "ia3 5.581 base_model.model.transformer.h.0.attn.c_attn.ia3_l", "IA3Model (1, 21)",
                 "PrefixTuningModel (1, 21)", "PromptTuningModel (1, 21)", "BottleneckModel (1, 21)"):
        assert line in result.stdout
    for name in ("ia3", "prefix", "prompt", "houlsby"):
        assert (tmp_path / "out" / name / "adapter_config.json").is_file()
