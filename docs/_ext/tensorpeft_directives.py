"""Directives whose numbers are computed from the library (or read from result files) at build time.

Nothing on the site is typed in by hand that the code can compute: parameter counts and FLOPs come from
the format objects, budget tables from ``decomp.rank_for_budget``, benchmark tables from
``benchmarks/results/*.json``, CLI tables from running the CLI.

``.. tensorpeft-param-table::``
    Parameters against rank. Content: ``label: expression`` lines with ``{r}`` for the rank, e.g.
    ``Tucker-2: decomp.Tucker2(stack=(24,), out_features=768, in_features=768, rank={r})``;
    option ``:ranks: 1 2 4 8``.
``.. tensorpeft-cost-table::``
    Rank, parameters and FLOPs per token of ``apply`` (opt_einsum's count for the contraction path the
    library uses, one slice, 1,024 tokens). Content: ``label: expression`` lines.
``.. tensorpeft-budget-table::``
    The largest rank of each format within each budget. Content: ``label: Class(kwargs)`` lines without
    ``rank``; option ``:budgets: 10000 100000``.
``.. tensorpeft-results::``
    Tables of the JSON files in ``benchmarks/results`` (option ``:files:``, globs); the content is shown
    when there is none. Never invents a number: only what the files hold is shown.
``.. tensorpeft-cli:: ARGS``
    The output of ``tensorpeft ARGS``; the content is shown while ``tensorpeft.cli`` does not exist.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import opt_einsum
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
TOKENS = 1024


# ---------------------------------------------------------------------------------------------- maths
def namespace() -> dict:
    """Names visible to the expressions written in the directives."""
    from tensorpeft import decomp

    return {"decomp": decomp, **{name: getattr(decomp, name) for name in decomp.__all__}}


def apply_flops(fmt, tokens: int = TOKENS) -> float:
    """FLOPs per token of ``fmt.apply(factors, x, index=0...)``, as opt_einsum counts its chosen path.

    Rebuilds the equation the library contracts (factors with the stack modes fixed, then ``x``) from
    the format's public attributes and asks opt_einsum with ``optimize="auto"``, the library's setting.
    """
    stack = set(fmt.stack_indices)
    terms, shapes = [], []
    for name in fmt.factor_names:
        term = "".join(c for c in fmt.factor_indices[name] if c not in stack)
        terms.append(term)
        shapes.append(tuple(fmt.sizes[c] for c in term))
    k = 0
    while opt_einsum.get_symbol(k) in fmt.sizes:
        k += 1
    batch = opt_einsum.get_symbol(k)
    terms.append(batch + fmt.in_indices)
    shapes.append((tokens, *(fmt.sizes[c] for c in fmt.in_indices)))
    equation = f"{','.join(terms)}->{batch}{fmt.out_indices}"
    _, info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="auto")
    return float(info.opt_cost) / tokens


def largest_within(cls, budget: int, **kwargs):
    """The format of ``cls`` with the largest rank whose parameter count is within ``budget`` (or None)."""
    from tensorpeft import decomp

    try:
        return decomp.rank_for_budget(cls, budget, **kwargs)
    except ValueError:  # even the smallest format is over budget
        return None


def fmt_int(n) -> str:
    return f"{int(n):,}"


def fmt_rank(rank) -> str:
    """Scalar ranks as is, pairs as ``(r_out, r_in)``, tensor-train bonds by their largest value."""
    if isinstance(rank, tuple):
        if len(rank) > 2:
            if len(set(rank)) == 1:
                return f"{rank[0]} (all {len(rank)} bonds)"
            return f"≤ {max(rank)} ({len(rank)} bonds)"
        return "(" + ", ".join(str(r) for r in rank) + ")"
    return str(rank)


def fmt_flops(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


# ----------------------------------------------------------------------------------------- rendering
def list_table(header: list[str], rows: list[list[str]], css: str = "tp-numbers") -> list[str]:
    """reST of a list-table; ``tp-numbers`` tables are right-aligned and unwrapped (custom.css)."""
    lines = [".. list-table::", "   :header-rows: 1", f"   :class: {css}", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    lines.append("")
    return lines


class _Base(SphinxDirective):
    has_content = True

    def parse_lines(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, container)
        return container.children

    def figure_lines(self, path: Path, width: str, caption: str) -> list[str]:
        """reST of a figure of the repository file ``path``, relative to the current page (a rebuild dependency)."""
        self.env.note_dependency(str(path))
        depth = len((Path(self.env.srcdir) / self.env.docname).parent.relative_to(self.env.srcdir).parts)
        rel = Path(*[".."] * (depth + 1), path.relative_to(ROOT))
        return [f".. figure:: {rel.as_posix()}", f"   :width: {width}", "", f"   {caption}", ""]

    def labelled_expressions(self) -> list[tuple[str, str]]:
        out = []
        for line in self.content:
            if not line.strip():
                continue
            label, sep, expr = line.partition(":")
            if not sep:
                raise self.error(f"expected `label: expression`, got {line!r}")
            out.append((label.strip(), expr.strip()))
        return out

    def evaluate(self, expr: str):
        try:
            return eval(expr, namespace())  # the expressions are written in this repository's docs
        except Exception as exc:
            raise self.error(f"{self.name}: evaluating {expr!r} failed: {exc!r}") from exc

    def format_within(self, expr: str, budget: int):
        """``Class(kwargs)`` (no rank) → the format of that class with the largest rank within budget."""
        cls_name, _, rest = expr.partition("(")
        cls = self.evaluate(cls_name.strip())
        kwargs = self.evaluate(f"dict({rest}") if rest else {}
        return largest_within(cls, budget, **kwargs)


class ParamTable(_Base):
    option_spec: ClassVar[dict] = {"ranks": directives.unchanged_required}

    def run(self):
        ranks = [int(r) for r in self.options.get("ranks", "1 2 4 8 16 32").split()]
        columns = self.labelled_expressions()
        header = ["rank", *[label for label, _ in columns]]
        rows = []
        for r in ranks:
            row = [str(r)]
            for _, expr in columns:
                row.append(fmt_int(self.evaluate(expr.replace("{r}", str(r))).num_params))
            rows.append(row)
        return self.parse_lines(list_table(header, rows))


class CostTable(_Base):
    option_spec: ClassVar[dict] = {"budget": directives.unchanged}

    def run(self):
        header = ["format", "rank", "trainable parameters", "FLOPs per token (apply)"]
        rows = []
        budget = self.options.get("budget")
        for label, expr in self.labelled_expressions():
            if budget:  # `Class(kwargs)` without rank: the largest rank within the budget
                fmt = self.format_within(expr, int(budget.replace(",", "")))
                if fmt is None:
                    rows.append([label, "—", "over budget", "—"])
                    continue
            else:
                fmt = self.evaluate(expr)
            rows.append([label, fmt_rank(fmt.rank), fmt_int(fmt.num_params), fmt_flops(apply_flops(fmt))])
        return self.parse_lines(list_table(header, rows))


class BudgetTable(_Base):
    option_spec: ClassVar[dict] = {"budgets": directives.unchanged_required}

    def run(self):
        budgets = [int(b.replace(",", "").replace("_", "")) for b in self.options["budgets"].split()]
        header = ["format", *[f"≤ {fmt_int(b)}" for b in budgets]]
        rows = []
        for label, expr in self.labelled_expressions():
            row = [label]
            for budget in budgets:
                fmt = self.format_within(expr, budget)
                row.append("—" if fmt is None else f"{fmt_rank(fmt.rank)} ({fmt_int(fmt.num_params)})")
            rows.append(row)
        return self.parse_lines(list_table(header, rows))


# -------------------------------------------------------------------------------------------- results
def _scalar(v) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return fmt_int(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, str):
        return v.replace("|", "/").replace("`", "'") or "—"
    if isinstance(v, list | tuple) and all(_scalar(x) for x in v):
        text = ", ".join(_cell(x) for x in v)
    else:
        text = json.dumps(v, separators=(", ", ": "))
    return text if len(text) <= 60 else text[:57] + "..."


def _is_rows(value) -> bool:
    return bool(value) and (
        (isinstance(value, list) and all(isinstance(r, dict) for r in value))
        or (isinstance(value, dict) and all(isinstance(r, dict) for r in value.values()))
    )


def _uniform_records(data: dict) -> bool:
    """A dict of at least two flat dicts with the same keys (rows of one table, not sections)."""
    values = list(data.values())
    return (
        len(values) >= 2
        and all(isinstance(v, dict) and v and all(_scalar(x) for x in v.values()) for v in values)
        and len({tuple(v) for v in values}) == 1
    )


def split_records(data) -> tuple[dict, list[tuple[str, list[dict]]]]:
    """``(metadata, [(title, rows), ...])`` from a results file of any of the usual shapes.

    Scalars, and dicts of scalars (flattened as ``key.sub``), are metadata; a list of dicts, or a dict of
    dicts (whose keys become a ``name`` column), is a table. Anything else is left out of the page.
    """
    if isinstance(data, list) and _is_rows(data):
        data = {"": data}
    elif isinstance(data, dict) and _uniform_records(data):
        data = {"": data}  # {method: {metric: value}}: one table, one row per method
    if not isinstance(data, dict):
        return {}, []
    meta, tables = {}, []
    for key, value in data.items():
        if _is_rows(value):
            rows = value if isinstance(value, list) else [{"name": k, **v} for k, v in value.items()]
            tables.append((key, rows))
        elif _scalar(value):
            meta[key] = value
        elif isinstance(value, dict) and all(_scalar(v) for v in value.values()):
            meta |= {f"{key}.{k}": v for k, v in value.items()}
    return meta, tables


class Results(_Base):
    option_spec: ClassVar[dict] = {"files": directives.unchanged, "images": directives.flag}

    def run(self):
        patterns = (self.options.get("files") or "**/*.json").split()
        files = sorted({p for pattern in patterns for p in RESULTS.glob(pattern)})
        images = sorted(RESULTS.glob("**/*.png")) if "images" in self.options else []
        if not files and not images:
            return self.parse_lines(list(self.content))
        lines: list[str] = []
        for path in files:
            self.env.note_dependency(str(path))
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise self.error(f"cannot read results file {path}: {exc}") from exc
            meta, tables = split_records(data)
            lines += [f".. rubric:: ``{path.relative_to(ROOT)}``", ""]
            groups: dict[str, list[str]] = {}
            for key, value in meta.items():
                group, _, field = key.rpartition(".")
                groups.setdefault(group, []).append(f"{field} ``{_cell(value)}``")
            for group, fields in groups.items():
                lines += [(f"**{group}**: " if group else "") + "; ".join(fields), ""]
            for title, rows in tables:
                columns: list[str] = []
                for row in rows:
                    columns += [k for k in row if k not in columns]
                if title:
                    lines += [f"**{title}**", ""]
                body = [[_cell(row.get(c)) for c in columns] for row in rows]
                lines += list_table([f"``{c}``" for c in columns], body, css="tp-results")
        for path in images:
            lines += self.figure_lines(path, "100%", f"``{path.relative_to(ROOT)}``")
        return self.parse_lines(lines)


def _targets(target_modules) -> str:
    return target_modules if isinstance(target_modules, str) else ", ".join(target_modules)


class CompareTable(_Base):
    """The main job's table as a reader wants it: one row per method, accuracy in %, the plot below.

    Reads ``compare/results.json`` (a full default run) and, when present, ``quality.json`` (the same
    methods over several seeds) from ``benchmarks/results``; shows the content when neither exists.
    Options ``:run:`` and ``:quality:`` name another run folder and quality file (the decoder job:
    ``compare-llm`` and ``quality_llm.json``); a run of the decoder job adds its valid-answer share.
    """

    option_spec = {"run": directives.unchanged, "quality": directives.unchanged}

    def run(self):
        folder, quality_name = self.options.get("run", "compare"), self.options.get("quality", "quality.json")
        path, quality_path = RESULTS / folder / "results.json", RESULTS / quality_name
        if not path.exists():
            return self.parse_lines(list(self.content))
        for p in (path, quality_path):
            if p.exists():
                self.env.note_dependency(str(p))
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            quality = json.loads(quality_path.read_text(encoding="utf-8")) if quality_path.exists() else None
        except (OSError, ValueError) as exc:
            raise self.error(f"cannot read the compare results: {exc}") from exc
        seeds = {r["method"]: r for r in quality["rows"]} if quality else {}
        settings, train = record["settings"], record["settings"]["train"]
        versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
        lines = [
            f"Run of {record['date']} on {record['machine']['cpus']} CPU cores ({versions}): dataset "
            f"``{settings['dataset']}``, adapters on ``{_targets(settings['target_modules'])}``, "
            f"{train['steps']} steps of {train['batch_size']}, seed {', '.join(map(str, settings['seeds']))}"
            + (
                f"; the seeds column: mean ± std over seeds {', '.join(map(str, quality['seeds']))}."
                if quality
                else "."
            ),
            "",
        ]
        # peak memory stays in results.json and the CLI table: one column fewer keeps the table on screen
        header = ["method", "format", "ranks", "adapter params", "accuracy %", "s/step"]
        generated = any(r.get("valid_answers") for r in record["rows"])
        if generated:
            header.insert(5, "valid answers %")
        if quality:
            header.insert(5, f"{len(quality['seeds'])} seeds")
        body = []
        for r in record["rows"]:
            row = [
                f"``{r['method']}``",
                r["name"],
                r["ranks"] if r["ranks"] != "-" else "—",  # a lone "-" would open a bullet list
                fmt_int(r["adapter_params"]),
                f"{100 * r['accuracy_mean']:.1f}",
                f"{r['seconds_per_step']:.3f}" if r["seconds_per_step"] > 0 else "—",
            ]
            if generated:
                valid = r.get("valid_answers") or []
                row.insert(5, f"{100 * sum(valid) / len(valid):.1f}" if valid else "—")
            if quality:
                q = seeds.get(r["method"])
                row.insert(5, f"{100 * q['accuracy_mean']:.1f} ± {100 * q['accuracy_std']:.1f}" if q else "—")
            body.append(row)
        lines += list_table(header, body)
        plot = path.with_name("accuracy_vs_params.png")
        if plot.exists():
            lines += self.figure_lines(plot, "90%", "Test accuracy against trainable adapter parameters.")
        return self.parse_lines(lines)


class Cli(_Base):
    required_arguments = 1
    final_argument_whitespace = True

    def run(self):
        args = self.arguments[0].split()
        if importlib.util.find_spec("tensorpeft.cli") is None:
            logger.info("tensorpeft.cli does not exist yet; placeholder for `tensorpeft %s`", " ".join(args))
            return self.parse_lines(list(self.content))
        code = "import sys; from tensorpeft.cli import main; sys.exit(main())"
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600, cwd=ROOT, check=False
        )
        if proc.returncode != 0:
            raise self.error(f"`tensorpeft {' '.join(args)}` exited with {proc.returncode}: {proc.stderr.strip()}")
        text = f"$ tensorpeft {' '.join(args)}\n{proc.stdout.rstrip()}"
        block = nodes.literal_block(text, text)
        block["language"] = "console"
        return [block]


def setup(app):
    app.add_directive("tensorpeft-param-table", ParamTable)
    app.add_directive("tensorpeft-cost-table", CostTable)
    app.add_directive("tensorpeft-budget-table", BudgetTable)
    app.add_directive("tensorpeft-results", Results)
    app.add_directive("tensorpeft-compare-table", CompareTable)
    app.add_directive("tensorpeft-cli", Cli)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
