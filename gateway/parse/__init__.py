"""parse: TODO"""
