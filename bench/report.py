"""`wxscale report DIR`: one Markdown page of a benchmark or study folder's CSV tables and PNG plots.

    wxscale report DIR [--max-rows 30] [--title TEXT]

Writes ``DIR/report.md``: a title, the provenance, a list of contents, then folder by folder every CSV under DIR
rendered as a Markdown table (tables longer than ``--max-rows`` show their first and last rows, with a note and a
link to the full file) and every PNG embedded by its relative path, so the page renders wherever DIR goes.
Hidden folders (``.work`` and the like) are skipped.

Provenance: columns of :data:`wxscale.provenance.PROVENANCE_COLUMNS` (and ``git_sha``, ``host``, ``device`` of a
sweep's ``runs.csv``) that hold one value throughout a table move out of it into the provenance section, which
lists every distinct value found; the page also says which commit and host rendered it. Works for
``wxscale bench throughput/scaling/loader/model`` folders and for sweep and fit folders (plan.csv, runs.csv,
isoflop.csv, fits.csv).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import socket
import time
from pathlib import Path

from wxscale.errors import WxscaleError
from wxscale.files import write_text_atomic
from wxscale.provenance import PROVENANCE_COLUMNS, git_sha

# What the known tables are (by file name), shown under their headings.
DESCRIPTIONS = {
    "throughput.csv": "Training throughput per configuration (`wxscale bench throughput`): step time median/min/"
                      "max over repeats (warm-up excluded), samples/s, TFLOP/s, MFU, loader alone, peak memory.",
    "scaling.csv": "Data-parallel scaling (`wxscale bench scaling`): efficiency = X(R) / (R/R0 X(R0)); weak keeps "
                   "the per-rank batch, strong the global batch.",
    "loader_bench.csv": "Loader throughput against a plain read (`wxscale bench loader`).",
    "model_bench.csv": "Model forward+backward speed against the matmul peak (`wxscale bench model`).",
    "plan.csv": "Planned branches of the sweep (`wxscale sweep plan`): budget, size, samples, cooldown.",
    "runs.csv": "Finished branches (`wxscale sweep run`): final validation loss, speed and provenance.",
    "isoflop.csv": "IsoFLOP optima per budget (Hoffmann et al. 2022, Approach 2) with bootstrap intervals.",
    "fits.csv": "Scaling-law fits (power laws and the parametric law) with bootstrap intervals.",
    "metrics.csv": "Training log of one run, one row per log interval.",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="a benchmark, sweep or study folder")
    parser.add_argument("--max-rows", type=int, default=30,
                        help="longer tables show their first and last rows only (default 30)")
    parser.add_argument("--title", default=None, help="page title (default: from the folder's name)")


def _cell(v: str) -> str:
    """A CSV value for a Markdown cell: numbers to 4 significant digits, pipes escaped."""
    v = (v or "").strip()
    try:
        f = float(v)
    except ValueError:
        return v.replace("|", "\\|").replace("\n", " ")
    if v.lstrip("-").isdigit():  # integers stay exact (step counts, sample counts, seeds)
        return v
    if not math.isfinite(f):
        return v
    return f"{f:.4g}"


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


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
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in shown]
    return "\n".join(lines), left_out


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _anchor(text: str) -> str:
    """GitHub-style heading anchor."""
    keep = "".join(ch for ch in text.lower() if ch.isalnum() or ch in " -_")
    return keep.replace(" ", "-")


def build_report(root: Path, max_rows: int = 30, title: str | None = None) -> str:
    """The Markdown page for folder ``root`` (see the module docstring)."""
    csvs = sorted(p for p in root.rglob("*.csv") if p.is_file() and _visible(p, root))
    pngs = sorted(p for p in root.rglob("*.png") if p.is_file() and _visible(p, root))
    if not csvs and not pngs:
        raise WxscaleError(f"{root} holds no CSV tables or PNG plots: run a benchmark or a study into it first "
                           "(e.g. `wxscale bench throughput --out DIR`)")
    folders = sorted({p.parent for p in csvs + pngs}, key=lambda d: (len(d.relative_to(root).parts), str(d)))
    provenance: dict[str, set[str]] = {}
    sections: list[str] = []
    contents: list[str] = []
    for folder in folders:
        rel_folder = folder.relative_to(root).as_posix()
        heading = "(top level)" if rel_folder == "." else rel_folder
        body: list[str] = []
        for path in (p for p in csvs if p.parent == folder):
            rel = path.relative_to(root).as_posix()
            try:
                columns, rows = read_table(path)
            except (OSError, csv.Error, UnicodeDecodeError) as err:
                body.append(f"### {rel}\n\n(unreadable: {err})\n")
                continue
            shown, constant = split_provenance(columns, rows)
            for k, v in constant.items():
                if v:
                    provenance.setdefault(k, set()).add(v)
            contents.append(f"- table [{rel}](#{_anchor(rel)}) ({len(rows)} rows)")
            parts = [f"### {rel}", ""]
            if path.name in DESCRIPTIONS:
                parts += [DESCRIPTIONS[path.name], ""]
            if not columns:
                parts += ["(empty file)", ""]
            elif not rows:
                parts += ["(no rows yet; columns: " + ", ".join(f"`{c}`" for c in columns) + ")", ""]
            else:
                table, left_out = markdown_table(shown, rows, max_rows)
                parts += [table, ""]
                if left_out:
                    parts += [f"*{left_out} of {len(rows)} rows left out; the full table: [{rel}]({rel}).*", ""]
                else:
                    parts += [f"*Source: [{rel}]({rel}).*", ""]
            body.append("\n".join(parts))
        for path in (p for p in pngs if p.parent == folder):
            rel = path.relative_to(root).as_posix()
            contents.append(f"- figure [{rel}](#{_anchor(rel)})")
            body.append(f"### {rel}\n\n![{path.stem}]({rel})\n")
        sections.append(f"## {heading}\n\n" + "\n".join(body))

    title = title or f"wxscale report: {root.resolve().name}"
    lines = [f"# {title}", "",
             f"{len(csvs)} table(s) and {len(pngs)} figure(s) under `{root}`. Rendered "
             f"{time.strftime('%Y-%m-%d %H:%M:%S %z')} on {socket.gethostname()} at git {git_sha() or '(unknown)'}.",
             "", "## Provenance", ""]
    if provenance:
        lines += ["| field | value(s) |", "|---|---|"]
        order = {c: i for i, c in enumerate(PROVENANCE_COLUMNS)}
        for k in sorted(provenance, key=lambda c: order.get(c, len(order))):
            lines.append(f"| {k} | {'; '.join(_cell(v) for v in sorted(provenance[k]))} |")
    else:
        lines.append("(the tables carry no provenance columns that hold one value throughout)")
    lines += ["", "## Contents", "", *contents, "", *sections]
    return "\n".join(lines).rstrip() + "\n"


def write_report(root: str | os.PathLike, max_rows: int = 30, title: str | None = None) -> Path:
    """Write ``root/report.md`` atomically and return its path."""
    root = Path(root)
    if not root.is_dir():
        raise WxscaleError(f"report: {root} is not a folder; give a benchmark or study output folder")
    text = build_report(root, max_rows=max_rows, title=title)
    out = root / "report.md"
    write_text_atomic(out, text)
    return out


def run(args: argparse.Namespace) -> int:
    if args.max_rows < 0:
        raise WxscaleError("--max-rows must be >= 0 (0: no truncation)")
    out = write_report(args.dir, max_rows=args.max_rows, title=args.title)
    print(f"wrote {out}")
    return 0
