"""Data: key names, conversion of structures to graphs (later: loaders, units, audit)."""
