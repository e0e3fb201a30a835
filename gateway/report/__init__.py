"""report: TODO"""
