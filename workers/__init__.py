"""arq worker settings and thin job functions that call into `relay`."""
