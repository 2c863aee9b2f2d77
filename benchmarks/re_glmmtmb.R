# glmmTMB seconds per gene on the paired 50,000-cell data of benchmarks/cpu_time.py (written by
# benchmarks/re_glmmtmb.py): one glmmTMB() call per gene and structure (model set-up, fit and
# sdreport), one thread. Usage: Rscript re_glmmtmb.R data.csv out.csv
suppressPackageStartupMessages(library(glmmTMB))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], stringsAsFactors = TRUE)
d$condition <- relevel(d$condition, "ctrl")
genes <- grep("^G", names(d), value = TRUE)
forms <- list(
  slope = "~ condition + (1 + condition | donor)",
  nested = "~ condition + (1 | donor/sample)",
  crossed = "~ condition + (1 | donor) + (1 | batch)",
  "(1 | donor)" = "~ condition + (1 | donor)"
)
out <- NULL
for (nm in names(forms)) {
  for (g in genes) {
    f <- as.formula(paste(g, forms[[nm]], "+ offset(log(libsize))"))
    t <- system.time(m <- try(glmmTMB(f, data = d, family = nbinom2), silent = TRUE))[["elapsed"]]
    ll <- if (inherits(m, "try-error")) NA else as.numeric(logLik(m))
    b <- if (inherits(m, "try-error")) NA else fixef(m)$cond[["conditionstim"]]
    out <- rbind(out, data.frame(structure = nm, gene = g, seconds = t, loglik = ll, beta_condition = b))
    cat(nm, g, t, "\n")
  }
}
write.csv(out, args[2], row.names = FALSE)
