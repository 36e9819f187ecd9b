"""Package boundaries: the service installs as distnmf_api, and distnmf never imports it."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_distnmf_and_distnmf_api_only(tmp_path) -> None:
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "build", "--wheel", "--quiet", "-o", str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"distnmf", "distnmf_api", "distnmf-0.1.0.dist-info"}
    assert "distnmf_api/routers/jobs.py" in names and "distnmf_api/__init__.py" in names
    entry_points = zipfile.ZipFile(wheel).read("distnmf-0.1.0.dist-info/entry_points.txt").decode()
    assert "serve = distnmf_api.cli:serve" in entry_points


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_dependencies_point_one_way() -> None:
    """distnmf never imports the service; the service imports itself as distnmf_api, never as api."""
    for path in (ROOT / "distnmf").rglob("*.py"):
        bad = {m for m in _imported_modules(path) if m.split(".")[0] in ("api", "distnmf_api")}
        assert not bad, f"{path.relative_to(ROOT)} imports the service: {bad}"
    for path in [*(ROOT / "api").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        bad = {m for m in _imported_modules(path) if m.split(".")[0] == "api"}
        assert not bad, f"{path.relative_to(ROOT)} imports 'api'; the installed name is distnmf_api: {bad}"


def test_serve_without_the_server_extra_names_it() -> None:
    """With fastapi missing, `distnmf serve` says which extra to install (no traceback)."""
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from distnmf.cli import app\n"
            "app(['serve', '--port', '1'], prog_name='distnmf')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "error: `distnmf serve` needs the server extra (fastapi is not installed): " \
           "pip install 'distnmf[server]'" in run.stderr
    assert "Traceback" not in run.stderr
