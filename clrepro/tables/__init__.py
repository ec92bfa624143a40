"""Tables: mean ± std over seeds from logged runs, beside the published numbers (no engine, no Ray)."""
