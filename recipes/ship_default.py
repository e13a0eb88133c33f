"""Store a trained LaNMT bundle and its teacher in half precision as the embedded default model.

python recipes/ship_default.py RUN/finetune/best [--teacher RUN/teacher/best] [--out DIR]

--teacher replaces the teacher kept in the LaNMT bundle (e.g. one trained for longer);
both must share the tokenizer, which the bundle stores once (teacher/config.json names
`../spm.model`). DIR defaults to lanmt_cli/models/default.
--ctranslate2 also stores the teacher's CTranslate2 conversion (teacher/ctranslate2/, see
lanmt_cli/ct2.py; about 19 MB more, which breaks the 50 MB budget of the embedded model).
Without it the conversion is built once into the user's cache on first use (under a second).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from lanmt_cli.bundle import load_bundle, read_config, save_bundle, tokenizer_files
from lanmt_cli.ct2 import store_in_bundle

HERE = Path(__file__).resolve().parent.parent


def public(info: dict) -> dict:
    """Training facts without this machine's paths."""
    return {**{k: v for k, v in info.items() if k != "data"}, "data": "Multi30k en-de"}


def tokenizer_bytes(path: Path) -> list[bytes]:
    """The contents of a bundle's source and target tokenizer files."""
    return [f.read_bytes() for f in tokenizer_files(path, read_config(path)).values()]


def ship(src: Path, dest: Path, teacher_dir: Path | None = None, convert: bool = False) -> None:
    bundle = load_bundle(src)
    teacher = load_bundle(teacher_dir) if teacher_dir else bundle.teacher()
    if teacher is None:
        raise SystemExit(f"{src}: no teacher in this bundle; give --teacher")
    if teacher_dir and tokenizer_bytes(teacher_dir) != tokenizer_bytes(src):
        raise SystemExit(f"{teacher_dir}: its tokenizer differs from that of {src}")
    info = {**public(bundle.meta.get("info", {})), "recipe": "recipes/multi30k_ende.sh"}
    with tempfile.TemporaryDirectory() as tmp:
        half_teacher = save_bundle(
            Path(tmp) / "teacher", teacher.model, teacher.tokenizer,
            languages=teacher.meta["languages"], info=public(teacher.meta.get("info", {})),
            half=True,
        )  # fmt: skip
        save_bundle(
            dest, bundle.model, bundle.tokenizer, teacher=half_teacher,
            languages=bundle.meta["languages"], info=info, half=True, share_tokenizer=True,
        )  # fmt: skip
    if convert:
        store_in_bundle(dest / "teacher")  # the teacher converted for CTranslate2, ready to run
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"wrote {dest} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the LaNMT bundle (with teacher/)")
    parser.add_argument("--teacher", type=Path, help="a teacher bundle to ship instead")
    parser.add_argument("--out", type=Path, default=HERE / "lanmt_cli/models/default")
    parser.add_argument(
        "--ctranslate2", action="store_true", help="store the teacher's CTranslate2 conversion"
    )
    args = parser.parse_args()
    ship(args.model, args.out, args.teacher, args.ctranslate2)
