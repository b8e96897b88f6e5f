"""cli/render.py off a terminal: progress is one plain line per 10 % step, and a name's terminal escapes never
reach the screen (rich stripped them before the lines were written with click.echo)."""

from __future__ import annotations

from phonevault.cli.render import progress


def test_progress_lines_off_a_terminal_step_by_ten_percent_and_carry_no_escapes(capsys):
    with progress("importing \x1b[2J\r\x07phone", 1000) as update:
        for done in range(0, 1001, 50):
            update(done)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10, lines
    assert "".join(lines).isprintable(), lines
    assert lines[0].endswith(": 10 % (100 B of 1000 B)") and lines[-1].endswith(": 100 % (1000 B of 1000 B)")


def test_progress_prints_nothing_until_a_total_is_known(capsys):
    with progress("checking", None) as update:
        update(5)
        assert capsys.readouterr().err == ""
        update(10, 10)
    assert capsys.readouterr().err.splitlines() == ["checking: 100 % (10 B of 10 B)"]
