"""`cxr-al demo`: phantom data -> project -> ingest -> short SSL pretraining -> embeddings -> first
suggestions -> a demo account; `cxr-al demo` then serves the app. Re-running it reuses what is
already there (the demo account gets a fresh password each run)."""

from __future__ import annotations

import secrets
from pathlib import Path

from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
from store.project import CONFIG_NAME, init_project, open_project

DEMO_ACCOUNT = "demo"
# Clear findings: with the generator's default mix of subtle ones, two CPU epochs of SimCLR on 240 images
# leave the probe at chance (macro-AUC 0.56 with every label); with these, 0.87 (0.70 from 24 labels), so
# the demo's rounds, predictions and Grad-CAM++ maps show a model that learns (docs/benchmarks.md).
DEMO_LESION_STRENGTH = (1.5, 3.0)


def run_demo(root: Path | str = "demo", *, n: int = 240, seed: int = 0, image_size: int = 128,
             epochs: int | None = None, log=print) -> dict:
    """Build (or reuse) the demo project under root; returns its status, project_dir and the demo account."""
    import torch

    from active.engine.queue import suggest
    from active.engine.rounds import embed, latest_round, pretrain
    from store.ingest import ingest_folder

    root = Path(root)
    data = root / "data"
    if not (data / "labels.csv").exists():
        log(f"[1/5] generating {n} phantom radiographs with clear findings in {data}")
        write_phantom_dataset(data, n=n, seed=seed, size=256, lesion_strength=DEMO_LESION_STRENGTH)
    project_dir = root / "project"
    if (project_dir / CONFIG_NAME).exists():
        project = open_project(project_dir)
        log(f"[2/5] reusing the demo project {project_dir}")
    else:
        project = init_project(project_dir, list(PHANTOM_CLASSES), image_size=image_size, name="demo")
        report = ingest_folder(project.db, data / "images", project.classes, labels_from="folders",
                               labels_as="oracle", test_fraction=0.2, seed=seed)
        log(f"[2/5] created {project_dir} and ingested {report.added} images ({report.test} held out for testing; "
            "their classes are hidden ground truth for simulation)")
    on_gpu = torch.cuda.is_available()
    if latest_round(project, "pretrain") is None:
        epochs = epochs or (30 if on_gpu else 2)
        log(f"[3/5] SimCLR pretraining, {epochs} epochs on the {'GPU' if on_gpu else 'CPU'} (short: a demo)")
        pretrain(project, method="simclr", epochs=epochs, batch_size=32, seed=seed)
    else:
        log("[3/5] pretrained backbone already there")
    log("[4/5] embedding the images and building the FAISS index")
    embed(project)
    if project.db.open_queue().empty:
        queued = suggest(project, 16, strategy="auto", seed=seed)
        log(f"[5/5] queued {len(queued)} cold-start suggestions (auto: TypiClust on the SSL embeddings plus a "
            f"{project.round_policy['random_share']:.0%} random share)")
    from active.views.accounts import add_user
    from active.views.status import status

    password = secrets.token_urlsafe(9)
    account = add_user(project, DEMO_ACCOUNT, "admin", password)
    info = status(project)
    log(f"demo project ready: {info['images']['total']} images ({info['images']['pool']} to label, "
        f"{info['images']['test']} test), {info['embeddings']} embeddings in a {info['index']['type']} FAISS index, "
        f"{info['queue']} suggestions queued")
    log(f"the app: cxr-al serve {project_dir}; more accounts: cxr-al user add {project_dir} NAME --role annotator; "
        f"oracle simulation: cxr-al simulate {project_dir} --out {root / 'simulation'}")
    return {**info, "project_dir": str(project_dir), "account": {**account, "password": password}}
