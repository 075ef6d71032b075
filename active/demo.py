"""`cxr-al demo`: phantom data -> project -> ingest -> short SSL pretraining -> embeddings -> first
suggestions -> a demo account -> the app. Re-running it reuses what is already there."""

from __future__ import annotations

import secrets
from pathlib import Path

from store.phantoms import PHANTOM_CLASSES, write_phantom_dataset
from store.project import CONFIG_NAME, init_project, open_project

DEMO_USER = "demo"


def run_demo(root: Path | str = "demo", *, n: int = 240, seed: int = 0, image_size: int = 128,
             epochs: int | None = None, serve: bool = True, port: int = 8501, host: str = "127.0.0.1",
             password: str | None = None, log=print) -> dict:
    """Build (or reuse) the demo project under root and, unless serve is False, run the app on it."""
    import torch

    from active.accounts import add_user
    from active.rounds import embed, latest_round, pretrain
    from active.suggest import suggest
    from store.ingest import ingest_folder

    root = Path(root)
    data = root / "data"
    if not (data / "labels.csv").exists():
        log(f"[1/6] generating {n} phantom radiographs in {data}")
        write_phantom_dataset(data, n=n, seed=seed, size=256)
    project_dir = root / "project"
    if (project_dir / CONFIG_NAME).exists():
        project = open_project(project_dir)
        log(f"[2/6] reusing the demo project {project_dir}")
    else:
        project = init_project(project_dir, list(PHANTOM_CLASSES), image_size=image_size, name="demo")
        report = ingest_folder(project.db, data / "images", project.classes, labels_from="folders",
                               labels_as="oracle", test_fraction=0.2, seed=seed)
        log(f"[2/6] created {project_dir} and ingested {report.added} images ({report.test} held out for testing; "
            "their classes are hidden ground truth for simulation)")
    on_gpu = torch.cuda.is_available()
    if latest_round(project, "pretrain") is None:
        epochs = epochs or (30 if on_gpu else 2)
        log(f"[3/6] SimCLR pretraining, {epochs} epochs on the {'GPU' if on_gpu else 'CPU'} (short: a demo)")
        pretrain(project, method="simclr", epochs=epochs, batch_size=32, seed=seed)
    else:
        log("[3/6] pretrained backbone already there")
    log("[4/6] embedding the images and building the FAISS index")
    embed(project)
    if project.db.open_queue().empty:
        queued = suggest(project, 16, strategy="auto", seed=seed)
        log(f"[5/6] queued {len(queued)} cold-start suggestions (TypiClust on the SSL embeddings)")
    password = password or secrets.token_urlsafe(9)
    add_user(project, DEMO_USER, "lead", password)
    info = {"project": str(project_dir), "user": DEMO_USER, "password": password,
            "url": f"http://{host}:{port}"}
    log(f"[6/6] demo account: user {DEMO_USER!r}, password {password!r} (role lead)")
    if serve:
        from active.serve import serve as serve_app

        log(f"serving the app at {info['url']} (Ctrl+C to stop)")
        serve_app(project_dir, port=port, host=host)
    return info
