"""open: TODO"""
