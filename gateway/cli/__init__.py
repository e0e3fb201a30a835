"""cli: TODO"""
