"""The ``scglmm`` program: read an .h5ad file, call :mod:`scglmm.tl`, write the results.

The command line is a thin shell around the Python API. It adds what a pipeline needs and nothing
statistical: logs on stderr (stdout only carries the top-genes table), one-line error messages with
non-zero exit codes, and outputs that appear whole or not at all (written to a temporary file in the
same folder, then renamed).

Exit codes: 0 success, 1 bad input or a failed run, 2 a usage error (unknown flag, missing
option), 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

logger = logging.getLogger("scglmm")

#: Exit codes of the program.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CLIError(click.ClickException):
    """A problem with the user's input or the run, reported as one ``Error: ...`` line."""

    exit_code = EXIT_ERROR


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


#: Python keywords that the library's messages name, and the flags a command-line user types instead.
_FLAGS = {
    "size_factors": "--size-factors",
    "offset": "--offset",
    "layer": "--layer",
    "groupby": "--groupby",
    "key_added": "--key-added",
    "min_cells_group": "--min-cells-group",
    "min_donors_group": "--min-donors-group",
    "min_cells": "--min-cells",
    "min_donors": "--min-donors",
    "calibration": "--calibration",
    "reduced_formula": "--reduced-formula",
    "n_agq": "--n-agq",
    "n_jobs": "--n-jobs",
}


def _as_flags(text: str) -> str:
    """Name flags, not keywords: ``layer='counts'`` -> ``--layer counts``, ``size_factors`` -> ``--size-factors``."""
    for kw, flag in _FLAGS.items():
        text = re.sub(rf"(?<![\w-]){kw}='([^']*)'", rf"{flag} \1", text)
        text = re.sub(rf"(?<![\w-]){kw}=(?=[\s.,;)]|$)", flag, text)
        if "_" in kw:  # snake_case names are unambiguous as words
            text = re.sub(rf"(?<![\w-]){kw}\b", flag, text)
    return text


def _is_user_error(err: BaseException) -> bool:
    """The library's own input errors carry a sentence; a bare ``KeyError('x')`` is a bug."""
    if isinstance(err, OSError):
        return True
    if isinstance(err, KeyError | ValueError | TypeError) and err.args and isinstance(err.args[0], str):
        return " " in err.args[0].strip()
    return False


def _message(err: BaseException) -> str:
    """The user-facing text of an exception raised by the library or by I/O."""
    if _is_user_error(err) and not isinstance(err, OSError):
        return _one_line(err.args[0])  # KeyError's str() would add quotes
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        return _one_line(f"{err.strerror}{where}")
    lines = str(err).strip().splitlines()  # an unexpected error: its first line is enough here
    first = lines[0] if lines else ""
    if len(first) > 200:
        first = first[:200] + " ..."
    return _one_line(f"{type(err).__name__}: {first}")


# ------------------------------------------------------------------------------------------------
# the program's frame: logging, warnings, errors
# ------------------------------------------------------------------------------------------------
class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return f"[scglmm {stamp}] {level}{record.getMessage()}"


@contextmanager
def _session(*, quiet: bool, verbose: bool) -> Iterator[None]:
    """Log to stderr, turn warnings into log lines, and turn exceptions into one-line errors."""
    handler = logging.StreamHandler(sys.stderr)  # the stream of this call (CliRunner swaps it)
    handler.setFormatter(_Formatter())
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO))
    logger.propagate = False

    def _show(message, category, filename, lineno, file=None, line=None) -> None:
        quiet_kinds = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
        level = logging.DEBUG if issubclass(category, quiet_kinds) else logging.WARNING
        logger.log(level, "%s", _one_line(str(message)))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each warning once per place, not once per gene
            warnings.showwarning = _show
            yield
    except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
        raise
    except Exception as err:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        msg = _as_flags(_message(err))
        if not _is_user_error(err):
            msg += " (unexpected; rerun with --verbose and report the traceback)"
        raise CLIError(msg) from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


#: click >= 8.2 raises this for a command run without arguments (older versions exit 0 with the help).
_NoArgsIsHelp: type[Exception] | tuple = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Group(click.Group):
    """A click group that reports every error as one ``Error: ...`` line on stderr."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp as err:  # 'scglmm' or 'scglmm fit' alone: the help, as click shows it
            click.echo(err.format_message(), err=True)
            code, text = err.exit_code, None
        except click.UsageError as err:
            hint = f" See '{err.ctx.command_path} --help'." if err.ctx is not None else ""
            code, text = EXIT_USAGE, f"{_one_line(err.format_message())}{hint}"
        except click.ClickException as err:
            code, text = err.exit_code, _one_line(err.format_message())
        except (click.Abort, KeyboardInterrupt):
            code, text = EXIT_INTERRUPTED, "interrupted; no output was written."
        else:
            code, text = (rv if isinstance(rv, int) else EXIT_OK), None
        if text is not None:
            click.echo(f"Error: {text}", err=True)
        if not standalone_mode:
            return code
        sys.exit(code)


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_input(path: Path) -> None:
    if not path.exists():
        msg = f"input file {str(path)!r} does not exist."
        raise CLIError(msg)
    if not path.is_file():
        msg = f"input {str(path)!r} is not a file."
        raise CLIError(msg)


def _check_output(path: Path, flag: str, *, inputs: list[Path], taken: dict[Path, str]) -> None:
    """Fail early (before any fitting) if ``path`` cannot be written or would clobber an input."""
    for inp in inputs:
        if _same_file(path, inp):
            msg = f"{flag} {str(path)!r} is the input file; scglmm never overwrites its input, choose another name."
            raise CLIError(msg)
    for other, other_flag in taken.items():
        if _same_file(path, other):
            msg = f"{flag} and {other_flag} are the same file {str(path)!r}; give them different names."
            raise CLIError(msg)
    if path.is_dir():
        msg = f"{flag} {str(path)!r} is a folder; give a file name inside it."
        raise CLIError(msg)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        msg = f"cannot write {flag} {str(path)!r}: {str(folder)!r} is not a folder."
        raise CLIError(msg)
    try:  # a real probe: also right for root, read-only mounts and ACLs
        fd, probe = tempfile.mkstemp(prefix=".scglmm-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        msg = f"cannot write {flag} {str(path)!r}: the folder {str(folder)!r} is not writable ({err.strerror})."
        raise CLIError(msg) from None
    taken[path] = flag


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(targets: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write every target to a temporary file in its folder, then rename them all into place.

    On any failure, including KeyboardInterrupt, the temporary files are removed and no target is
    created or changed.
    """
    temps: list[Path] = []
    mode = 0o666 & ~_umask()
    try:
        for path, writer in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp = Path(name)
            temps.append(tmp)
            writer(tmp)
            os.chmod(tmp, mode)  # mkstemp makes 0600 files; give the usual permissions
        for (path, _), tmp in zip(targets, temps, strict=True):
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


def _read_h5ad(path: Path, *, backed: bool = False) -> AnnData:
    import anndata as ad

    try:
        adata = ad.read_h5ad(path, backed="r") if backed else ad.read_h5ad(path)
    except Exception as err:
        msg = f"cannot read {str(path)!r} as an .h5ad (AnnData) file: {_message(err)}"
        raise CLIError(msg) from None
    how = " (counts stay on disk)" if backed else ""
    logger.info("read %s: %d cells x %d genes%s", path, adata.n_obs, adata.n_vars, how)
    return adata


def _results_into_copy(src: Path, adata: AnnData) -> Callable[[Path], None]:
    """A writer for ``--backed``: copy INPUT byte for byte, then replace its var, varm and uns.

    The count matrix is never loaded: the copy carries it over, and only the (small) per-gene
    results and settings are written.
    """

    def writer(tmp: Path) -> None:
        import shutil

        import h5py

        try:
            from anndata.io import write_elem
        except ImportError:  # pragma: no cover - anndata < 0.11
            from anndata.experimental import write_elem

        shutil.copyfile(src, tmp)
        with h5py.File(tmp, "a") as f:
            for name, value in (("var", adata.var), ("varm", dict(adata.varm)), ("uns", dict(adata.uns))):
                if name in f:
                    del f[name]
                write_elem(f, name, value)

    return writer


def _write_outputs(
    adata: AnnData,
    out: Path,
    table: Path | None,
    df: pd.DataFrame | None,
    *,
    compression: str | None = None,
    backed_from: Path | None = None,
) -> None:
    def write_h5ad(p: Path) -> None:
        if compression is None:
            adata.write_h5ad(p)
        else:
            adata.write_h5ad(p, compression=compression)

    writer = write_h5ad if backed_from is None else _results_into_copy(backed_from, adata)
    targets: list[tuple[Path, Callable[[Path], None]]] = [(out, writer)]
    if table is not None and df is not None:
        targets.append((table, lambda p: df.to_csv(p, sep="\t", index=False, na_rep="NA")))
    write_atomically(targets)
    logger.info("wrote %s", out)
    if table is not None and df is not None:
        logger.info("wrote %s (%d rows)", table, len(df))


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------
def _runs(adata: AnnData, key: str) -> list[tuple[str | None, str]]:
    """``(group, storage key)`` of each fit under ``key``: one, or one per group with ``--groupby``."""
    try:
        from .tl._test import subkeys
    except ImportError:  # pragma: no cover - a library without groupby
        return [(None, key)]
    return [(g if g != "" else None, sub) for g, sub in subkeys(adata, key).items()]


def _fit_table(adata: AnnData, coefs: tuple[str, ...], key: str) -> pd.DataFrame:
    """:func:`scglmm.get.results` for each coefficient (and group), stacked into one long table.

    The columns are those of ``get.results`` after ``gene`` (and ``group`` with ``--groupby``) and
    ``coef``. Without ``coefs``, every non-intercept coefficient is reported (the intercept if there
    is no other).
    """
    import pandas as pd

    from . import get

    parts = []
    for group, sub in _runs(adata, key):
        columns = [str(c) for c in adata.uns[sub]["params"]["design_columns"]]
        wanted = list(coefs) or [c for c in columns if c != "Intercept"] or columns
        for c in wanted:
            try:
                res = get.results(adata, c, key=sub)
            except KeyError as err:
                if group is None:
                    raise
                logger.warning("group %r: %s Left out of the table.", group, _message(err))
                continue
            part = res.rename_axis("gene").reset_index()
            if group is not None:
                part.insert(1, "group", group)
            part.insert(2 if group is not None else 1, "coef", res.attrs.get("coef", c))
            parts.append(part)
    if not parts:
        msg = "no results to report: none of the requested coefficients was fitted in any group."
        raise CLIError(msg)
    return pd.concat(parts, ignore_index=True)


def _print_top(df: pd.DataFrame, n: int, by: tuple[str, ...] = ("coef",)) -> None:
    """Print the ``n`` smallest p-values of each coefficient (and group) as an aligned table."""
    import numpy as np

    if n <= 0 or df.empty:
        return
    cols = [c for c in ("log2_fc", "se", "p_value", "adj_p_value", "sigma2", "dispersion", "status") if c in df]
    by = tuple(c for c in by if c in df)
    try:
        for label, part in df.groupby(list(by), sort=False):
            ranked = part.assign(_abs=np.abs(part["stat"]) if "stat" in part else 0.0)
            ranked = ranked.sort_values(["p_value", "_abs"], ascending=[True, False], na_position="last")
            best = ranked.head(n).set_index("gene")[cols]
            n_sig = int((part["adj_p_value"] < 0.05).sum()) if "adj_p_value" in part else 0
            name = " / ".join(str(v) for v in label)
            click.echo(f"top {len(best)} of {len(part)} genes for {name} ({n_sig} with adj_p_value < 0.05):")
            click.echo(best.to_string(float_format=lambda v: f"{v:.3g}"))
        sys.stdout.flush()
    except BrokenPipeError:  # `scglmm fit ... | head`: the reader has seen enough; the files are written
        # silence the flush at exit, which would fail again (no file descriptor: a captured stream)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------
_MAIN_HELP = """Donor-aware differential expression for single-cell RNA-seq.

\b
For every gene, scglmm fits a negative binomial mixed model with a random
intercept per donor (a GLMM, fitted as glmmTMB does):
  log E[count] = X beta + log(size factor) + b_donor,  b_donor ~ N(0, sigma^2)

Cells of one donor share that donor's effect, so the donors, not the cells, are
the replicates. Cell-level tests (Wilcoxon, t-test) treat every cell as an
independent replicate and report many false hits.

\b
Typical use:
  scglmm fit cells.h5ad --formula "~ condition + (1 | donor)" \\
      --out fit.h5ad --table fit.tsv --n-jobs 4
  scglmm test fit.h5ad --contrast condition,stim,ctrl --out tested.h5ad

\b
Input : an .h5ad file (AnnData) with raw integer counts in X or a layer,
        and the formula's columns (condition, donor, ...) in obs.
Output: a new .h5ad, the AnnData with the results added (varm['scglmm_coef'],
        ...; see 'scglmm fit --help'), and optionally a tab-separated table,
        one row per gene. The input file is never modified.

Run 'scglmm COMMAND --help' for the options and examples of each command.
"""


@click.group("scglmm", cls=_Group, help=_MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="scglmm")
def cli() -> None:
    """Donor-aware differential expression (see ``_MAIN_HELP``)."""


def _nonzero(value: int | None) -> int | None:
    if value == 0:
        msg = "--n-jobs must be a positive number of threads, or -1 for all cores; got 0."
        raise click.BadParameter(msg)
    return value


def _verbosity(f: Callable) -> Callable:
    f = click.option("-v", "--verbose", is_flag=True, help="Debug logs on stderr, and the traceback on errors.")(f)
    f = click.option(
        "-q", "--quiet", is_flag=True, help="Nothing on stdout; only warnings and errors on stderr; no progress bar."
    )(f)
    return f


def _outputs(f: Callable) -> Callable:
    f = click.option(
        "--compression",
        type=click.Choice(["gzip", "lzf"]),
        help="Compress the arrays of the output .h5ad (smaller, slower to write).  [default: none]",
    )(f)
    f = click.option(
        "--table", metavar="TSV", type=click.Path(path_type=Path), help="Also write the per-gene results as a TSV file."
    )(f)
    f = click.option(
        "-o",
        "--out",
        required=True,
        metavar="OUT",
        type=click.Path(path_type=Path),
        help="Output .h5ad (must differ from INPUT).",
    )(f)
    return f


def _library_default(module: str, name: str) -> str:
    """A default of the library, for the help text (``?`` if this version does not define it)."""
    import importlib

    try:
        return str(getattr(importlib.import_module(module, __package__), name))
    except (ImportError, AttributeError):  # pragma: no cover - older library
        return "?"


def _calibrations() -> click.ParamType:
    try:
        from ._core._inference import CALIBRATIONS
    except ImportError:  # pragma: no cover - older library
        return click.STRING
    return click.Choice(list(CALIBRATIONS))


def _optional(func: Callable, given: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """Keywords for ``func`` from the flags that were given (``{keyword: (flag, value)}``).

    Flags left out are not passed, so the library's defaults apply; a flag that this version of the
    library does not know is an error naming the flag.
    """
    params = inspect.signature(func).parameters
    out = {}
    for kw, (flag, value) in given.items():
        if value is None:
            continue
        if kw not in params:
            msg = (
                f"{flag} is not supported by this version of scglmm ({func.__module__}.{func.__name__} has no {kw!r})."
            )
            raise CLIError(msg)
        out[kw] = value
    return out


def _check_io(input_h5ad: Path, out: Path, table: Path | None) -> None:
    _check_input(input_h5ad)
    taken: dict[Path, str] = {}
    _check_output(out, "--out", inputs=[input_h5ad], taken=taken)
    if table is not None:
        _check_output(table, "--table", inputs=[input_h5ad], taken=taken)
    if out.suffix.lower() in (".tsv", ".csv", ".txt") or (table is not None and table.suffix.lower() == ".h5ad"):
        msg = f"--out {str(out)!r} is the .h5ad output and --table the text table; are they swapped?"
        raise click.UsageError(msg)


_FIT_HELP = """Fit the donor-aware model to every gene of INPUT (an .h5ad file).

\b
Per gene, in lme4 notation: counts ~ FORMULA, negative binomial, with
log(size factor) as offset. FORMULA names obs columns and holds exactly one
donor random intercept, '(1 | donor)'. Coefficients are natural-log fold
changes; the table adds log2_fc.

\b
Examples:
  # stimulated vs control, cells grouped by donor
  scglmm fit cells.h5ad --formula "~ condition + (1 | donor)" --out fit.h5ad
\b
  # counts in a layer, a covariate, a table for 'condition', 4 threads
  scglmm fit cells.h5ad -f "~ condition + pct_mito + (1 | donor)" \\
      --layer counts --coef condition --out fit.h5ad --table fit.tsv -j 4
\b
  # one fit per cell type
  scglmm fit pbmc.h5ad -f "~ condition + (1 | donor)" --groupby cell_type \\
      --out fit.h5ad --table fit.tsv

\b
Where the results go (KEY = --key-added, default 'scglmm'):
  --out     INPUT's AnnData plus varm[KEY_coef], varm[KEY_se], varm[KEY_pval]
            (genes x design columns), varm[KEY_fit] (sigma2, dispersion,
            status, ...), varm[KEY_cov], varm[KEY_donor_effects],
            var[KEY_status] and uns[KEY]['params'] (with --groupby: the same
            under KEY:GROUP for each group). In Python:
            scglmm.get.results(anndata.read_h5ad(OUT), 'condition').
  --table   tab-separated, one row per gene and coefficient (and group):
            gene, [group,] coef, then the columns of scglmm.get.results:
            log_fc, log2_fc, se, stat, p_value, adj_p_value (Benjamini-
            Hochberg), sigma2, dispersion, status, ...; missing values are NA.
  stdout    the top genes of each coefficient (nothing with --quiet).
  stderr    log messages.

Files are written whole or not at all. On bad input nothing is written and the
program exits with one 'Error: ...' line (exit code 1; 2 for a bad flag, 130
when interrupted).
"""


@cli.command("fit", help=_FIT_HELP, no_args_is_help=True)
@click.argument("input_h5ad", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-f",
    "--formula",
    required=True,
    metavar="FORMULA",
    help="lme4-style formula over obs columns with one donor random intercept, e.g. '~ condition + (1 | donor)'.",
)
@_outputs
@click.option("--layer", metavar="NAME", help="Layer holding the raw integer counts.  [default: X]")
@click.option(
    "--size-factors",
    metavar="COL",
    help="obs column of per-cell size factors (a scale, logged internally).  [default: total counts per cell]",
)
@click.option("--offset", metavar="COL", help="obs column of a per-cell offset already on the log scale.")
@click.option(
    "--groupby", metavar="COL", help="Fit each group of cells (e.g. each cell type) separately; results per group."
)
@click.option(
    "--coef",
    multiple=True,
    metavar="NAME",
    help="Coefficient(s) for --table and stdout, a design column or a variable, e.g. 'condition'. "
    "Repeatable.  [default: every non-intercept coefficient]",
)
@click.option(
    "--calibration",
    type=_calibrations(),
    help="Reference distribution of the Wald p-values (see scglmm.tl.fit).  "
    f"[default: {_library_default('._core._inference', 'DEFAULT_CALIBRATION')}]",
)
@click.option(
    "--min-cells",
    type=click.IntRange(min=0),
    metavar="N",
    help="Fit a gene only if at least N cells have a count; others are kept as NaN, status 'filtered'.  "
    f"[default: {_library_default('.tl._fit', 'MIN_CELLS')}]",
)
@click.option(
    "--min-donors",
    type=click.IntRange(min=0),
    metavar="N",
    help=f"Fit a gene only if at least N donors have a count.  [default: {_library_default('.tl._fit', 'MIN_DONORS')}]",
)
@click.option(
    "--min-cells-group",
    type=click.IntRange(min=0),
    metavar="N",
    help=f"With --groupby: skip groups with fewer cells.  [default: {_library_default('.tl._fit', 'MIN_CELLS_GROUP')}]",
)
@click.option(
    "--min-donors-group",
    type=click.IntRange(min=0),
    metavar="N",
    help="With --groupby: skip groups with fewer donors.  "
    f"[default: {_library_default('.tl._fit', 'MIN_DONORS_GROUP')}]",
)
@click.option(
    "--backed",
    is_flag=True,
    help="Leave the counts on disk and read them block by block (for files larger than memory); "
    "the output is a copy of INPUT with the results added.",
)
@click.option(
    "--n-agq",
    type=click.IntRange(min=1),
    metavar="K",
    default=1,
    show_default=True,
    help="1 = Laplace approximation (as glmmTMB); K > 1 = adaptive Gauss-Hermite with K nodes.",
)
@click.option(
    "-j",
    "--n-jobs",
    type=int,
    metavar="N",
    callback=lambda ctx, param, v: _nonzero(v),
    default=1,
    show_default=True,
    help="Threads (-1 = all cores).",
)
@click.option(
    "--key-added", metavar="KEY", default="scglmm", show_default=True, help="Prefix of the keys written to the AnnData."
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    metavar="N",
    default=10,
    show_default=True,
    help="Genes to print per coefficient (0: none).",
)
@_verbosity
def fit_cmd(
    input_h5ad: Path,
    formula: str,
    out: Path,
    table: Path | None,
    compression: str | None,
    layer: str | None,
    size_factors: str | None,
    offset: str | None,
    groupby: str | None,
    coef: tuple[str, ...],
    calibration: str | None,
    min_cells: int | None,
    min_donors: int | None,
    min_cells_group: int | None,
    min_donors_group: int | None,
    backed: bool,
    n_agq: int,
    n_jobs: int,
    key_added: str,
    top: int,
    quiet: bool,
    verbose: bool,
) -> None:
    """Fit the model to every gene (the help text is ``_FIT_HELP``)."""
    with _session(quiet=quiet, verbose=verbose):
        from . import tl

        _check_io(input_h5ad, out, table)
        if size_factors is not None and offset is not None:
            msg = "pass either --size-factors (a scale, logged internally) or --offset (already a log), not both."
            raise click.UsageError(msg)
        _check_formula(formula)
        extra = _optional(
            tl.fit,
            {
                "groupby": ("--groupby", groupby),
                "calibration": ("--calibration", calibration),
                "min_cells": ("--min-cells", min_cells),
                "min_donors": ("--min-donors", min_donors),
                "min_cells_group": ("--min-cells-group", min_cells_group),
                "min_donors_group": ("--min-donors-group", min_donors_group),
            },
        )
        if backed and compression is not None:
            msg = "--compression cannot be used with --backed (the output is a copy of INPUT as it is stored)."
            raise click.UsageError(msg)
        adata = _read_h5ad(input_h5ad, backed=backed)
        try:
            _check_columns(adata, layer=layer, size_factors=size_factors, offset=offset, groupby=groupby)
            if coef:
                _check_coefs(adata, formula, coef)
            tl.fit(
                adata,
                formula,
                layer=layer,
                size_factors=size_factors,
                offset=offset,
                key_added=key_added,
                n_agq=n_agq,
                n_jobs=n_jobs,
                progress=False if quiet else None,
                **extra,
            )
            df = _fit_table(adata, coef, key_added)
            _write_outputs(
                adata,
                out,
                table,
                df if table is not None else None,
                compression=compression,
                backed_from=input_h5ad if backed else None,
            )
        finally:
            if backed:
                adata.file.close()
        if not quiet:
            _print_top(df, top, by=("group", "coef"))


def _check_formula(formula: str) -> None:
    """Catch a malformed formula before the (possibly large) input is read."""
    from ._formula import parse_formula, required_variables

    required_variables(parse_formula(formula).fixed)


def _check_columns(
    adata: AnnData, *, layer: str | None, size_factors: str | None, offset: str | None, groupby: str | None
) -> None:
    """Name the flag when a layer or obs column it points to is missing."""
    if layer is not None and layer not in adata.layers:
        have = ", ".join(repr(k) for k in adata.layers) or "none (then the counts are in X: leave out --layer)"
        msg = f"--layer {layer!r} is not a layer of the input; its layers: {have}."
        raise CLIError(msg)
    for flag, col in (("--size-factors", size_factors), ("--offset", offset), ("--groupby", groupby)):
        if col is not None and col not in adata.obs.columns:
            msg = f"{flag} {col!r} is not a column of the input's obs; its columns: {list(adata.obs.columns)}."
            raise CLIError(msg)


def _check_coefs(adata: AnnData, formula: str, coefs: tuple[str, ...]) -> None:
    """Resolve ``--coef`` against the design before fitting, so a typo costs seconds, not the run."""
    from ._formula import build_design, parse_formula
    from .get._results import resolve_coef

    columns = build_design(parse_formula(formula).fixed, adata.obs).columns
    for c in coefs:
        try:
            resolve_coef(c, columns)
        except KeyError as err:
            msg = f"--coef: {_message(err)}"
            raise CLIError(msg) from None


_TEST_HELP = """Test a contrast on a file written by 'scglmm fit'.

\b
Wald tests (the default) use the stored coefficients and covariance, with no
refit. Likelihood-ratio tests (--method lrt) refit the model without the
tested terms, or with --reduced-formula.

\b
CONTRAST is one of:
  a coefficient or a variable     "condition[T.stim]", condition
  two levels, first minus second  treatment,B,A  (VARIABLE,LEVEL,BASELINE)
  an expression of coefficients   "treatment[T.B] - treatment[T.A]"

\b
Examples:
  scglmm test fit.h5ad --contrast treatment,B,A --out tested.h5ad \\
      --table B_vs_A.tsv
  scglmm test fit.h5ad --contrast condition --method lrt --out tested.h5ad

\b
Where the results go:
  --out     INPUT's AnnData plus varm[KEY_contrast_NAME] (see scglmm.tl.test;
            NAME is --key-added or derived from the contrast, and is logged).
  --table   tab-separated, one row per gene (and group): gene, [group,]
            contrast, then the columns of scglmm.get.results(contrast=NAME).
  stdout    the top genes (nothing with --quiet).
"""

_CONTRAST_TRIPLE = re.compile(r"^\s*([^,\[\]()]+?)\s*,\s*([^,]+?)\s*,\s*([^,]+?)\s*$")


def _parse_contrast(text: str) -> str | tuple[str, str, str]:
    """``"VAR,LEVEL,BASELINE"`` becomes a tuple; anything else goes to scglmm.tl.test as it is."""
    m = _CONTRAST_TRIPLE.match(text)
    return (m.group(1), m.group(2), m.group(3)) if m else text


@cli.command("test", help=_TEST_HELP, no_args_is_help=True)
@click.argument("input_h5ad", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-c", "--contrast", required=True, metavar="CONTRAST", help="What to test (see above).")
@_outputs
@click.option("--key", metavar="KEY", default="scglmm", show_default=True, help="The --key-added of the fit.")
@click.option("--method", type=click.Choice(["wald", "lrt"]), default="wald", show_default=True, help="The test.")
@click.option("--reduced-formula", metavar="FORMULA", help="For --method lrt: the null model, e.g. '~ 1'.")
@click.option("--calibration", type=_calibrations(), help="Reference distribution of Wald tests.  [default: the fit's]")
@click.option("--group", multiple=True, metavar="NAME", help="With a --groupby fit: group(s) to test.  [default: all]")
@click.option(
    "-j",
    "--n-jobs",
    type=int,
    metavar="N",
    callback=lambda ctx, param, v: _nonzero(v),
    help="Threads for the refit of --method lrt (-1 = all cores).  [default: the fit's]",
)
@click.option("--key-added", metavar="NAME", help="Name of the stored results.  [default: derived from CONTRAST]")
@click.option(
    "--top", type=click.IntRange(min=0), metavar="N", default=10, show_default=True, help="Genes to print (0: none)."
)
@_verbosity
def test_cmd(
    input_h5ad: Path,
    contrast: str,
    out: Path,
    table: Path | None,
    compression: str | None,
    key: str,
    method: str,
    reduced_formula: str | None,
    calibration: str | None,
    group: tuple[str, ...],
    n_jobs: int | None,
    key_added: str | None,
    top: int,
    quiet: bool,
    verbose: bool,
) -> None:
    """Test a contrast (the help text is ``_TEST_HELP``)."""
    with _session(quiet=quiet, verbose=verbose):
        from . import get, tl

        if not hasattr(tl, "test"):
            msg = "this version of scglmm has no scglmm.tl.test; the 'test' command needs it."
            raise CLIError(msg)
        _check_io(input_h5ad, out, table)
        if reduced_formula is not None and method != "lrt":
            msg = "--reduced-formula is only used with --method lrt."
            raise click.UsageError(msg)
        extra = _optional(
            tl.test,
            {
                "calibration": ("--calibration", calibration),
                "group": ("--group", list(group) or None),
                "n_jobs": ("--n-jobs", n_jobs),
                "progress": ("--quiet", False if quiet else None),
            },
        )
        adata = _read_h5ad(input_h5ad)
        if not isinstance(adata.uns.get(key), dict) or "params" not in adata.uns[key]:
            found = [
                k
                for k, v in adata.uns.items()
                if isinstance(v, dict) and "formula" in v.get("params", {}) and "parent_key" not in v["params"]
            ]
            msg = (
                f"{str(input_h5ad)!r} has no scglmm results under --key {key!r}; run 'scglmm fit' on it first "
                f"(keys with results: {found})."
            )
            raise CLIError(msg)
        name = tl.test(
            adata,
            _parse_contrast(contrast),
            key=key,
            method=method,
            reduced_formula=reduced_formula,
            key_added=key_added,
            **extra,
        )
        logger.info("results stored as %r", name)
        res = get.results(adata, contrast=name, key=key, **({"group": list(group)} if group else {}))
        df = res.rename_axis("gene").reset_index()
        df.insert(2 if "group" in df.columns else 1, "contrast", name)
        _write_outputs(adata, out, table, df if table is not None else None, compression=compression)
        if not quiet:
            _print_top(df, top, by=("group", "contrast"))


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Entry point of the ``scglmm`` program (and of ``python -m scglmm``)."""
    # Schedulers (Snakemake, SLURM) stop jobs with SIGTERM: treat it like Ctrl-C so that temporary
    # files are removed and no partial output is left behind.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
