"""The multi-device path without a GPU: SSL pretraining and fine-tuning as 2-process DDP on the CPU (gloo), the
way a launcher runs them on GPUs; and bf16 autocast on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from models.backbones import load_checkpoint
from models.finetune import load_classifier
from models.runtime import check_world_size, trainer_devices, trainer_precision
from store.errors import CxrAlError
from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset

REPO = Path(__file__).resolve().parents[2]
SIZE = 32

# Run as a script: Lightning's DDP launcher starts rank 1 by running this same command again, exactly as
# torchrun or srun start every rank of a GPU job. Both ranks pretrain, then fine-tune, then report.
DDP_SCRIPT = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    from models.finetune import finetune
    from models.pretrain_cli import image_paths, main as pretrain_main

    images, out = Path(sys.argv[1]), Path(sys.argv[2])
    rc = pretrain_main([str(images), "--out", str(out / "ssl"), "--method", "simclr", "--epochs", "1",
                        "--batch-size", "4", "--image-size", "32", "--device", "cpu", "--devices", "2",
                        "--strategy", "ddp", "--augment", "standard", "--num-workers", "0", "--no-progress"])
    assert rc == 0, rc
    paths = image_paths(images)
    classes = sorted({Path(p).parent.name for p in paths})
    labels = [classes.index(Path(p).parent.name) for p in paths]
    result = finetune(paths, labels, classes, out / "ft", checkpoint=out / "ssl" / "backbone.pt", image_size=32,
                      epochs=1, batch_size=4, device="cpu", devices=2, strategy="ddp", num_workers=0,
                      progress=False)
    print("FINETUNED", json.dumps({"rank": int(os.environ["LOCAL_RANK"]), "n_train": result.n_train,
                                   "history": result.history}), flush=True)
''')


@pytest.mark.slow
def test_pretrain_and_finetune_as_two_process_ddp_on_the_cpu(tmp_path) -> None:
    data = write_phantom_dataset(tmp_path / "phantoms", n=16, seed=2, size=SIZE)
    script = tmp_path / "ddp_round.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    for var in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS", "SLURM_JOB_ID"):
        env.pop(var, None)  # a clean launch: no cluster environment leaking in from the test runner
    run = subprocess.run([sys.executable, str(script), str(data / "images"), str(tmp_path / "out")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    summary = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("{")))
    assert summary["world_size"] == 2 and summary["images"] == 16 and summary["steps"] == 2  # 8 images a rank
    finished = [json.loads(line.split(" ", 1)[1]) for line in run.stdout.splitlines() if line.startswith("FINETUNED")]
    assert sorted(r["rank"] for r in finished) == [0, 1]  # both processes ran to the end
    assert all(r["history"] and "val_loss" in r["history"][0] for r in finished)

    backbone, meta = load_checkpoint(tmp_path / "out" / "ssl" / "backbone.pt")
    assert meta["method"] == "simclr" and meta["image_size"] == SIZE and len(meta["losses"]) == 1
    classifier, cmeta = load_classifier(tmp_path / "out" / "ft" / "classifier.pt")
    assert cmeta["classes"] == sorted(PHANTOM_CLASSES)
    with torch.no_grad():
        probs = torch.softmax(classifier(torch.rand(2, 1, SIZE, SIZE)), dim=1)
    assert probs.shape == (2, len(PHANTOM_CLASSES)) and torch.isfinite(probs).all()
    assert not (tmp_path / "out" / "ft" / "lightning").exists()  # rank 0 cleaned up after both read best.ckpt


def test_a_pretrain_step_runs_under_bf16_autocast_on_the_cpu(tmp_path, monkeypatch) -> None:
    from models.augment import XrayAugmentConfig
    from models.ssl import SimCLRModule, pretrain

    seen = []
    real_loss = SimCLRModule.compute_loss

    def spying_loss(self, views):
        seen.append((torch.is_autocast_enabled("cpu"), self.backbone(views[0]).dtype))
        return real_loss(self, views)

    monkeypatch.setattr(SimCLRModule, "compute_loss", spying_loss)
    data = write_phantom_dataset(tmp_path / "phantoms", n=4, seed=1, size=SIZE)
    paths = sorted(str(p) for p in (data / "images").rglob("*.png"))
    result = pretrain(paths, tmp_path / "out", method="simclr", epochs=1, batch_size=4, image_size=SIZE,
                      device="cpu", precision="bf16-mixed", max_steps=1, progress=False, num_workers=0,
                      augment=XrayAugmentConfig())
    assert result.extra["precision"] == "bf16-mixed" and result.steps == 1
    assert seen == [(True, torch.bfloat16)]  # the step ran under CPU autocast, convolutions in bf16
    backbone, _ = load_checkpoint(result.checkpoint)
    assert all(v.dtype == torch.float32 for v in backbone.state_dict().values() if v.is_floating_point())


def test_defaults_stay_on_one_device_and_precision_is_checked() -> None:
    cpu = torch.device("cpu")
    assert trainer_devices(cpu) == 1
    assert trainer_devices(torch.device("cuda", 1)) == [1]
    assert trainer_devices(cpu, 2) == 2
    assert trainer_precision(cpu) == ("cpu", "32-true")
    assert trainer_precision(cpu, "bf16-mixed") == ("cpu", "bf16-mixed")
    with pytest.raises(CxrAlError, match="needs a CUDA GPU"):
        trainer_precision(cpu, "16-mixed")
    with pytest.raises(CxrAlError, match="unknown precision"):
        trainer_precision(cpu, "fp8")


def test_a_launcher_with_another_process_count_is_refused(monkeypatch) -> None:
    """torchrun --nproc_per_node=2 with --devices 1 would give two lone trainers writing the same files."""
    for var in ("WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(var, raising=False)
    check_world_size(1)  # no launcher
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_world_size(2)
    with pytest.raises(CxrAlError, match="started 2 processes but devices x num_nodes is 1"):
        check_world_size(1)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: not a launcher (Lightning's rule)
    check_world_size(1)
    monkeypatch.setenv("SLURM_JOB_NAME", "cxr-ssl")
    with pytest.raises(CxrAlError, match="started 4 processes"):
        check_world_size(1)
