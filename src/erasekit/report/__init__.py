"""Reports: tables (and later grids, plots, HTML) generated from result JSON, never from live objects."""
