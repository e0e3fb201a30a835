"""Build gateway/static/ from council.scss and the pinned govuk-frontend: run by hand after
changing council.scss or package.json, then commit gateway/static/ with the sources.

    python gateway/web_assets/build.py           # rebuild gateway/static/
    python gateway/web_assets/build.py --check   # rebuild in a temp folder; fail if static/ differs

The built files are committed so that `pip install -e .` and `referral-gateway serve` never need
npm. Each build is fresh and reproducible: `npm ci` from package-lock.json (install scripts off)
in a temporary folder, so no node_modules is left in the source tree (setuptools would take its
folders for packages), then npm's `sass` compiles council.scss (compressed, no source map).

Copied from govuk-frontend: only govuk-frontend.min.js. Its fonts are GDS Transport (GOV.UK
only; we use Arial) and its images are GOV.UK's crown icons, which a council must not use; our
pages reference neither. static/BUILD.json records the versions and the sources' and outputs'
SHA-256, so a test can tell when council.scss or the lock file changed without a rebuild.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATIC = HERE.parent / "static"
SOURCES = ("package.json", "package-lock.json", "council.scss")
OUTPUTS = ("council.css", "govuk-frontend.min.js", "BUILD.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True)


def _version(node_modules: Path, package: str) -> str:
    return str(json.loads((node_modules / package / "package.json").read_text())["version"])


def build(out: Path) -> None:
    """Write OUTPUTS into `out` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="web-assets-") as tmp:
        work = Path(tmp)
        for name in SOURCES:
            shutil.copy2(HERE / name, work / name)
        _run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], work)
        modules = work / "node_modules"
        sass = [str(modules / ".bin" / "sass"), "--pkg-importer=node", "--style=compressed", "--no-source-map"]
        _run([*sass, "--no-color", "council.scss", str(out / "council.css")], work)
        shutil.copyfile(modules / "govuk-frontend" / "dist" / "govuk" / "govuk-frontend.min.js", out / OUTPUTS[1])
        manifest = {
            "built_by": "gateway/web_assets/build.py",
            "versions": {name: _version(modules, name) for name in ("govuk-frontend", "sass")},
            "sources": {name: sha256(HERE / name) for name in SOURCES},
            "outputs": {name: sha256(out / name) for name in OUTPUTS[:2]},
        }
        (out / "BUILD.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="build in a temporary folder and compare with static/")
    args = parser.parse_args(argv)
    if not args.check:
        build(STATIC)
        print(f"built {', '.join(OUTPUTS)} in {STATIC}")
        return 0
    with tempfile.TemporaryDirectory(prefix="web-assets-check-") as tmp:
        build(Path(tmp))
        differ = [name for name in OUTPUTS if not filecmp.cmp(Path(tmp) / name, STATIC / name, shallow=False)]
    if differ:
        print(f"gateway/static/ is stale ({', '.join(differ)}): run gateway/web_assets/build.py", file=sys.stderr)
        return 1
    print("gateway/static/ matches a fresh build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
