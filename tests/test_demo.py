"""`distnmf demo` runs (in its small form) so that it cannot rot."""

from __future__ import annotations

from distnmf_api.demo import run_demo


def test_demo_small(tmp_path, capsys) -> None:
    run_demo(tmp_path, small=True)
    out = capsys.readouterr().out
    for expected in ("dashboard  http://127.0.0.1:", "Top tags of each tag component", "Related tags",
                     "Digits most similar to one digit", "succeeded", "shut down"):
        assert expected in out
    assert (tmp_path / "digits_components.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "digits_loss.png").stat().st_size > 0
