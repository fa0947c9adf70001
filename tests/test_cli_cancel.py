"""Ctrl-C during ``recist-seg`` reaches the job through its cancel token.

Before, ``cli.main`` set the token only after ``KeyboardInterrupt`` had unwound the
job, so no job ever saw it: the run stopped mid-file and printed no report.
"""

from __future__ import annotations

import os
import signal

from napari_recist_seg import cli

STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]


def test_first_ctrl_c_cancels_the_job_cleanly(tmp_path, make_isic_dataset, monkeypatch, capsys):
    ds = make_isic_dataset(tmp_path / "ds", STEMS)
    out = tmp_path / "out"
    sent = []
    original = cli._StderrProgress.__call__

    def progress_then_ctrl_c(self, event):
        original(self, event)
        # After the first image's targets are written, the user presses Ctrl-C.
        if not sent and not event.message.startswith("RECIST from masks"):
            sent.append(event.message)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli._StderrProgress, "__call__", progress_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    code = cli.main(["targets", str(ds), "--out", str(out), "--no-grabcut"])
    err = capsys.readouterr().err

    assert code == 130
    # The job itself saw the token: it returned its report (printed) after one image.
    assert "1 processed, 0 skipped (already done), 0 failed, cancelled" in err
    assert sorted(p.name for p in (out / "ellipse").iterdir()) == [f"{STEMS[0]}.png"]
    # Its recist.csv lists the finished image only.
    from napari_recist_seg.data.recist_csv import read_recist_csv

    assert {r.image.stem for r in read_recist_csv(out / "recist.csv")} == {STEMS[0]}
    # The previous handler is back once the command returns.
    assert signal.getsignal(signal.SIGINT) is before


def test_second_ctrl_c_interrupts_at_once(monkeypatch, capsys):
    def job(args, cancel):
        os.kill(os.getpid(), signal.SIGINT)  # first: sets the token, job keeps going
        assert cancel.cancelled
        os.kill(os.getpid(), signal.SIGINT)  # second: KeyboardInterrupt now
        raise AssertionError("not interrupted")

    monkeypatch.setattr(cli, "_run", job)
    assert cli.main(["evaluate", "--pred", "p", "--gt", "g"]) == 130
    assert "cancelled; finished outputs are kept" in capsys.readouterr().err
