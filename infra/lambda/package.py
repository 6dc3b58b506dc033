"""Build the emergency Lambda's zip: ``python infra/lambda/package.py [OUT]``.

Terraform cannot zip it here (the hashicorp/archive provider is not installed offline), so this
script does. The zip is deterministic (sorted entries, fixed timestamps and modes): the same
sources give the same bytes, so ``source_code_hash`` only changes when the code does.
Default output: ``infra/lambda/dist/emergency_handler.zip``, where Terraform looks for it.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "emergency_handler"
DEFAULT_OUT = HERE / "dist" / "emergency_handler.zip"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def build(out: Path = DEFAULT_OUT, source: Path = SOURCE) -> Path:
    """Write the zip of every ``.py`` file under ``source`` to ``out`` and return ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*.py")):
            entry = zipfile.ZipInfo(path.relative_to(source).as_posix(), date_time=_EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, path.read_bytes())
    return out


if __name__ == "__main__":
    written = build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
    print(written)
