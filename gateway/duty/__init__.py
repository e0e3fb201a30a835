"""duty: TODO"""
