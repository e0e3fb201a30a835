"""Linked history: which referrals are about the same child, found through an index of keyed hashes
(`keys` makes them, `index` stores and looks them up), and the cumulative concern several of them
raise together (`concern`). Nothing here holds an identifier in clear."""
