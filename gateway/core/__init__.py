"""core: TODO"""
