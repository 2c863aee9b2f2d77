# edgeR's normalisation factors of the pseudobulks written by make_inputs.py (run once, from this folder):
#   Rscript edger_factors.R
# Writes edger_factors.csv: one row per data set and sample, the library size used with "lib" and the
# factors of calcNormFactors with method TMM (default library sizes), TMM with lib.size = lib, and RLE.
suppressMessages(library(edgeR))
rows <- list()
for (name in c("small", "kang_pseudobulk", "shift_pseudobulk")) {
  x <- t(as.matrix(read.csv(paste0(name, ".csv"), row.names = 1, check.names = FALSE)))  # genes x samples
  n <- ncol(x)
  lib <- colSums(x) * (1 + 0.1 * ((seq_len(n) %% 3) - 1))
  rows[[name]] <- data.frame(
    dataset = name,
    sample = colnames(x),
    lib = lib,
    tmm = calcNormFactors(x, method = "TMM"),
    tmm_lib = calcNormFactors(x, lib.size = lib, method = "TMM"),
    rle = calcNormFactors(x, method = "RLE")
  )
}
out <- do.call(rbind, rows)
write.csv(out, "edger_factors.csv", row.names = FALSE, quote = FALSE)
cat(sprintf("edgeR %s, R %s\n", packageVersion("edgeR"), getRversion()))
