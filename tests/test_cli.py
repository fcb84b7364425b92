"""``nnpes --version`` and ``nnpes info``, in-process and once as a real subprocess."""

import re
import subprocess
import sys

import pytest

import nnpes
from nnpes.cli.main import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"nnpes {nnpes.__version__}"


def test_info_lists_versions_devices_precision_models(capsys):
    import jax

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ["nnpes", "jax", "jaxlib", "flax", "optax", "e3nn-jax", "jraph", "ase", "vesin", "python"]:
        assert f"  {name} " in out, f"{name} missing from nnpes info"
    assert re.search(rf"^\s+nnpes\s+{re.escape(nnpes.__version__)}$", out, re.M)
    assert re.search(rf"^\s+jax\s+{re.escape(jax.__version__)}$", out, re.M)
    assert "cpu:0" in out or "gpu:0" in out or "cuda:0" in out
    # tests run with x64 on (conftest), so info must say so
    assert "jax_enable_x64: true" in out and "default float: float64" in out
    from nnpes.models import MODELS

    public = sorted(n for n in MODELS if not n.startswith("_"))
    assert f"models: {', '.join(public)}" in out


def test_info_subprocess():
    """The installed entry point works from a clean interpreter (x64 off there)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from nnpes.cli.main import main; sys.exit(main(sys.argv[1:]))", "info"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "default float: float32 (jax_enable_x64: false" in proc.stdout
    assert "models:" in proc.stdout and "nequip" in proc.stdout


def test_train_init_from_sets_model_init_from(monkeypatch, tmp_path):
    import nnpes.training
    from nnpes.training.result import TrainResult

    seen = {}

    def fake_train(config, run_dir, *, resume, overrides):
        seen.update(config=config, overrides=overrides)
        return TrainResult(run_dir="r", model="m", stop_reason="max_epochs", epochs=1, steps=1, best_epoch=0,
                           best_valid_loss=1.0, elapsed_s=1.0)

    monkeypatch.setattr(nnpes.training, "train", fake_train)
    assert main(["train", "cfg.yaml", "--init-from", str(tmp_path / "old"), "--set", "training.lr=1e-4"]) == 0
    assert seen["overrides"] == ["training.lr=1e-4", f"model.init_from={(tmp_path / 'old').resolve()}"]
