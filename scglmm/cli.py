"""Command line: ``scglmm fit IN.h5ad --formula ... --out OUT.h5ad [--table OUT.tsv]``."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import click

from . import __version__

logger = logging.getLogger("scglmm")


def _atomic_write(path: Path, writer) -> None:
    """Write via a temporary file in the same folder, then rename (never a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scglmm")
def cli() -> None:
    """Donor-aware differential expression: NB GLMM with a donor random intercept per gene."""


@cli.command("fit")
@click.argument("input_h5ad", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--formula", required=True, help="lme4-style formula, e.g. '~ condition + (1 | donor)'.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .h5ad.")
@click.option("--table", type=click.Path(dir_okay=False, path_type=Path), help="Also write tidy results as TSV.")
@click.option("--coef", help="Coefficient for --table and the printed top genes (default: the only non-intercept one).")
@click.option("--layer", help="Layer with raw counts (default: X).")
@click.option("--size-factors", help="obs column of per-cell size factors (a scale, logged internally).")
@click.option("--n-agq", type=int, default=1, show_default=True, help="1 = Laplace; K > 1 = adaptive Gauss-Hermite.")
@click.option("--n-jobs", type=int, default=1, show_default=True, help="Worker threads.")
@click.option("--key-added", default="scglmm", show_default=True, help="Prefix of the result keys.")
@click.option("--top", type=int, default=10, show_default=True, help="Print this many top genes to stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs and tracebacks.")
def fit_cmd(input_h5ad, formula, out, table, coef, layer, size_factors, n_agq, n_jobs, key_added, top, quiet, verbose):
    """Fit every gene of INPUT_H5AD and write OUT (h5ad) and optionally a TSV table.

    \b
    Example:
      scglmm fit data/kang2018_cd14_mono.h5ad --formula "~ condition + (1 | donor)" \\
          --out results.h5ad --table results.tsv --n-jobs 2
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if out.resolve() == input_h5ad.resolve():
        raise click.UsageError("--out must differ from the input file (the input is never overwritten).")
    try:
        import anndata as ad

        from . import get, tl

        adata = ad.read_h5ad(input_h5ad)
        tl.fit(
            adata,
            formula,
            layer=layer,
            size_factors=size_factors,
            key_added=key_added,
            n_agq=n_agq,
            n_jobs=n_jobs,
            progress=False if quiet else None,
        )
        res = get.results(adata, coef, key=key_added)
    except (KeyError, ValueError, TypeError) as err:
        if verbose:
            raise
        msg = err.args[0] if err.args else str(err)
        raise click.ClickException(str(msg)) from None
    _atomic_write(out, lambda p: adata.write_h5ad(p))
    if table is not None:
        _atomic_write(table, lambda p: res.rename_axis("gene").to_csv(p, sep="\t"))
    if top > 0 and not quiet:
        cols = ["log2_fc", "se", "p_value", "adj_p_value", "sigma2", "dispersion", "status"]
        best = res.assign(_z=res["stat"].abs()).sort_values("_z", ascending=False).head(top)[cols]
        click.echo(f"top {top} genes for {res.attrs.get('coef', coef)}:")
        click.echo(best.to_string(float_format=lambda v: f"{v:.3g}"))


def main() -> None:
    """Entry point of the ``scglmm`` program."""
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
