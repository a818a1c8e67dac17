"""`wxscale report DIR`: one Markdown page of a study or benchmark folder, findings first.

    wxscale report DIR [--max-rows 30] [--title TEXT]

Writes ``DIR/report.md`` in this order:

1. **Findings**, read from the files the stages write wherever they lie under DIR: the laws with their intervals
   (``fits.csv``), how many budgets have an interior IsoFLOP minimum (``isoflop.csv``), a held-out validation
   (``validation.csv``), the best model's RMSE and ACC at 24 h and 72 h against persistence (an evaluation's
   ``eval.json``, ``rmse.csv``, ``acc.csv``), the compute that continual training saved (``sweep.json``), and
   throughput and MFU (``runs.csv`` or ``throughput.csv``). A finding whose file is absent is left out.
2. **Figures**, the study's main ones first (IsoFLOP, laws, rollout scores), every PNG embedded by relative path.
3. **Tables** that matter, in the order of the pipeline; long ones show their first and last rows with a link.
   Per-run logs (``metrics.csv`` of each run dir) and raw replicates are linked, not pasted.
4. **Provenance**: columns of :data:`wxscale.provenance.PROVENANCE_COLUMNS` that hold one value throughout a table
   move there, with every distinct value found, and the commit and host that rendered the page.

Nothing in a file is trusted: cell text is HTML-escaped and pipe-escaped, a CSV that does not parse as a table or a
PNG that is not a PNG is not rendered and is listed under **Warnings** with the reason. Hidden folders are skipped.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from urllib.parse import quote

from wxscale.errors import WxscaleError
from wxscale.files import write_text_atomic
from wxscale.provenance import PROVENANCE_COLUMNS, git_sha

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FINDING_LEADS_HOURS = (24, 72)

# What the known tables are (by file name), shown under their headings; their order is the order on the page.
DESCRIPTIONS = {
    "isoflop.csv": "IsoFLOP optima per budget (Hoffmann et al. 2022, Approach 2) with bootstrap intervals.",
    "fits.csv": "Scaling-law fits (power laws and the parametric law) with bootstrap intervals.",
    "validation.csv": "The laws' prediction at a held-out budget against the runs made there.",
    "predictions.csv": "Predicted N_opt, D_opt and loss at the requested budgets.",
    "runs.csv": "Finished branches (`wxscale sweep run`): final validation loss, speed and provenance.",
    "comparison.csv": "WSD with a 1-sqrt cooldown against cosine at equal compute (`wxscale schedules`).",
    "rmse.csv": "Rollout RMSE per channel and lead time: the model against persistence and climatology.",
    "acc.csv": "Rollout anomaly correlation per channel and lead time: the model against persistence.",
    "throughput.csv": "Training throughput per configuration (`wxscale bench throughput`): step time median/min/"
                      "max over repeats (warm-up excluded), samples/s, TFLOP/s, MFU, loader alone, peak memory.",
    "scaling.csv": "Data-parallel scaling (`wxscale bench scaling`): efficiency = X(R) / (R/R0 X(R0)); weak keeps "
                   "the per-rank batch, strong the global batch.",
    "model_bench.csv": "Model forward+backward speed against the matmul peak (`wxscale bench model`).",
    "loader_bench.csv": "Loader throughput against a plain read (`wxscale bench loader`).",
    "plan.csv": "Planned branches of the sweep (`wxscale sweep plan`): budget, size, samples, cooldown.",
}
# Raw material behind the tables above: linked, never pasted.
LINK_ONLY = {"metrics.csv", "fits_bootstrap.csv", "spectra.csv", "inits.csv"}
# Figures shown first, in this order (by file name); the rest follow by path.
KEY_FIGURES = ("isoflop.png", "scaling_laws.png", "validation.png", "rmse_acc.png", "spectra.png",
               "loss_curves.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="a benchmark, sweep or study folder")
    parser.add_argument("--max-rows", type=int, default=30,
                        help="longer tables show their first and last rows only (default 30)")
    parser.add_argument("--title", default=None, help="page title (default: from the folder's name)")


# --------------------------------------------------------------------------------------------------------------
# reading what is there, distrustfully


@dataclass
class Table:
    path: Path
    rel: str
    columns: list[str]
    rows: list[dict[str, str]]


@dataclass
class Folder:
    """Everything the page is made from, and what could not be used."""

    root: Path
    tables: list[Table] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def find(self, name: str) -> Table | None:
        """The shallowest readable table called ``name``."""
        hits = [t for t in self.tables if t.path.name == name]
        return min(hits, key=lambda t: (len(t.path.parts), t.rel)) if hits else None

    def find_file(self, name: str) -> Path | None:
        hits = [p for p in self.root.rglob(name) if p.is_file() and _visible(p, self.root)]
        return min(hits, key=lambda p: (len(p.parts), str(p))) if hits else None


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV as (columns, rows); ValueError when it is not a rectangular, text table with a header."""
    with open(path, newline="", encoding="utf-8") as f:
        text = f.read()
    if "\x00" in text:
        raise ValueError("binary content")
    reader = csv.reader(text.splitlines())
    lines = list(reader)
    if not lines:
        return [], []
    columns = [c.strip() for c in lines[0]]
    if any(not c for c in columns) or len(set(columns)) != len(columns):
        raise ValueError("its header has empty or repeated column names")
    rows = []
    for number, values in enumerate(lines[1:], start=2):
        if not values:
            continue
        if len(values) != len(columns):
            raise ValueError(f"line {number} has {len(values)} fields where the header has {len(columns)}")
        rows.append(dict(zip(columns, values, strict=True)))
    return columns, rows


def collect(root: Path) -> Folder:
    folder = Folder(root)
    for path in sorted(p for p in root.rglob("*.csv") if p.is_file() and _visible(p, root)):
        try:
            columns, rows = read_table(path)
        except (OSError, csv.Error, UnicodeDecodeError, ValueError) as err:
            folder.warnings.append(f"`{folder.rel(path)}` was not rendered: not a readable CSV table ({err})")
            continue
        folder.tables.append(Table(path, folder.rel(path), columns, rows))
    for path in sorted(p for p in root.rglob("*.png") if p.is_file() and _visible(p, root)):
        try:
            with open(path, "rb") as f:
                magic = f.read(len(PNG_MAGIC))
        except OSError as err:
            folder.warnings.append(f"`{folder.rel(path)}` was not embedded: unreadable ({err.strerror or err})")
            continue
        if magic != PNG_MAGIC:
            folder.warnings.append(f"`{folder.rel(path)}` was not embedded: it is not a PNG image")
            continue
        folder.figures.append(path)
    return folder


# --------------------------------------------------------------------------------------------------------------
# Markdown pieces


def escape(text: str) -> str:
    """Text from a file, safe in a Markdown table cell: HTML escaped, pipes escaped, one line."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _cell(v: str | None) -> str:
    """A CSV value for a Markdown cell: numbers to 4 significant digits (integers exact), text escaped."""
    v = (v or "").strip()
    try:
        f = float(v)
    except ValueError:
        return escape(v)
    if v.lstrip("-").isdigit() or not math.isfinite(f):
        return escape(v)
    return f"{f:.4g}"


def link(rel: str, text: str | None = None) -> str:
    return f"[{escape(text or rel)}]({quote(rel)})"


def _anchor(text: str) -> str:
    """GitHub-style heading anchor."""
    keep = "".join(ch for ch in text.lower() if ch.isalnum() or ch in " -_")
    return keep.replace(" ", "-")


def split_provenance(columns: list[str], rows: list[dict[str, str]]) -> tuple[list[str], dict[str, str]]:
    """Columns to show, and the provenance columns that hold one value in every row (moved out of the table)."""
    constant = {}
    for c in columns:
        if c in PROVENANCE_COLUMNS and rows:
            values = {r.get(c, "") for r in rows}
            if len(values) == 1:
                constant[c] = values.pop()
    return [c for c in columns if c not in constant], constant


def markdown_table(columns: list[str], rows: list[dict[str, str]], max_rows: int) -> tuple[str, int]:
    """A Markdown table of ``rows``; beyond ``max_rows`` the first and last rows with a gap row. Returns the
    text and how many rows were left out."""
    shown, left_out = rows, 0
    if max_rows > 0 and len(rows) > max_rows:
        head = (max_rows + 1) // 2
        tail = max_rows - head
        left_out = len(rows) - head - tail
        gap = {c: "" for c in columns}
        gap[columns[0]] = f"... {left_out} rows ..."
        shown = rows[:head] + [gap] + (rows[-tail:] if tail else [])
    lines = ["| " + " | ".join(escape(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in shown]
    return "\n".join(lines), left_out


# --------------------------------------------------------------------------------------------------------------
# findings


def _num(v: str | None) -> float | None:
    try:
        f = float(v) if v not in (None, "") else None
    except ValueError:
        return None
    return f if f is not None and math.isfinite(f) else None


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def _interval(row: dict[str, str], col: str, spec: str = ".3f") -> str:
    lo, hi = _num(row.get(f"{col}_lo")), _num(row.get(f"{col}_hi"))
    return f" [{_fmt(lo, spec)}, {_fmt(hi, spec)}]" if lo is not None and hi is not None else ""


def _law(fits: Table, approach: str, quantity: str) -> dict[str, str] | None:
    return next((r for r in fits.rows if r.get("approach") == approach and r.get("quantity") == quantity), None)


def law_findings(folder: Folder) -> list[str]:
    fits = folder.find("fits.csv")
    if fits is None:
        return []
    out = []
    level = _num(next((r.get("level") for r in fits.rows if r.get("level")), None)) or 0.95
    pct = f"{100 * level:.0f} %"
    for quantity, label in (("n_opt", "Compute-optimal size"), ("l_opt", "Loss at the optimum"),
                            ("d_opt", "Compute-optimal samples")):
        symbol = {"n_opt": "N_opt", "l_opt": "L_opt", "d_opt": "D_opt"}[quantity]
        r2, r3 = _law(fits, "2", quantity), _law(fits, "3", quantity)
        has2 = r2 is not None and _num(r2.get("exponent")) is not None
        has3 = r3 is not None and _num(r3.get("exponent")) is not None
        if has2:
            line = (f"- **{label}** (Approach 2, {r2.get('n_points', '?')} budgets): {symbol} = "
                    f"{_fmt(_num(r2.get('coefficient')))} C^{_fmt(_num(r2.get('exponent')), '.3f')}, exponent "
                    f"{pct} interval{_interval(r2, 'exponent')}")
            if has3:
                line += f"; Approach 3: C^{_fmt(_num(r3.get('exponent')), '.3f')}{_interval(r3, 'exponent')}"
        elif has3:
            line = (f"- **{label}** (Approach 3 only): {symbol} = {_fmt(_num(r3.get('coefficient')))} "
                    f"C^{_fmt(_num(r3.get('exponent')), '.3f')}, exponent {pct} interval{_interval(r3, 'exponent')}")
        else:
            continue
        out.append(line + ".")
    params = {q: _law(fits, "3", q) for q in ("E", "A", "B", "alpha", "beta")}
    if all(params.values()):
        def value(q: str) -> float | None:
            return _num(params[q].get("coefficient")) if _num(params[q].get("coefficient")) is not None \
                else _num(params[q].get("exponent"))

        ok = params["alpha"].get("n_bootstrap_ok") or "?"
        total = params["alpha"].get("n_bootstrap") or "?"
        alpha_iv = _interval(params["alpha"], "coefficient") or _interval(params["alpha"], "exponent")
        beta_iv = _interval(params["beta"], "coefficient") or _interval(params["beta"], "exponent")
        out.append(f"- **Parametric law** (Approach 3): L = {_fmt(value('E'))} + {_fmt(value('A'))} / N^"
                   f"{_fmt(value('alpha'), '.3f')} + {_fmt(value('B'))} / D^{_fmt(value('beta'), '.3f')}; alpha"
                   f"{alpha_iv}, beta{beta_iv} ({pct}; {ok} of {total} bootstrap fits usable).")
    elif not any(_law(fits, "2", q) for q in ("n_opt", "l_opt")):
        out.append("- **Laws**: no law was fitted (see the fit's message).")
    return out


def lr_findings(folder: Folder) -> list[str]:
    """The demo's twin sweeps: the N_opt exponent with scanned per-size rates against one fixed rate."""
    table = folder.find("lr_comparison.csv")
    if table is None or not table.rows:
        return []
    parts = [f"{escape(r.get('learning_rate', '?'))} rate: {_fmt(_num(r.get('n_opt_exponent')), '.3f')}"
             f"{_interval(r, 'exponent')}" for r in table.rows]
    return ["- **Learning rate and the exponent**: N_opt exponent with " + "; with ".join(parts) + "."]


def isoflop_findings(folder: Folder) -> list[str]:
    iso = folder.find("isoflop.csv")
    if iso is None:
        fits = folder.find("fits.csv")
        return ["- **IsoFLOP minima**: no budget has an interior minimum, so Approach 2 was not fitted."] \
            if fits is not None else []
    interior = [r for r in iso.rows if str(r.get("interior", "True")).lower() in ("true", "1")]
    return [f"- **IsoFLOP minima**: {len(interior)} of {len(iso.rows)} budgets have an interior minimum."]


def validation_findings(folder: Folder) -> list[str]:
    """`sweep validate`: the laws fitted below a held-out budget against the runs made at it."""
    val = folder.find("validation.csv")
    if val is None or not val.rows:
        return []
    out = []
    for r in val.rows:
        err = _num(r.get("l_rel_error"))
        inside = str(r.get("l_in_interval", "")).lower() in ("true", "1")
        out.append(f"- **Held-out budget** C = {_fmt(_num(r.get('budget_flops')))} (Approach "
                   f"{escape(r.get('approach', '?'))}, fitted below C): predicted loss "
                   f"{_fmt(_num(r.get('l_opt')), '.4g')} [{_fmt(_num(r.get('l_opt_lo')), '.4g')}, "
                   f"{_fmt(_num(r.get('l_opt_hi')), '.4g')}], measured best {_fmt(_num(r.get('best_loss')), '.4g')} "
                   f"({escape(r.get('best_size', '?'))})" + (f", error {100 * err:+.1f} %" if err is not None else "")
                   + f", {'inside' if inside else 'outside'} the interval; predicted N_opt "
                   f"{_fmt(_num(r.get('n_opt')))}.")
    return out


def eval_findings(folder: Folder) -> list[str]:
    info_path = folder.find_file("eval.json")
    if info_path is None:
        return []
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        folder.warnings.append(f"`{folder.rel(info_path)}` was not read: {err}")
        return []
    rmse = next((t for t in folder.tables if t.path == info_path.parent / "rmse.csv"), None)
    acc = next((t for t in folder.tables if t.path == info_path.parent / "acc.csv"), None)
    if rmse is None:
        return []
    run = Path(str(info.get("run_dir", "?"))).name
    leads = [h for h in FINDING_LEADS_HOURS if any(_num(r.get("lead_hours")) == h for r in rmse.rows)]
    if not leads:
        return [f"- **Best model** `{escape(run)}`: the rollout reaches no lead of "
                f"{' or '.join(f'{h} h' for h in FINDING_LEADS_HOURS)}; see the evaluation's tables."]
    acc_by = {(r.get("channel"), _num(r.get("lead_hours"))): r for r in (acc.rows if acc else [])}
    lines = [f"- **Best model** `{escape(run)}` on the {escape(str(info.get('split', 'test')))} split "
             f"({info.get('n_inits', '?')} initial times), against persistence:", "",
             "  | channel | lead | RMSE model | RMSE persistence | ACC model | ACC persistence |",
             "  |---|---|---|---|---|---|"]
    for r in rmse.rows:
        lead = _num(r.get("lead_hours"))
        if lead not in leads:
            continue
        a = acc_by.get((r.get("channel"), lead), {})
        lines.append(f"  | {_cell(r.get('channel'))} | {lead:g} h | {_cell(r.get('model'))} | "
                     f"{_cell(r.get('persistence'))} | {_cell(a.get('model')) or 'n/a'} | "
                     f"{_cell(a.get('persistence')) or 'n/a'} |")
    if acc is None:
        lines.append("")
        lines.append("  ACC needs a climatology, which the dataset does not hold (its train split spans < 1 year).")
    return lines + [""]


def compute_findings(folder: Folder) -> list[str]:
    sweep_json = folder.find_file("sweep.json")
    if sweep_json is None:
        return []
    try:
        s = json.loads(sweep_json.read_text())["summary"]
        saved, cont, ind = float(s["saved_fraction"]), float(s["continual_flops"]), float(s["independent_flops"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        folder.warnings.append(f"`{folder.rel(sweep_json)}` has no readable plan summary ({err})")
        return []
    return [f"- **Compute saved by continual training**: {100 * saved:.0f} % ({cont:.3g} FLOPs for "
            f"{s.get('n_branches', '?')} branches on {s.get('n_trunks', '?')} trunks, against {ind:.3g} for "
            "independent runs)."]


def speed_findings(folder: Folder) -> list[str]:
    runs = folder.find("runs.csv")
    if runs is not None and runs.rows:
        sps = [v for r in runs.rows if (v := _num(r.get("samples_per_s"))) is not None]
        mfu = [v for r in runs.rows if (v := _num(r.get("mfu"))) is not None]
        if sps:
            return [f"- **Throughput**: median {_fmt(median(sps))} samples/s over {len(sps)} runs"
                    + (f", median MFU {100 * median(mfu):.2f} % (max {100 * max(mfu):.2f} %)." if mfu else ".")]
    tp = folder.find("throughput.csv")
    if tp is not None and tp.rows:
        best = max(tp.rows, key=lambda r: _num(r.get("samples_per_s")) or 0.0)
        mfu = _num(best.get("mfu"))
        return [f"- **Throughput**: best {_fmt(_num(best.get('samples_per_s')))} samples/s "
                f"({escape(best.get('size', '?'))}, batch {escape(best.get('batch', '?'))}, "
                f"{escape(best.get('precision', '?'))})" + (f", MFU {100 * mfu:.2f} %." if mfu is not None else ".")]
    return []


def findings(folder: Folder) -> list[str]:
    lines = []
    for part in (law_findings, lr_findings, isoflop_findings, validation_findings, eval_findings, compute_findings,
                 speed_findings):
        lines += part(folder)
    return lines


# --------------------------------------------------------------------------------------------------------------
# the page


def _in_run_dir(path: Path) -> bool:
    return (path.parent / "summary.json").is_file() or (path.parent / "config.yaml").is_file()


def _table_order(t: Table) -> tuple:
    names = list(DESCRIPTIONS)
    return (names.index(t.path.name) if t.path.name in names else len(names), len(t.path.parts), t.rel)


def _figure_order(folder: Folder, p: Path) -> tuple:
    return (KEY_FIGURES.index(p.name) if p.name in KEY_FIGURES else len(KEY_FIGURES), folder.rel(p))


def build_report(root: Path, max_rows: int = 30, title: str | None = None) -> str:
    """The Markdown page for folder ``root`` (see the module docstring)."""
    folder = collect(root)
    if not folder.tables and not folder.figures:
        why = f" ({len(folder.warnings)} unreadable file(s))" if folder.warnings else ""
        raise WxscaleError(f"{root} holds no CSV tables or PNG plots{why}: run a benchmark or a study into it "
                           "first (e.g. `wxscale bench throughput --out DIR`)")
    provenance: dict[str, set[str]] = {}
    pasted = [t for t in folder.tables if t.path.name not in LINK_ONLY and not _in_run_dir(t.path)]
    linked = [t for t in folder.tables if t not in pasted]

    title = title or f"wxscale report: {root.resolve().name}"
    lines = [f"# {escape(title)}", "",
             f"{len(folder.tables)} table(s) and {len(folder.figures)} figure(s) under `{escape(str(root))}`. "
             f"Rendered {time.strftime('%Y-%m-%d %H:%M:%S %z')} on {socket.gethostname()} at git "
             f"{git_sha() or '(unknown)'}.", ""]
    found = findings(folder)
    if found:
        lines += ["## Findings", "", *found, ""]

    if folder.figures:
        lines += ["## Figures", ""]
        for path in sorted(folder.figures, key=lambda p: _figure_order(folder, p)):
            rel = folder.rel(path)
            lines += [f"### {escape(rel)}", "", f"![{escape(path.stem)}]({quote(rel)})", ""]

    if pasted:
        lines += ["## Tables", ""]
    for t in sorted(pasted, key=_table_order):
        shown, constant = split_provenance(t.columns, t.rows)
        for k, v in constant.items():
            if v:
                provenance.setdefault(k, set()).add(v)
        lines += [f"### {escape(t.rel)}", ""]
        if t.path.name in DESCRIPTIONS:
            lines += [DESCRIPTIONS[t.path.name], ""]
        if not t.columns:
            lines += ["(empty file)", ""]
        elif not t.rows:
            lines += ["(no rows yet; columns: " + ", ".join(f"`{escape(c)}`" for c in t.columns) + ")", ""]
        else:
            table, left_out = markdown_table(shown, t.rows, max_rows)
            lines += [table, ""]
            note = (f"{left_out} of {len(t.rows)} rows left out; the full table: " if left_out else "Source: ")
            lines += [f"*{note}{link(t.rel)}.*", ""]

    if linked:
        lines += ["## Logs and raw tables (linked)", ""]
        lines += [f"- {link(t.rel)} ({len(t.rows)} rows)" for t in sorted(linked, key=lambda t: t.rel)]
        lines.append("")

    lines += ["## Provenance", ""]
    if provenance:
        lines += ["| field | value(s) |", "|---|---|"]
        order = {c: i for i, c in enumerate(PROVENANCE_COLUMNS)}
        for k in sorted(provenance, key=lambda c: order.get(c, len(order))):
            lines.append(f"| {k} | {'; '.join(_cell(v) for v in sorted(provenance[k]))} |")
    else:
        lines.append("(the tables carry no provenance columns that hold one value throughout)")
    if folder.warnings:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in folder.warnings]]
    return "\n".join(lines).rstrip() + "\n"


def write_report(root: str | os.PathLike, max_rows: int = 30, title: str | None = None) -> Path:
    """Write ``root/report.md`` atomically and return its path."""
    root = Path(root)
    if not root.is_dir():
        raise WxscaleError(f"report: {root} is not a folder; give a benchmark or study output folder")
    text = build_report(root, max_rows=max_rows, title=title)
    out = root / "report.md"
    try:
        write_text_atomic(out, text)
    except OSError as err:
        raise WxscaleError(f"report: cannot write {out} ({err.strerror or err}); make {root} writable") from None
    return out


def run(args: argparse.Namespace) -> int:
    if args.max_rows < 0:
        raise WxscaleError("--max-rows must be >= 0 (0: no truncation)")
    out = write_report(args.dir, max_rows=args.max_rows, title=args.title)
    text = out.read_text()
    warned = text.count("\n- `") if "## Warnings" in text else 0
    print(f"wrote {out}" + (f" ({warned} file(s) not rendered: see its Warnings)" if warned else ""))
    return 0
