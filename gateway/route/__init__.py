"""route: TODO"""
