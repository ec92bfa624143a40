"""Engine: the one task loop every experiment runs through (CL runs, references, sweep seeds)."""
