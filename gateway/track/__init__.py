"""track: TODO"""
