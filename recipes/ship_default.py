"""Store a trained LaNMT bundle (and its teacher) in half precision as the embedded default model.

python recipes/ship_default.py RUN/finetune/best [lanmt_cli/models/default]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from lanmt_cli.bundle import load_bundle, save_bundle


def ship(src: Path, dest: Path) -> None:
    bundle = load_bundle(src)
    teacher = bundle.teacher()
    if teacher is None:
        raise SystemExit(f"{src}: no teacher in this bundle")
    info = {**bundle.meta.get("info", {}), "recipe": "recipes/multi30k_ende.sh"}
    with tempfile.TemporaryDirectory() as tmp:
        half_teacher = save_bundle(
            Path(tmp) / "teacher", teacher.model, teacher.tokenizer,
            languages=teacher.meta["languages"], info=teacher.meta.get("info"), half=True,
        )  # fmt: skip
        save_bundle(
            dest, bundle.model, bundle.tokenizer, teacher=half_teacher,
            languages=bundle.meta["languages"], info=info, half=True,
        )  # fmt: skip
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"wrote {dest} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    here = Path(__file__).resolve().parent.parent
    ship(
        Path(sys.argv[1]),
        Path(sys.argv[2]) if len(sys.argv) > 2 else here / "lanmt_cli/models/default",
    )
