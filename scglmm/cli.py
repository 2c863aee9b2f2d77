"""The ``scglmm`` program: read an .h5ad file, call :mod:`scglmm.tl`, write the results.

The command line is a thin shell around the Python API. It adds what a pipeline needs and nothing
statistical: logs on stderr (stdout only carries the top-genes table), one-line error messages with
non-zero exit codes, and outputs that appear whole or not at all (written to a temporary file in the
same folder, then renamed). It checks only what the library cannot know (files, and flags of its
own) and, for ``scglmm test``, that the input holds a fit, to point at ``scglmm fit`` rather than
``scglmm.tl.fit``; every other input error is the library's, printed as it is, after the flag it names.

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

from . import __version__, get, tl
from ._convert import to_csc
from ._core._errors import InputError
from ._core._inference import CALIBRATIONS
from ._core._normalise import NORM_METHODS
from ._layout import fit_params, run_keys

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

logger = logging.getLogger("scglmm")

#: Exit codes of the program.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CLIError(click.ClickException):
    """A problem with the user's input or the run, reported as one ``Error: ...`` line."""

    exit_code = EXIT_ERROR


# ------------------------------------------------------------------------------------------------
# error messages
# ------------------------------------------------------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _flag(param: str | None) -> str | None:
    """The running command's flag for the Python keyword ``param`` (``size_factors`` -> ``--size-factors``).

    An option's ``name`` is the keyword it is passed as, so the flags follow from the command's
    options; ``None`` if the command has no option for ``param``.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is None or param is None:
        return None
    for option in ctx.command.params:
        if isinstance(option, click.Option) and option.name == param:
            return max(option.opts, key=len)
    return None


def _mentions(message: str, keyword: str) -> bool:
    """Whether ``message`` holds ``keyword`` (``offset=``) as a whole word (not inside ``log_offset=``)."""
    start = message.find(keyword)
    while start != -1:
        if start == 0 or not (message[start - 1].isalnum() or message[start - 1] in "_."):
            return True
        start = message.find(keyword, start + 1)
    return False


def _keyword_gloss(message: str) -> str:
    """`` (on the command line: offset= is --offset)`` for the running command's keywords ``message`` names.

    Library messages suggest Python keywords (``pass it as offset=``, ``layer=None for adata.X``);
    the message stays as it is and this says which flag each one is. Empty if it names none.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return ""
    glosses = []
    for option in ctx.command.params:
        name = option.name if isinstance(option, click.Option) else None
        if name is None or not _mentions(message, f"{name}="):
            continue
        flag = max(option.opts, key=len)
        glosses.append(f"{name}=None is no {flag}" if _mentions(message, f"{name}=None") else f"{name}= is {flag}")
    return f" (on the command line: {'; '.join(glosses)})" if glosses else ""


def _describe(err: BaseException) -> tuple[str, bool]:
    """The one-line text of an exception, and whether it is bad input (``False``: a bug or a crash).

    :class:`InputError` names its parameter: its message follows the matching flag. The library's
    other ``ValueError``, ``KeyError`` and ``TypeError`` carry a sentence; a bare ``KeyError('x')``
    is a bug. ``OSError`` (a file, the disk) is the user's to fix.
    """
    if isinstance(err, InputError):
        flag = _flag(err.param)
        return (f"{flag}: " if flag else "") + _one_line(str(err)) + _keyword_gloss(str(err)), True
    sentence = err.args[0] if isinstance(err, KeyError | ValueError | TypeError) and err.args else None
    if isinstance(sentence, str) and " " in sentence.strip():
        return _one_line(sentence), True  # args[0]: str() of a KeyError would add quotes
    if isinstance(err, OSError) and err.strerror:
        return _one_line(f"{err.strerror}: {err.filename}" if err.filename else err.strerror), True
    lines = str(err).strip().splitlines()  # an unexpected error: its first line is enough here
    first = lines[0] if lines else ""
    first = first if len(first) <= 200 else first[:200] + " ..."
    return _one_line(f"{type(err).__name__}: {first}"), isinstance(err, OSError)


# ------------------------------------------------------------------------------------------------
# the program's frame: logging, warnings, errors
# ------------------------------------------------------------------------------------------------
class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return f"[scglmm {stamp}] {level}{record.getMessage()}"


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """``warnings.showwarning`` of the program: one log line (debug for deprecations)."""
    quiet_kinds = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
    level = logging.DEBUG if issubclass(category, quiet_kinds) else logging.WARNING
    logger.log(level, "%s", _one_line(str(message)))


@contextmanager
def _session(*, quiet: bool, verbose: bool) -> Iterator[None]:
    """Log to stderr, turn warnings into log lines, and turn exceptions into one-line errors."""
    handler = logging.StreamHandler(sys.stderr)  # the stream of this call (CliRunner swaps it)
    handler.setFormatter(_Formatter())
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO))
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each warning once per place, not once per gene
            warnings.showwarning = _show_warning
            yield
    except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
        raise
    except Exception as err:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        msg, users = _describe(err)
        if not users:
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

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
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


#: What the value of a required option is, for the message when it was given without its flag.
_VALUE_NAMES = {"formula": "the formula", "contrast": "the contrast", "out": "the output file name"}


class _Command(click.Command):
    """A click command that names the stray arguments when a required option is missing.

    ``scglmm fit in.h5ad "~ condition + (1 | donor)" --out o.h5ad`` would otherwise only say
    "Missing option '-f' / '--formula'", although the formula is on the line, without its flag.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, list(args))
        except click.MissingParameter as err:
            stray = self._stray_arguments(ctx, args)
            if not stray or not isinstance(err.param, click.Option):
                raise
            raise click.UsageError(_stray_message(err, err.param, stray), ctx=ctx) from None

    def _stray_arguments(self, ctx: click.Context, args: list[str]) -> list[str]:
        """The arguments left over once the options and the positional arguments have taken theirs."""
        try:
            _, extra, _ = self.make_parser(ctx).parse_args(args=list(args))
        except click.UsageError:
            return []
        return [str(a) for a in extra]


def _stray_message(err: click.MissingParameter, option: click.Option, stray: list[str]) -> str:
    """``Missing option ...``, the stray argument(s), and where the value goes, with an example."""
    import shlex

    flags = "/".join(option.opts)
    what = _VALUE_NAMES.get(option.name or "", f"the value of {max(option.opts, key=len)}")
    given = ", ".join(repr(a) for a in stray)
    plural = "s" if len(stray) > 1 else ""
    quotes = ", in quotes" if len(stray) > 1 else ""
    example = f"{min(option.opts, key=len)} {shlex.quote(' '.join(stray))}"
    return (
        f"{err.format_message()} Got the extra argument{plural} {given}: {what} goes after {flags}{quotes}, "
        f"e.g. {example}."
    )


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


def _check_io(input_h5ad: Path, out: Path, table: Path | None) -> None:
    """The input exists; ``--out`` and ``--table`` can be written, differ from it and from each other."""
    _check_input(input_h5ad)
    taken: dict[Path, str] = {}
    _check_output(out, "--out", inputs=[input_h5ad], taken=taken)
    if table is not None:
        _check_output(table, "--table", inputs=[input_h5ad], taken=taken)
    if out.suffix.lower() in (".tsv", ".csv", ".txt") or (table is not None and table.suffix.lower() == ".h5ad"):
        msg = f"--out {str(out)!r} is the .h5ad output and --table the text table; are they swapped?"
        raise click.UsageError(msg)


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
        msg = f"cannot read {str(path)!r} as an .h5ad (AnnData) file: {_describe(err)[0]}"
        raise CLIError(msg) from None
    how = " (counts stay on disk)" if backed else ""
    logger.info("read %s: %d cells x %d genes%s", path, adata.n_obs, adata.n_vars, how)
    return adata


class _BackgroundCopy:
    """A copy of INPUT beside ``out``, made in a thread while the genes are fitted (``--backed``): the
    copy is disk work, the fit CPU work, so the copy of a large file costs no extra time. :meth:`take`
    waits for it; :meth:`discard` stops it and removes the file."""

    def __init__(self, src: Path, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".copy", dir=out.parent)
        os.close(fd)
        self.path = Path(name)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(src,), name="scglmm-copy", daemon=True)
        self._thread.start()

    def _run(self, src: Path) -> None:
        try:
            _copy_file(src, self.path, self._stop)
        except BaseException as err:  # re-raised in the main thread by take()
            self._error = err

    def take(self) -> Path:
        """The finished copy (raises what the copy raised)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.path

    def discard(self) -> None:
        """Stop the copy and remove its file (nothing if it was taken)."""
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)


def _copy_file(src: Path, dst: Path, stop: threading.Event, chunk: int = 1 << 26) -> None:
    """Copy ``src`` to ``dst`` in chunks of ``chunk`` bytes (kernel-side where possible), until ``stop`` is set."""
    import shutil

    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        done = 0
        while done < size and not stop.is_set():
            try:
                sent = os.sendfile(fout.fileno(), fin.fileno(), done, min(chunk, size - done))
            except OSError:  # no sendfile between these files: copy the rest in user space
                fin.seek(done)
                fout.seek(done)
                shutil.copyfileobj(fin, fout)
                return
            if sent == 0:
                break
            done += sent


def _results_into_copy(copy: _BackgroundCopy, adata: AnnData, compression: str | None) -> Callable[[Path], None]:
    """A writer for ``--backed``: INPUT's copy (byte for byte, made during the fit) with its var, varm
    and uns replaced.

    The count matrix is never loaded: the copy carries it over as INPUT stores it, and only the
    (small) per-gene results and settings are written, with ``compression``.
    """
    dataset_kwargs = {} if compression is None else {"compression": compression}

    def writer(tmp: Path) -> None:
        import h5py

        try:
            from anndata.io import write_elem
        except ImportError:  # pragma: no cover - anndata < 0.11 (the package supports >= 0.10)
            from anndata.experimental import write_elem

        os.replace(copy.take(), tmp)
        with h5py.File(tmp, "a") as f:
            for name, value in (("var", adata.var), ("varm", dict(adata.varm)), ("uns", dict(adata.uns))):
                if name in f:
                    del f[name]
                write_elem(f, name, value, dataset_kwargs=dataset_kwargs)

    return writer


def _write_outputs(
    adata: AnnData,
    out: Path,
    table: Path | None,
    df: pd.DataFrame,
    *,
    compression: str | None,
    backed_copy: _BackgroundCopy | None = None,
) -> None:
    """Write ``--out`` (and ``df`` to ``--table`` if given) whole or not at all.

    ``compression`` (``"gzip"``, ``"lzf"`` or ``None``) applies to every array of ``--out``; with
    ``backed_copy`` (INPUT's copy), to the results only (the counts are copied as they are stored).
    """

    def write_h5ad(p: Path) -> None:
        adata.write_h5ad(p, compression=compression)

    writer = write_h5ad if backed_copy is None else _results_into_copy(backed_copy, adata, compression)
    targets: list[tuple[Path, Callable[[Path], None]]] = [(out, writer)]
    if table is not None:
        targets.append((table, lambda p: df.to_csv(p, sep="\t", index=False, na_rep="NA")))
    write_atomically(targets)
    logger.info("wrote %s", out)
    if table is not None:
        logger.info("wrote %s (%d rows)", table, len(df))


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------
def _long(res: pd.DataFrame, column: str, value: str) -> pd.DataFrame:
    """A table of :func:`scglmm.get.results` with ``gene``, [``group``,] then ``column`` (= ``value``) first."""
    part = res.rename_axis("gene").reset_index()
    part.insert(2 if "group" in part.columns else 1, column, value)
    return part


def _ranked(df: pd.DataFrame, by: tuple[str, ...]) -> pd.DataFrame:
    """``df`` with the rows of each block of ``by`` (e.g. group and coef) by ``p_value``, then ``|stat|``.

    Smallest p-value first; among equal p-values (those that underflow to 0, say) the largest
    ``|stat|`` first; missing values last; otherwise the order of ``df``. The blocks keep the order
    in which they first appear.
    """
    import numpy as np

    by = tuple(c for c in by if c in df)
    block = df.groupby(list(by), sort=False).ngroup().to_numpy() if by else np.zeros(len(df), dtype=int)
    p = df["p_value"].to_numpy(float) if "p_value" in df else np.zeros(len(df))
    minus_abs_stat = -np.abs(df["stat"].to_numpy(float)) if "stat" in df else np.zeros(len(df))
    order = np.lexsort((np.nan_to_num(minus_abs_stat, nan=np.inf), np.nan_to_num(p, nan=np.inf), block))
    return df.iloc[order].reset_index(drop=True)


def _fit_table(adata: AnnData, coefs: tuple[str, ...], key: str) -> pd.DataFrame:
    """:func:`scglmm.get.results` for each coefficient (and group), stacked into one long table.

    The columns are those of ``get.results`` after ``gene`` (and ``group`` with ``--groupby``) and
    ``coef``. Without ``coefs``, every non-intercept coefficient is reported (the intercept if there
    is no other). A coefficient missing from one group's design leaves that group out, with a warning.
    The genes of each coefficient (and group) are ranked by :func:`_ranked`.
    """
    import pandas as pd

    parts = []
    for group, sub in run_keys(adata, key).items():
        columns = [str(c) for c in fit_params(adata, sub)["design_columns"]]
        for c in list(coefs) or [c for c in columns if c != "Intercept"] or columns:
            try:
                res = get.results(adata, c, key=sub)
            except KeyError as err:
                if not group:
                    raise
                logger.warning("group %r: %s Left out of the table.", group, _describe(err)[0])
                continue
            if group:
                res.insert(0, "group", group)
            parts.append(_long(res, "coef", res.attrs.get("coef", c)))
    if not parts:
        msg = "no results to report: none of the requested coefficients was fitted in any group."
        raise CLIError(msg)
    return _ranked(pd.concat(parts, ignore_index=True), ("group", "coef"))


def _print_top(df: pd.DataFrame, n: int, by: tuple[str, ...] = ("coef",)) -> None:
    """Print the first ``n`` genes of each coefficient (and group) of a table ranked by :func:`_ranked`."""
    if n <= 0 or df.empty:
        return
    cols = [c for c in ("log2_fc", "se", "p_value", "adj_p_value", "sigma2", "dispersion", "status") if c in df]
    by = tuple(c for c in by if c in df)
    try:
        for label, part in df.groupby(list(by), sort=False):
            best = part.head(n).set_index("gene")[cols]
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
Typical use (each donor measured in both conditions):
  scglmm fit cells.h5ad --formula "~ condition + (1 + condition | donor)" \\
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


def _defaults(func: Callable) -> dict[str, Any]:
    """The keyword defaults of a library function: shown in the help, and passed when a flag is left out."""
    return {name: p.default for name, p in inspect.signature(func).parameters.items()}


_FIT_DEFAULTS, _TEST_DEFAULTS = _defaults(tl.fit), _defaults(tl.test)


def _nonzero(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value == 0:
        msg = "--n-jobs must be a positive number of workers, or -1 for all cores; got 0."
        raise click.BadParameter(msg)
    return value


def _command(name: str, text: str) -> Callable[[Callable], click.Command]:
    """A decorator that makes its function the command ``scglmm name`` (help ``text``) of one file, ``INPUT``.

    The command names the stray arguments when a required option is missing (:class:`_Command`) and
    shows its help when run without arguments.
    """

    def make(f: Callable) -> click.Command:
        f = click.argument("input_h5ad", metavar="INPUT", type=click.Path(path_type=Path))(f)
        return cli.command(name, cls=_Command, help=text, no_args_is_help=True)(f)

    return make


def _n_jobs(text: str, **default: Any) -> Callable[[Callable], Callable]:
    """``-j`` / ``--n-jobs``: workers, -1 for all cores, never 0; ``default`` holds its default, if any."""
    return click.option("-j", "--n-jobs", type=int, metavar="N", callback=_nonzero, help=text, **default)


def _top(text: str) -> Callable[[Callable], Callable]:
    """``--top``: how many genes to print (0: none), 10 by default."""
    return click.option("--top", type=click.IntRange(min=0), metavar="N", default=10, show_default=True, help=text)


def _minimum(flag: str, text: str) -> Callable[[Callable], Callable]:
    """The option ``flag`` (``--min-cells``, ...) of a minimum count of :func:`scglmm.tl.fit`.

    An integer N >= 0 passed as the keyword of the same name; its default is the library's, given
    after ``text`` in the help.
    """
    default = _FIT_DEFAULTS[flag.removeprefix("--").replace("-", "_")]
    return click.option(
        flag, type=click.IntRange(min=0), metavar="N", default=default, help=f"{text}  [default: {default}]"
    )


def _verbosity(f: Callable) -> Callable:
    f = click.option("-v", "--verbose", is_flag=True, help="Debug logs on stderr, and the traceback on errors.")(f)
    f = click.option(
        "-q", "--quiet", is_flag=True, help="Nothing on stdout; only warnings and errors on stderr; no progress bar."
    )(f)
    return f


def _no_compression(ctx: click.Context, param: click.Parameter, value: str) -> str | None:
    """``--compression none`` is ``None``, anndata's spelling of uncompressed."""
    return None if value == "none" else value


def _compression(text: str, default: str = "gzip") -> Callable[[Callable], Callable]:
    """``--compression gzip|lzf|none`` (``none`` passed on as ``None``), with help ``text``."""
    return click.option(
        "--compression",
        type=click.Choice(["gzip", "lzf", "none"]),
        default=default,
        show_default=True,
        callback=_no_compression,
        help=text,
    )


def _outputs(f: Callable) -> Callable:
    f = _compression(
        "Compression of the arrays of the output .h5ad: gzip (smallest), lzf (faster, larger) or none "
        "(fastest, several times larger). With --backed: of the results; the counts are copied as INPUT stores them."
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


_FIT_HELP = """Fit the donor-aware model to every gene of INPUT (an .h5ad file).

\b
Per gene, in lme4 notation: counts ~ FORMULA, negative binomial, with
log(size factor) as offset: each cell's library size times a robust (TMM)
factor of its sample, e.g. donor x condition (--norm-method). FORMULA names
obs columns and holds a donor random intercept, '(1 | donor)', or other lme4
random effects: random slopes '(1 + condition | donor)', '(1 + x || donor)',
nested '(1 | donor/sample)', crossed '(1 | donor) + (1 | batch)' (Laplace
approximation). Coefficients are natural-log fold changes; the table adds
log2_fc.

\b
Examples:
  # paired design (every donor in both conditions): each donor's own response
  scglmm fit cells.h5ad --formula "~ condition + (1 + condition | donor)" --out fit.h5ad
\b
  # each donor in one condition only: a donor random intercept
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
            status, ...), varm[KEY_cov], varm[KEY_donor_effects] (with
            other random effects than (1 | donor): varm[KEY_varcomp] and
            varm[KEY_modes] instead), var[KEY_status] and uns[KEY]['params'] (with --groupby: the same
            under KEY:GROUP for each group, without the donor effects or modes
            unless --store-modes). In Python:
            scglmm.get.results(anndata.read_h5ad(OUT), 'condition').
  --table   tab-separated, one row per gene and coefficient (and group):
            gene, [group,] coef, then the columns of scglmm.get.results:
            log_fc, log2_fc, se, stat, p_value, adj_p_value (Benjamini-
            Hochberg), sigma2, dispersion, status, ...; missing values are NA.
            Ranked within each coefficient (and group): by p_value, then
            |stat|.
  stdout    the top genes of each coefficient (nothing with --quiet).
  stderr    log messages.

Files are written whole or not at all. On bad input nothing is written and the
program exits with one 'Error: ...' line (exit code 1; 2 for a bad flag, 130
when interrupted).
"""


@_command("fit", _FIT_HELP)
@click.option(
    "-f",
    "--formula",
    required=True,
    metavar="FORMULA",
    help="lme4-style formula over obs columns with random effects, e.g. '~ condition + (1 | donor)'.",
)
@_outputs
@click.option("--layer", metavar="NAME", help="Layer holding the raw integer counts.  [default: X]")
@click.option(
    "--size-factors",
    metavar="COL",
    help="obs column of each cell's library size (a scale, logged internally), multiplied by the factor of "
    "--norm-method.  [default: total counts per cell]",
)
@click.option(
    "--offset",
    metavar="COL",
    help="obs column of a per-cell offset already on the log scale, used as given (no --norm-method).",
)
@click.option(
    "--norm-method",
    type=click.Choice(list(NORM_METHODS)),
    default=_FIT_DEFAULTS["norm_method"],
    help="Robust factor per sample (pseudobulk) that multiplies each cell's library size, so that a "
    "condition that induces many genes does not make every other gene look lower: 'tmm_mode' (edgeR's TMM "
    "re-centred on the mode of the log ratios), 'tmm' (edgeR's TMM as is), 'ratio' (DESeq2's median of ratios) "
    "or 'none' (the library size alone).  "
    f"[default: {_FIT_DEFAULTS['norm_method']}]",
)
@click.option(
    "--sample-key",
    metavar="COL",
    help="obs column naming the samples of --norm-method.  [default: the random-effect grouping columns "
    "crossed with the formula's factors, e.g. donor x condition]",
)
@click.option(
    "--groupby", metavar="COL", help="Fit each group of cells (e.g. each cell type) separately; results per group."
)
@click.option(
    "--store-modes/--no-store-modes",
    default=None,
    help="Store the conditional modes of the random effects (each donor's effect, which scglmm.pl.donor_effects "
    "plots).  [default: yes without --groupby, no with it]",
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
    type=click.Choice(list(CALIBRATIONS)),
    default=_FIT_DEFAULTS["calibration"],
    help=f"Reference distribution of the Wald p-values (see scglmm.tl.fit).  [default: {_FIT_DEFAULTS['calibration']}]",
)
@_minimum("--min-cells", "Fit a gene only if at least N cells have a count; others are kept as NaN, status 'filtered'.")
@_minimum("--min-donors", "Fit a gene only if at least N donors have a count.")
@_minimum("--min-cells-group", "With --groupby: skip groups with fewer cells.")
@_minimum("--min-donors-group", "With --groupby: skip groups with fewer donors.")
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
    default=_FIT_DEFAULTS["n_agq"],
    show_default=True,
    help="1 = Laplace approximation (as glmmTMB); K > 1 = adaptive Gauss-Hermite with K nodes.",
)
@click.option(
    "--separation",
    type=click.Choice(["prior", "limit"]),
    default=_FIT_DEFAULTS["separation"],
    show_default=True,
    help="Genes with one side of a comparison (almost) without counts: 'prior' = finite effects from a weakly "
    "penalised likelihood (status 'penalised'); 'limit' = the maximum-likelihood limits, NaN where infinite.",
)
@_n_jobs(
    "Workers (-1 = all cores): threads for a single (1 | donor), processes for other random effects.",
    default=1,
    show_default=True,
)
@click.option(
    "--key-added",
    metavar="KEY",
    default=_FIT_DEFAULTS["key_added"],
    show_default=True,
    help="Prefix of the keys written to the AnnData.",
)
@_top("Genes to print per coefficient (0: none).")
@_verbosity
def fit_cmd(
    input_h5ad: Path,
    out: Path,
    table: Path | None,
    compression: str | None,
    coef: tuple[str, ...],
    backed: bool,
    top: int,
    quiet: bool,
    verbose: bool,
    **fit_kwargs: Any,
) -> None:
    """Fit the model to every gene (the help text is ``_FIT_HELP``).

    ``fit_kwargs`` are the flags that are keywords of :func:`scglmm.tl.fit` (``formula``,
    ``layer``, ``size_factors``, ``offset``, ``norm_method``, ``sample_key``, ``groupby``, ``calibration``,
    ``min_cells``, ``min_donors``, ``min_cells_group``, ``min_donors_group``, ``store_modes``, ``n_agq``,
    ``separation``, ``n_jobs``, ``key_added``), passed to it as they are: the library checks them before any
    gene is fitted.
    """
    with _session(quiet=quiet, verbose=verbose):
        _check_io(input_h5ad, out, table)
        if fit_kwargs["size_factors"] is not None and fit_kwargs["offset"] is not None:
            msg = "pass either --size-factors (a scale, logged internally) or --offset (already a log), not both."
            raise click.UsageError(msg)
        adata = _read_h5ad(input_h5ad, backed=backed)
        copy = None
        try:
            if coef:
                _check_coefs(adata, fit_kwargs["formula"], coef)
            copy = _BackgroundCopy(input_h5ad, out) if backed else None
            tl.fit(adata, **fit_kwargs, progress=False if quiet else None)
            df = _fit_table(adata, coef, fit_kwargs["key_added"])
            _write_outputs(adata, out, table, df, compression=compression, backed_copy=copy)
        finally:
            if copy is not None:
                copy.discard()
            if backed:
                adata.file.close()
        if not quiet:
            _print_top(df, top, by=("group", "coef"))


def _check_coefs(adata: AnnData, formula: str, coefs: tuple[str, ...]) -> None:
    """``--coef`` names columns of the design: checked before the fit, so a typo costs seconds, not the run.

    ``--coef`` is the program's own flag (:func:`scglmm.get.results` reads it only after the fit),
    so this is the one check of the design the program makes; the design and the matching rule
    are the library's.
    """
    from ._core._inference import resolve_column
    from ._formula import build_design, parse_fit_formula

    columns = build_design(parse_fit_formula(formula).fixed, adata.obs).columns
    for c in coefs:
        try:
            resolve_column(c, columns, asked_as="coef", param="coef")
        except KeyError as err:
            msg = f"--coef: {_one_line(err.args[0])}"  # args[0]: str() of a KeyError would add quotes
            raise CLIError(msg) from None


_TEST_HELP = """Test a contrast on a file written by 'scglmm fit'.

\b
Wald tests (the default) use the stored coefficients and covariance, with no
refit. Likelihood-ratio tests (--method lrt) refit the model without the
tested terms, or with --reduced-formula, which may also drop a random slope
or a random-effect term (a variance component; boundary-corrected reference).

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
  scglmm test slope_fit.h5ad --method lrt --out tested.h5ad \\
      --reduced-formula "~ condition + (1 | donor)"

\b
Where the results go:
  --out     INPUT's AnnData plus varm[KEY_contrast_NAME] (see scglmm.tl.test;
            NAME is --key-added or derived from the contrast, and is logged).
  --table   tab-separated, one row per gene (and group): gene, [group,]
            contrast, then the columns of scglmm.get.results(contrast=NAME),
            ranked by p_value, then |stat|.
  stdout    the top genes (nothing with --quiet).
"""


class _ContrastOption(click.Option):
    """``--contrast``: required, unless ``--reduced-formula`` gives the null model of a likelihood-ratio test
    (processed first when given, as click processes the options on the line before the others)."""

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        if self.value_is_missing(value) and ctx.params.get("reduced_formula") is None:
            raise click.MissingParameter(ctx=ctx, param=self)
        return super().process_value(ctx, value)


_CONTRAST_TRIPLE = re.compile(r"^\s*([^,\[\]()]+?)\s*,\s*([^,]+?)\s*,\s*([^,]+?)\s*$")


def _parse_contrast(text: str) -> str | tuple[str, str, str]:
    """``"VAR,LEVEL,BASELINE"`` becomes a tuple; anything else goes to scglmm.tl.test as it is."""
    m = _CONTRAST_TRIPLE.match(text)
    return (m.group(1), m.group(2), m.group(3)) if m else text


@_command("test", _TEST_HELP)
@click.option(
    "-c",
    "--contrast",
    cls=_ContrastOption,
    metavar="CONTRAST",
    help="What to test (see above); optional with --reduced-formula.",
)
@_outputs
@click.option(
    "--key", metavar="KEY", default=_TEST_DEFAULTS["key"], show_default=True, help="The --key-added of the fit."
)
@click.option(
    "--method",
    type=click.Choice(["wald", "lrt"]),
    default=_TEST_DEFAULTS["method"],
    show_default=True,
    help="The test.",
)
@click.option(
    "--reduced-formula",
    metavar="FORMULA",
    help="For --method lrt: the null model, e.g. '~ 1', or '~ condition + (1 | donor)' to test a random slope.",
)
@click.option(
    "--calibration",
    type=click.Choice(list(CALIBRATIONS)),
    help="Reference distribution of Wald tests.  [default: the fit's]",
)
@click.option("--group", multiple=True, metavar="NAME", help="With a --groupby fit: group(s) to test.  [default: all]")
@_n_jobs("Workers for the refit of --method lrt (-1 = all cores).  [default: the fit's]")
@click.option("--key-added", metavar="NAME", help="Name of the stored results.  [default: derived from CONTRAST]")
@_top("Genes to print (0: none).")
@_verbosity
def test_cmd(
    input_h5ad: Path,
    contrast: str | None,
    out: Path,
    table: Path | None,
    compression: str | None,
    group: tuple[str, ...],
    top: int,
    quiet: bool,
    verbose: bool,
    **test_kwargs: Any,
) -> None:
    """Test a contrast (the help text is ``_TEST_HELP``).

    ``test_kwargs`` are the flags that are keywords of :func:`scglmm.tl.test` as they are
    (``key``, ``method``, ``reduced_formula``, ``calibration``, ``n_jobs``, ``key_added``).
    """
    with _session(quiet=quiet, verbose=verbose):
        _check_io(input_h5ad, out, table)
        if test_kwargs["reduced_formula"] is not None and test_kwargs["method"] != "lrt":
            msg = "--reduced-formula is only used with --method lrt."
            raise click.UsageError(msg)
        adata = _read_h5ad(input_h5ad)
        _check_fitted(adata, test_kwargs["key"], input_h5ad)
        groups = list(group) or None
        what = None if contrast is None else _parse_contrast(contrast)
        name = tl.test(adata, what, group=groups, progress=False if quiet else None, **test_kwargs)
        logger.info("results stored as %r", name)
        res = get.results(adata, contrast=name, key=test_kwargs["key"], group=groups)
        df = _ranked(_long(res, "contrast", name), ("group", "contrast"))
        _write_outputs(adata, out, table, df, compression=compression)
        if not quiet:
            _print_top(df, top, by=("group", "contrast"))


def _check_fitted(adata: AnnData, key: str, path: Path) -> None:
    """``scglmm test`` reads a file written by ``scglmm fit``: say so, in the program's words, if it is not one.

    The library would ask for ``scglmm.tl.fit(adata, ...)``; a command-line user runs ``scglmm fit``,
    or passes ``--key`` when the fit used ``--key-added``. A fit is an ``uns`` entry whose ``params``
    hold ``design_columns`` (scanpy's ``rank_genes_groups`` entries have ``params`` too); the runs
    of each group of a ``--groupby`` fit are not listed.
    """
    from collections.abc import Mapping

    def params(value: object) -> Mapping:
        entry = value.get("params") if isinstance(value, Mapping) else None
        return entry if isinstance(entry, Mapping) else {}

    if "design_columns" in params(adata.uns.get(key)):
        return
    found = [str(k) for k, v in adata.uns.items() if "design_columns" in params(v) and "parent_key" not in params(v)]
    where = f"no scglmm results under key {key!r} in {str(path)!r}"
    if found:
        msg = f"--key: {where}; pass the --key-added of its fit as --key (keys with results: {found})."
    else:
        msg = f"{where}; run 'scglmm fit' on it first, and 'scglmm test' on the file that writes."
    raise CLIError(msg)


_COMPOSITION_HELP = """Test which cell types change in abundance: a binomial GLMM per cell type.

\b
The cells of INPUT are pooled into samples (--sample-key, default: the
distinct combinations of the formula's columns); per cell type, its cells
among each sample's cells (or among the cells of --reference types) follow
  cbind(cells of the type, other cells) ~ FORMULA, family binomial,
with FORMULA's random effects (as glmmTMB). Coefficients are log odds ratios.

\b
Examples:
  # each donor in one condition
  scglmm composition cells.h5ad --groupby cell_type \\
      -f "~ condition + (1 | donor)" --table composition.tsv
\b
  # each donor in both conditions: add the sample-level term
  scglmm composition cells.h5ad --groupby cell_type --sample-key sample \\
      -f "~ condition + (1 | donor) + (1 | donor:sample)" --out comp.h5ad
\b
  # against a reference set of types known not to change
  scglmm composition cells.h5ad --groupby cell_type -f "~ condition + (1 | donor)" \\
      --reference B --reference NK --table composition.tsv

\b
Where the results go (KEY = --key-added, default 'scglmm_composition'):
  --out     INPUT's AnnData plus uns[KEY] (scglmm.get.composition reads it).
  --table   tab-separated, one row per cell type and coefficient: cell_type,
            coef, then the columns of scglmm.get.composition (n_cells,
            prop_<level>, log_or, se, stat, df, p_value, adj_p_value, status,
            variance components); ranked by p_value within a coefficient.
  stdout    the top types of each coefficient (nothing with --quiet).
At least one of --out and --table is needed.
"""

_COMPOSITION_DEFAULTS = _defaults(tl.composition)


@_command("composition", _COMPOSITION_HELP)
@click.option("--groupby", required=True, metavar="COL", help="obs column of the cell types.")
@click.option(
    "-f",
    "--formula",
    required=True,
    metavar="FORMULA",
    help="Fixed and random effects, e.g. '~ condition + (1 | donor)'.",
)
@click.option(
    "--sample-key", metavar="COL", help="obs column of samples.  [default: combinations of the formula's columns]"
)
@click.option(
    "--reference",
    multiple=True,
    metavar="TYPE",
    help="Test every other type against this type (repeatable: a set).  [default: against all other cells]",
)
@click.option(
    "--test",
    type=click.Choice(["lrt_fn", "lrt_f", "t", "z", "lrt"]),
    default=_COMPOSITION_DEFAULTS["test"],
    show_default=True,
    help="Test reported as p_value (all are stored).",
)
@click.option(
    "--coef",
    multiple=True,
    metavar="NAME",
    help="Coefficient(s) for --table and stdout.  [default: every non-intercept one]",
)
@click.option(
    "-o", "--out", metavar="OUT", type=click.Path(path_type=Path), help="Output .h5ad (must differ from INPUT)."
)
@click.option(
    "--table", metavar="TSV", type=click.Path(path_type=Path), help="Write the per-type results as a TSV file."
)
@_compression("Compression of the arrays of the output .h5ad.")
@click.option(
    "--key-added",
    metavar="KEY",
    default=_COMPOSITION_DEFAULTS["key_added"],
    show_default=True,
    help="Key of the results in uns.",
)
@_top("Cell types to print per coefficient (0: none).")
@_verbosity
def composition_cmd(
    input_h5ad: Path,
    out: Path | None,
    table: Path | None,
    compression: str | None,
    coef: tuple[str, ...],
    reference: tuple[str, ...],
    top: int,
    quiet: bool,
    verbose: bool,
    **kwargs: Any,
) -> None:
    """Test cell-type composition (the help text is ``_COMPOSITION_HELP``); ``kwargs`` are keywords of
    :func:`scglmm.tl.composition` (``groupby``, ``formula``, ``sample_key``, ``test``, ``key_added``)."""
    with _session(quiet=quiet, verbose=verbose):
        _check_composition_io(input_h5ad, out, table)
        adata = _read_h5ad(input_h5ad)
        tl.composition(adata, reference=list(reference) or None, **kwargs)
        df = _composition_table(adata, coef, kwargs["key_added"])
        if out is not None:
            _write_outputs(adata, out, table, df, compression=compression)
        else:
            write_atomically([(table, lambda p: df.to_csv(p, sep="\t", index=False, na_rep="NA"))])
            logger.info("wrote %s (%d rows)", table, len(df))
        if not quiet and top > 0:
            for c, part in df.groupby("coef", sort=False):
                cols = ["log_or", "se", "p_value", "adj_p_value", "status"]
                click.echo(f"top {min(top, len(part))} of {len(part)} cell types for {c}:")
                click.echo(part.head(top).set_index("cell_type")[cols].to_string(float_format=lambda v: f"{v:.3g}"))


def _check_composition_io(input_h5ad: Path, out: Path | None, table: Path | None) -> None:
    """The input exists; at least one output, each writable and distinct."""
    if out is None and table is None:
        msg = "pass --out (an .h5ad) or --table (a TSV), or both: there is nothing to write otherwise."
        raise click.UsageError(msg)
    if out is not None:
        _check_io(input_h5ad, out, table)
        return
    _check_input(input_h5ad)
    _check_output(table, "--table", inputs=[input_h5ad], taken={})


def _composition_table(adata: AnnData, coefs: tuple[str, ...], key: str) -> pd.DataFrame:
    """One row per cell type and coefficient, ranked by p-value within a coefficient."""
    import pandas as pd

    names = [str(c) for c in adata.uns[key]["coef_names"]]
    chosen = list(coefs) or [c for c in names if c != "Intercept"]
    parts = []
    for c in chosen:
        tab = get.composition(adata, c, key=key).sort_values("p_value", kind="stable")
        tab.insert(0, "coef", c)
        parts.append(tab.reset_index())
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


_TO_CSC_HELP = """Rewrite INPUT (an .h5ad file) with its counts stored by gene (CSC).

\b
scanpy writes counts by cell (CSR). A fit of a file larger than memory
(--backed) reads a CSR file once per panel of genes, but a CSC file once in
all, and Dask workers read their own genes from a CSC file. The conversion
reads INPUT once, sorts its entries through temporary files beside OUT (about
the size of the counts, removed at the end), holds one bucket of genes in
memory and copies every other element (obs, var, uns, other layers) as it is.

\b
Example:
  scglmm to-csc cohort.h5ad --out cohort_csc.h5ad
  scglmm fit cohort_csc.h5ad --backed --formula "~ condition + (1 + condition | donor)" --out fit.h5ad
"""


@_command("to-csc", _TO_CSC_HELP)
@click.option(
    "-o",
    "--out",
    required=True,
    metavar="OUT",
    type=click.Path(path_type=Path),
    help="Output .h5ad (must differ from INPUT).",
)
@click.option("--layer", metavar="NAME", help="Layer holding the counts.  [default: X]")
@_compression("Compression of the written counts: none (fastest to read), lzf or gzip (smallest).", default="none")
@_verbosity
def to_csc_cmd(
    input_h5ad: Path, out: Path, layer: str | None, compression: str | None, quiet: bool, verbose: bool
) -> None:
    """Rewrite INPUT with CSC counts (the help text is ``_TO_CSC_HELP``)."""
    with _session(quiet=quiet, verbose=verbose):
        _check_input(input_h5ad)
        _check_output(out, "--out", inputs=[input_h5ad], taken={})
        t0 = time.perf_counter()
        write_atomically([(out, lambda p: to_csc(input_h5ad, p, layer=layer, compression=compression))])
        what = "X" if layer is None else f"layers[{layer!r}]"
        logger.info("wrote %s: %s stored by gene (CSC) in %.1f s", out, what, time.perf_counter() - t0)


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
