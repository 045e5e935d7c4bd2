"""Reports: published numbers, aggregation of runs, tables, plots and regression checks."""
