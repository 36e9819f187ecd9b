"""Editable installs: a ``distnmf_api`` package whose ``__path__`` is the source folder ``api/``.

Wheels copy ``api/`` to ``distnmf_api/`` (``force-include`` in pyproject.toml); an editable
install must not copy (edits would not show), and hatch cannot rename a folder there, so it
gets this one generated ``__init__.py`` instead of the copy.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SHIM = '''"""Editable install of distnmf's service: the package is the source folder below."""
__path__ = [{folder!r}]
with open({init!r}, encoding="utf-8") as _source:
    exec(compile(_source.read(), {init!r}, "exec"))
'''


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version != "editable":
            return
        folder = os.path.join(self.root, "api")
        init = os.path.join(folder, "__init__.py")
        self._shim = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
        with self._shim:
            self._shim.write(SHIM.format(folder=folder, init=init))
        build_data["force_include_editable"] = {self._shim.name: "distnmf_api/__init__.py"}

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if version == "editable":
            os.unlink(self._shim.name)
