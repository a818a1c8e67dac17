"""`wxscale report`: findings first, figures, the tables that matter; nothing from a file is trusted."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wxscale.cli import main  # noqa: E402


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    fig.savefig(path)
    plt.close(fig)


def _study(root: Path) -> Path:
    """A study folder as the demo leaves it, with known numbers."""
    (root / "fit").mkdir(parents=True)
    (root / "sweep" / "runs" / "C1e12_s0").mkdir(parents=True)
    (root / "eval").mkdir()
    (root / "fit" / "fits.csv").write_text(
        "quantity,approach,coefficient,exponent,exponent_lo,exponent_hi,n_points,level,n_bootstrap,n_bootstrap_ok\n"
        "n_opt,2,0.119,0.451,0.300,0.540,4,0.95,200,190\n"
        "l_opt,2,2800,-0.492,-0.532,-0.464,4,0.95,200,190\n"
        "n_opt,3,0.2,0.418,0.29,0.60,18,0.95,200,150\n"
        "E,3,0.001,,,,18,0.95,200,150\nA,3,5.0,,,,18,0.95,200,150\nB,3,7.0,,,,18,0.95,200,150\n"
        "alpha,3,,1.13,0.9,1.4,18,0.95,200,150\nbeta,3,,0.81,0.7,0.95,18,0.95,200,150\n")
    (root / "fit" / "isoflop.csv").write_text(
        "budget_flops,n_opt,interior\n1.5e11,1e4,True\n3e11,2e4,True\n6e11,3e4,False\n1.2e12,5e4,True\n")
    (root / "sweep" / "sweep.json").write_text(json.dumps({"summary": {
        "n_branches": 18, "n_trunks": 5, "continual_flops": 6.3e12, "independent_flops": 9.9e12,
        "saved_fraction": 0.3636}}))
    (root / "sweep" / "runs.csv").write_text(
        "run_id,val_loss,samples_per_s,mfu,git_sha\nC1e12_s0,0.5,100,0.05,abc\nC1e12_s1,0.4,300,0.07,abc\n")
    (root / "sweep" / "runs" / "C1e12_s0" / "summary.json").write_text("{}")
    (root / "sweep" / "runs" / "C1e12_s0" / "metrics.csv").write_text(
        "step,train_loss\n" + "".join(f"{i},{1 / (i + 1)}\n" for i in range(40)))
    (root / "eval" / "eval.json").write_text(json.dumps({"run_dir": "/x/sweep/runs/C1e12_s1", "split": "test",
                                                         "n_inits": 7}))
    (root / "eval" / "rmse.csv").write_text(
        "channel,lead_hours,model,persistence,climatology\n"
        "h,6,15.6,19.8,50\nh,24,30.5,41.25,50\nh,72,120,126,50\n")
    (root / "eval" / "acc.csv").write_text(
        "channel,lead_hours,model,persistence\nh,6,0.99,0.98\nh,24,0.95,0.9\nh,72,0.61,0.55\n")
    _png(root / "fit" / "isoflop.png")
    _png(root / "eval" / "rmse_acc.png")
    return root


def test_the_report_opens_with_the_findings(tmp_path):
    root = _study(tmp_path / "study")
    assert main(["report", str(root)]) == 0
    page = (root / "report.md").read_text()
    first_screen = page.split("## Figures", 1)[0]
    assert first_screen.index("## Findings") < len(first_screen)
    assert "N_opt = 0.119 C^0.451, exponent 95 % interval [0.300, 0.540]" in first_screen
    assert "L_opt = 2.8e+03 C^-0.492" in first_screen and "[-0.532, -0.464]" in first_screen
    assert "Approach 3: C^0.418 [0.290, 0.600]" in first_screen
    assert "alpha [0.900, 1.400], beta [0.700, 0.950]" in first_screen
    assert "3 of 4 budgets have an interior minimum" in first_screen
    assert "`C1e12_s1`" in first_screen
    assert "| h | 24 h | 30.5 | 41.25 | 0.95 | 0.9 |" in first_screen
    assert "| h | 72 h | 120 | 126 | 0.61 | 0.55 |" in first_screen
    assert "| h | 6 h |" not in first_screen
    assert "36 % (6.3e+12 FLOPs for 18 branches on 5 trunks, against 9.9e+12" in first_screen
    assert "median 200 samples/s over 2 runs, median MFU 6.00 %" in first_screen
    # Figures before tables, the IsoFLOP figure first; per-run logs linked, not pasted.
    assert page.index("## Figures") < page.index("## Tables")
    assert page.index("fit/isoflop.png") < page.index("eval/rmse_acc.png")
    assert "### sweep/runs/C1e12_s0/metrics.csv" not in page
    assert "[sweep/runs/C1e12_s0/metrics.csv](sweep/runs/C1e12_s0/metrics.csv) (40 rows)" in page
    tables = page.split("## Tables", 1)[1]
    assert tables.index("### fit/isoflop.csv") < tables.index("### fit/fits.csv") < tables.index("### sweep/runs.csv")


def test_the_report_escapes_file_content_and_warns_of_garbage(tmp_path, capsys):
    root = tmp_path / "hostile"
    root.mkdir()
    (root / "runs.csv").write_text('run_id,note\nr1,"<script>alert(1)</script> | x"\n')
    (root / "broken.csv").write_text("a,b\n1,2,3\n")
    (root / "binary.csv").write_bytes(b"a,b\n\x00\x01\x02\n")
    (root / "fake.png").write_text("<html>not an image</html>")
    _png(root / "real.png")
    assert main(["report", str(root)]) == 0
    page = (root / "report.md").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; \\| x" in page
    assert "## Warnings" in page
    warnings = page.split("## Warnings", 1)[1]
    assert "`broken.csv` was not rendered" in warnings and "line 2 has 3 fields" in warnings
    assert "`binary.csv` was not rendered" in warnings
    assert "`fake.png` was not embedded: it is not a PNG image" in warnings
    assert "![fake]" not in page and "![real](real.png)" in page
    assert "3 file(s) not rendered" in capsys.readouterr().out


def test_a_folder_of_garbage_only_is_an_error(tmp_path, capsys):
    root = tmp_path / "g"
    root.mkdir()
    (root / "x.png").write_text("no")
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err
    assert "no CSV tables or PNG plots (1 unreadable file(s))" in err
    assert not (root / "report.md").exists()
